"""``custctx bench``: how fast and how cheap, each figure beside its floor, in one run.

The benchmark seeds its own warehouse (``--customers`` background customers plus the
story ones and one large customer, in ``OUT/warehouse.sqlite``; reused when a previous
run seeded the same sizes), starts from an empty state database (``OUT/state``) and measures, in this
process, one after the other:

1. **Refresh**: full materialisation of the active book into long-term memory, then an
   incremental refresh after 1% of the customers changed (a CRM update each).
2. **Warm context lookup**: one customer's every stored slice read from long-term
   memory as validated slices (``ContextMemory.get_many``: what a warm context read
   costs) vs. the floor, the same stored JSON read by a raw SQL point lookup with the
   standard library (``sqlite3`` + ``json``).
3. **Cold assembly**: one customer's reference view (``reference_view`` of the slices it
   needs, read live from the sources, no memory) vs. one hand-written SQL query that
   computes the same view (``evals.bench.sql``), run with ``sqlite3``.
4. **Tokens** per assistant question: the prompt tokens of every model call of the turn
   (``tokens.prompt``: instructions, tool definitions, the question, the tool calls and
   their results, as a hosted model is sent them) vs. ONE call with the instructions, the
   customer's whole context and the question (``evals.runner.full_dump_tokens``), with the
   answers' eval facts checked; over the assistant eval questions on the fixture customers,
   and over the same question kinds on a large customer the benchmark writes into its
   warehouse (``evals.bench.large``: hundreds of tickets, emails, calls, activities…). Both
   sides are counted the same way (``count_tokens_approximately``, about 4 characters a
   token); the dump is also counted as compact JSON, to show what its indentation adds.
5. **Graph overhead**: time per assistant turn outside source queries (the turn's wall
   time minus the time its SQL statements spent in the warehouse).
6. **Batch reviews** with the offline model: accounts per second and peak memory
   (resident set growth during the run) for two book sizes.
7. **Start-up**: ``custctx --help`` and ``custctx context acme.com`` on the benchmark's warm
   state, each a fresh process, vs. the floor of any Typer command line, a process that
   only imports typer and rich; interleaved, several runs each, after an untimed round.

Latencies are medians and 99th percentiles over many samples; the goals come from the
issue that asked for the benchmark and are checked in the table (a missed goal is shown
as missed). No figure here is asserted by a test: tests check that the benchmark runs
and reports, never how fast.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import shlex
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

from sqlalchemy import event

from tools.embedded.common import AS_OF, GENERATOR_VERSION
from tools.embedded.large import LargeCustomer
from tools.embedded.story_data import STORY_DOMAINS
from tools.settings import SOURCE_NAMES, Settings, SourceConfig
from tools.sources.registry import dispose_engines, engine_for, fixture_meta

Progress = Callable[[str, int, int], None]

#: The slices the reference view reads (its customer, billing, usage and support sections).
REFERENCE_VIEW_SLICES = ("crm.account", "crm.contacts", "billing.status", "product.usage", "support.summary")
DEFAULT_CUSTOMERS = 1_000
DEFAULT_REVIEWS = (1_000, 10_000)
WARM_SAMPLES = 2_000
COLD_SAMPLES = 300
CHANGED_SHARE = 0.01
STARTUP_RUNS = 7  # fresh processes per start-up command (3 on a test-sized book)
STARTUP_FLOOR = (sys.executable, "-c", "import typer, rich")
#: What Typer's rich help costs by itself: a two-command app's ``--help`` (for reference).
BARE_TYPER_HELP = (sys.executable, "-c", "import typer\napp = typer.Typer(add_completion=False)\n"
                   "@app.command()\ndef a() -> None:\n    'A.'\n@app.command()\ndef b() -> None:\n    'B.'\napp()",
                   "--help")
STARTUP_CUSTOMER = "acme.com"


@dataclass
class Row:
    """One line of the table."""

    measure: str
    ours: str
    baseline: str = ""
    ratio: float | None = None
    goal: str = ""
    met: bool | None = None
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchReport:
    customers: int  # in the warehouse (story + background)
    active: int  # in the active book (what a full refresh reads)
    machine: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    seconds: float = 0.0
    seed_seconds: float | None = None  # None: the warehouse was reused


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    """Milliseconds of ``n`` calls of ``fn``."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}", "sqlite": sqlite3.sqlite_version}


def rss_mb() -> float:
    """Resident set size of this process now, MB (Linux; 0 elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


# ------------------------------------------------------------------ setup
def bench_settings(out_dir: Path) -> Settings:
    url = f"sqlite:///{out_dir / 'warehouse.sqlite'}"
    state = out_dir / "state"
    return Settings(home=state, embedded=False, as_of=AS_OF, tenant="bench",
                    state_url=f"sqlite:///{state / 'state.sqlite'}",
                    sources={s: SourceConfig(url=url) for s in SOURCE_NAMES})


def bench_env(out_dir: Path) -> dict[str, str]:
    """The ``CUSTCTX_*`` variables under which a ``custctx`` process reads as ``bench_settings``."""
    url = f"sqlite:///{out_dir / 'warehouse.sqlite'}"
    state = out_dir / "state"
    return {"CUSTCTX_HOME": str(state), "CUSTCTX_EMBEDDED": "false", "CUSTCTX_AS_OF": AS_OF.isoformat(),
            "CUSTCTX_TENANT": "bench", "CUSTCTX_STATE_URL": f"sqlite:///{state / 'state.sqlite'}",
            **{f"CUSTCTX_SOURCES__{s.upper()}__URL": url for s in SOURCE_NAMES}}


def prepare(out_dir: Path, customers: int, progress: Progress | None,
            large: LargeCustomer | None = None) -> tuple[Settings, float | None]:
    """The benchmark's warehouse (seeded unless one of these sizes is there) and an empty state."""
    from tools.embedded.generate import seed

    out_dir.mkdir(parents=True, exist_ok=True)
    settings = bench_settings(out_dir)
    url = settings.source("crm").url
    assert url is not None
    seconds = None
    meta = fixture_meta(url) if (out_dir / "warehouse.sqlite").exists() else {}
    wanted = (str(customers), GENERATOR_VERSION, large.key() if large else None)
    if (meta.get("background_customers"), meta.get("generator_version"), meta.get("large_customer")) != wanted:
        seconds = seed(url, customers=customers, progress=progress, large=large).seconds
    dispose_engines()
    shutil.rmtree(out_dir / "state", ignore_errors=True)
    return settings, seconds


# ------------------------------------------------------------------ measures
def measure_refresh(settings: Settings, memory: Any, progress: Progress | None,
                    unchanged: Sequence[str] = ()) -> tuple[list[Row], int]:
    """Full refresh, then the incremental one after 1% of the accounts changed (never those
    whose domains are in ``unchanged``)."""
    from tools.refresh.jobs import refresh_full, refresh_incremental

    full = refresh_full(settings, memory, progress=progress)
    changed = _change_share(settings, CHANGED_SHARE, unchanged)
    incr = refresh_incremental(settings, memory, progress=progress)
    per_customer = full.seconds / max(1, full.customers) * 1000
    share = incr.seconds / full.seconds if full.seconds else 0.0
    rows = [
        Row("Full refresh", f"{full.seconds:.1f} s ({full.customers:,} customers, {full.slices_written:,} slices)",
            f"{per_customer:.2f} ms/customer", None,
            "≤ 300 s at 100,000 customers" if full.customers >= 90_000 else "≤ 300 s at 100,000 (scaled: "
            f"{per_customer * 100_000 / 1000:.0f} s)",
            full.seconds <= 300 if full.customers >= 90_000 else per_customer * 100 <= 300,
            {"seconds": full.seconds, "customers": full.customers, "slices": full.slices_written,
             "failures": full.failures, "ms_per_customer": round(per_customer, 3)}),
        Row("Incremental refresh, 1% changed", f"{incr.seconds:.2f} s ({incr.customers:,} customers)",
            f"full: {full.seconds:.1f} s", round(share, 4), "≤ 3% of the full refresh", share <= 0.03,
            {"seconds": incr.seconds, "customers": incr.customers, "changed": changed, "failures": incr.failures}),
    ]
    return rows, full.customers


def _change_share(settings: Settings, share: float, unchanged: Sequence[str] = ()) -> int:
    """Touch 1 of every 1/share active CRM accounts (a new MRR, a newer sync stamp), none of
    the ``unchanged`` domains (the customers whose answers the token rows check)."""
    from sqlalchemy import bindparam, text

    url = settings.source("crm").url
    assert url is not None
    step = max(1, round(1 / share))
    eng = engine_for(url)
    with eng.begin() as conn:
        newest = conn.execute(text("SELECT max(_fivetran_synced) FROM company")).scalar()
        later = datetime.fromisoformat(str(newest)) + timedelta(minutes=1)
        ids = [r[0] for r in conn.execute(text(
            "SELECT id FROM company WHERE NOT is_deleted AND property_customer_status = 'active' "
            "AND property_domain NOT IN :keep ORDER BY id").bindparams(bindparam("keep", expanding=True)),
            {"keep": list(unchanged) or [""]})]
        chosen = ids[::step]
        for i in range(0, len(chosen), 500):
            part = chosen[i:i + 500]
            marks = ",".join(str(int(x)) for x in part)
            conn.execute(text(f"UPDATE company SET property_mrr = coalesce(property_mrr, 0) + 1, "  # noqa: S608
                              f"_fivetran_synced = :t WHERE id IN ({marks})"), {"t": later})
    return len(chosen)


def measure_warm(settings: Settings, memory: Any, ids: Sequence[str]) -> Row:
    from tools.slices import SLICE_NAMES

    path = settings.state_db_url.removeprefix("sqlite:///")
    con = sqlite3.connect(path)
    prefix = f"customers.{memory.tenant}."
    try:
        floor_n = [len({k: json.loads(v) for k, v in con.execute(
            "SELECT key, value FROM store WHERE prefix = ?", (prefix + cid,))}) for cid in ids[:50]]
        ours_n = [len(memory.get_many(cid, SLICE_NAMES)) for cid in ids[:50]]
        assert ours_n == floor_n, "the warm lookup and the floor read different slices"
        ours, floor = paired(ids, lambda cid: memory.get_many(cid, SLICE_NAMES), lambda cid: {
            k: json.loads(v) for k, v in con.execute("SELECT key, value FROM store WHERE prefix = ?", (prefix + cid,))})
    finally:
        con.close()
    p50, p99, f50, f99, ratio = _figures(ours, floor)
    return Row("Warm context lookup (memory, every slice)", f"p50 {p50:.3f} ms, p99 {p99:.3f} ms",
               f"raw SQL + json: p50 {f50:.3f} ms, p99 {f99:.3f} ms", round(ratio, 2),
               "p50 ≤ 3× floor, p99 ≤ 5 ms", ratio <= 3 and p99 <= 5,
               {"p50_ms": p50, "p99_ms": p99, "floor_p50_ms": f50, "floor_p99_ms": f99, "samples": len(ours),
                "slices_per_customer": round(sum(ours_n) / len(ours_n), 1)})


def paired(samples: Sequence[Any], ours: Callable[[Any], Any], floor: Callable[[Any], Any],
           ) -> tuple[list[float], list[float]]:
    """Milliseconds of ``ours(x)`` and ``floor(x)`` for every sample, interleaved and each first
    half of the time, so both see the same caches and load."""
    mine: list[float] = []
    base: list[float] = []
    for i, x in enumerate(samples):
        pair = [(mine, ours), (base, floor)]
        for into, fn in pair[::-1] if i % 2 else pair:
            into.extend(timed(partial(fn, x), 1))
    return mine, base


def _figures(ours: list[float], floor: list[float]) -> tuple[float, float, float, float, float]:
    p50, f50 = percentile(ours, 50), percentile(floor, 50)
    return p50, percentile(ours, 99), f50, percentile(floor, 99), (p50 / f50 if f50 else 0.0)


def measure_cold(settings: Settings, refs: Sequence[Any], as_of: datetime) -> Row:
    from evals.bench.sql import reference_row
    from tools.context.assembly import assemble_context
    from tools.context.scope import ReadScope
    from tools.context.view import reference_view
    from tools.sources.base import ReadClock

    scope = ReadScope.build(settings, ReadClock(as_of=as_of, settings=settings))
    crm_url = settings.source("crm").url
    if crm_url is None:  # the bench seeds its own warehouse, so this is a setup mistake
        raise RuntimeError("the cold-assembly bench needs the CRM source connected")
    con = sqlite3.connect(crm_url.removeprefix("sqlite:///"))

    def ours(ref: Any) -> dict[str, Any]:
        return reference_view(assemble_context(scope, ref, REFERENCE_VIEW_SLICES), include_slices=False)

    try:
        for ref in refs[:20]:  # warm-up, and the two compute the same view
            view, row = ours(ref), reference_row(con, ref, as_of)
            assert {k: view[k] for k in row} == row, f"the floor query disagrees for {ref.name}"
        mine, floor = paired(refs, ours, lambda ref: reference_row(con, ref, as_of))
    finally:
        con.close()
    p50, p99, f50, f99, ratio = _figures(mine, floor)
    return Row("Cold assembly (reference view from the sources)", f"p50 {p50:.2f} ms, p99 {p99:.2f} ms",
               f"one hand-written SQL query: p50 {f50:.2f} ms, p99 {f99:.2f} ms", round(ratio, 2),
               "≤ 1.5× the query, p50 ≤ 25 ms", ratio <= 1.5 and p50 <= 25,
               {"p50_ms": p50, "p99_ms": p99, "floor_p50_ms": f50, "floor_p99_ms": f99, "samples": len(mine),
                "slices": list(REFERENCE_VIEW_SLICES)})


def custctx_command() -> list[str]:
    """How a user starts ``custctx`` with this interpreter: its console script, else ``-m``."""
    script = Path(sys.executable).with_name("custctx")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "agent.interfaces.cli.app"]


def run_processes(commands: dict[str, Sequence[str]], runs: int, env: dict[str, str],
                  progress: Progress | None = None) -> dict[str, list[float]]:
    """Milliseconds of ``runs`` fresh processes of every command, interleaved (the order turned
    round every other run, so each sees the same caches and load), after one untimed round
    (byte code compiled, files cached, the identity index current).

    Raises:
        RuntimeError: a command failed (its figures would time an error message).
    """
    names = list(commands)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(runs + 1):
        for name in names[::-1] if i % 2 else names:
            t0 = time.perf_counter()
            proc = subprocess.run(commands[name], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, check=False)
            ms = (time.perf_counter() - t0) * 1000
            if proc.returncode:
                raise RuntimeError(f"{' '.join(commands[name])} exited {proc.returncode}: {proc.stderr.strip()}")
            if i:
                times[name].append(ms)
        if progress:
            progress("start-up runs", i, runs)
    return times


def measure_startup(out_dir: Path, runs: int, progress: Progress | None = None) -> list[Row]:
    """``custctx --help`` and ``custctx context acme.com`` (warm state), each in fresh processes
    beside the floor of a Typer command line (a process importing typer and rich), and for
    reference a bare two-command Typer app's ``--help``."""
    cli = custctx_command()
    args = {"help": ["--help"], "context": ["context", STARTUP_CUSTOMER]}
    times = run_processes({"floor": STARTUP_FLOOR, "bare_help": BARE_TYPER_HELP,
                           **{name: [*cli, *a] for name, a in args.items()}}, runs,
                          {**os.environ, **bench_env(out_dir)}, progress)
    floor, bare = percentile(times["floor"], 50), percentile(times["bare_help"], 50)
    baselines = {"help": f"python -c 'import typer, rich': p50 {floor:.0f} ms (a bare Typer app's --help: "
                         f"p50 {bare:.0f} ms, {bare / floor:.2g}×)",
                 "context": f"python -c 'import typer, rich': p50 {floor:.0f} ms"}
    rows = []
    for name, measure, goal, limit_ms in (
            ("help", "Start-up: custctx --help", "≤ 2× the floor", 2 * floor),
            ("context", f"Start-up: custctx context {STARTUP_CUSTOMER} (warm state)", "≤ 1 s", 1000.0)):
        p50, fastest = percentile(times[name], 50), min(times[name])
        rows.append(Row(measure, f"p50 {p50:.0f} ms (fastest {fastest:.0f} ms)", baselines[name],
                        round(p50 / floor, 2) if floor else None, goal, p50 <= limit_ms,
                        {"p50_ms": round(p50, 1), "min_ms": round(fastest, 1), "floor_p50_ms": round(floor, 1),
                         "floor_min_ms": round(min(times["floor"]), 1), "bare_typer_help_p50_ms": round(bare, 1),
                         "runs": runs, "command": shlex.join(["custctx", *args[name]])}))
    return rows


class SqlClock:
    """Time spent inside SQL statements on the source warehouses (all threads)."""

    def __init__(self, settings: Settings):
        self.engines = {engine_for(u) for s in SOURCE_NAMES if (u := settings.source(s).url)}
        self.ms = 0.0
        self._started: dict[int, float] = {}
        self._lock = threading.Lock()

    def _before(self, *_: Any) -> None:
        self._started[threading.get_ident()] = time.perf_counter()

    def _after(self, *_: Any) -> None:
        t0 = self._started.pop(threading.get_ident(), None)
        if t0 is not None:
            with self._lock:
                self.ms += (time.perf_counter() - t0) * 1000

    @contextmanager
    def listening(self) -> Iterator[SqlClock]:
        for e in self.engines:
            event.listen(e, "before_cursor_execute", self._before)
            event.listen(e, "after_cursor_execute", self._after)
        try:
            yield self
        finally:
            for e in self.engines:
                event.remove(e, "before_cursor_execute", self._before)
                event.remove(e, "after_cursor_execute", self._after)


@dataclass
class TokenSample:
    """One assistant question: what the turn sent vs. one call with the whole context."""

    kind: str
    shown: int  # prompt tokens of every model call of the turn (the result's tokens.prompt)
    full: int  # one call: instructions, the customer's whole context, the question
    compact: int  # the same call with the context as compact JSON (no indentation)


def compact_dump_tokens(runner: Any, customer_id: str, question: str) -> int:
    """``full_dump_tokens`` with the context block as compact JSON: the dump without the
    indentation ``safe_json`` gives it (the tool results the turn sends are compact)."""
    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_core.messages.utils import count_tokens_approximately

    from agent.prompting import UNTRUSTED_NOTE, context_block, render

    c = runner.customer_context(customer_id)
    block = context_block({"customer_id": c.customer_id, "name": c.name, "as_of": c.as_of.isoformat()}, c.slices,
                          c.gaps, c.traits.model_dump(mode="json"))
    text = json.dumps(json.loads(block), ensure_ascii=False, separators=(",", ":"))
    text = text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    system = render("assistant", customer=c.name, untrusted_note=UNTRUSTED_NOTE, budget_note="")
    return count_tokens_approximately([SystemMessage(system), HumanMessage(
        f"<customer_context>\n{text}\n</customer_context>"), HumanMessage(question)])


def token_sample(runner: Any, res: dict[str, Any], kind: str, question: str) -> TokenSample:
    """An answered turn's prompt tokens beside the full dump's, for the same customer and question."""
    from evals.runner import full_dump_tokens

    cid = res["customer"]["customer_id"]
    return TokenSample(kind, res["tokens"]["prompt"], full_dump_tokens(runner, cid, question),
                       compact_dump_tokens(runner, cid, question))


def token_row(measure: str, samples: Sequence[TokenSample], goal: tuple[float, str], checked: str,
              problems: Sequence[str], figures: dict[str, Any]) -> Row:
    """The token row: medians, the total-over-total ratio, the ratio by question kind; met when
    the ratio is within the goal's share and no answer had a problem (``checked`` says how
    many answers passed, the goal's text what they must do)."""
    goal_share, goal_check = goal
    shown, full = [s.shown for s in samples], [s.full for s in samples]
    ratio = sum(shown) / sum(full) if sum(full) else 0.0
    compact = sum(s.compact for s in samples)
    by_kind = {}
    for kind in dict.fromkeys(s.kind for s in samples):
        mine = [s for s in samples if s.kind == kind]
        k_shown, k_full = sum(s.shown for s in mine), sum(s.full for s in mine)
        by_kind[kind] = {"questions": len(mine), "shown_total": k_shown, "full_total": k_full,
                         "ratio": round(k_shown / k_full, 3) if k_full else None}
    kinds = ", ".join(f"{k} {v['ratio']:.2f}" for k, v in by_kind.items() if v["ratio"] is not None)
    return Row(measure,
               f"{percentile(shown, 50):,.0f} (median of {len(samples)} questions, every model call of the turn; "
               f"by kind: {kinds}; {checked})",
               f"{percentile(full, 50):,.0f} (median, one call with the full-context dump; as compact JSON: "
               f"ratio {sum(shown) / compact if compact else 0:.3f})",
               round(ratio, 3), f"≤ {goal_share:.0%} of the full dump, {goal_check}",
               bool(samples) and ratio <= goal_share and not problems,
               {"questions": len(samples), "shown_total": sum(shown), "full_total": sum(full),
                "full_total_compact": compact, "ratio_compact": round(sum(shown) / compact, 3) if compact else None,
                "median_shown": percentile(shown, 50), "median_full": percentile(full, 50), "by_kind": by_kind,
                "problems": list(problems)[:20], **figures})


def measure_turns(settings: Settings, progress: Progress | None) -> list[Row]:
    """Every assistant eval question, one turn each on a thread of its own: the prompt tokens of
    all the turn's model calls vs. one call that dumps the customer's full context, whether the
    answer states the eval's facts, and the time outside source queries."""
    from agent.runs import Runner
    from evals import evaluators as ev
    from evals.runner import load

    data = load("assistant")
    kinds = {tuple(v): k for k, v in data["slice_sets"].items()}
    samples: list[TokenSample] = []
    problems: list[str] = []
    turn_ms: list[float] = []
    outside_ms: list[float] = []
    cases = data["cases"]
    with Runner(settings) as runner, SqlClock(settings).listening() as sql:
        for i, case in enumerate(cases, 1):
            for n, turn in enumerate(case["turns"], 1):
                thread = f"bench-{case['id']}-{n}"
                before, t0 = sql.ms, time.perf_counter()
                res = runner.ask(turn["question"], case["customer"], thread)
                ms = (time.perf_counter() - t0) * 1000
                if res.get("error"):
                    problems.append(f"{case['id']}#{n}: error {res['error']}")
                    continue
                turn_ms.append(ms)
                outside_ms.append(ms - (sql.ms - before))
                samples.append(token_sample(runner, res, kinds.get(tuple(turn["slices"]), "other"), turn["question"]))
                facts = ev.fact_accuracy(res["answer"], turn.get("facts", []))
                if facts["score"] < 1.0:
                    problems.append(f"{case['id']}#{n}: {facts['comment']}")
            if progress:
                progress("assistant questions", i, len(cases))
    asked = sum(len(c["turns"]) for c in cases)
    return [
        token_row("Tokens per assistant question (fixture customers)", samples, (0.35, "eval facts correct"),
                  f"eval facts correct in {asked - len(problems)}/{asked}", problems, {"asked": asked}),
        Row("Graph overhead per assistant turn", f"p50 {percentile(outside_ms, 50):.1f} ms outside source queries",
            f"turn p50 {percentile(turn_ms, 50):.1f} ms", None, "informational", None,
            {"turns": len(turn_ms), "outside_p50_ms": percentile(outside_ms, 50),
             "outside_p99_ms": percentile(outside_ms, 99), "turn_p50_ms": percentile(turn_ms, 50),
             "turn_p99_ms": percentile(turn_ms, 99)}),
    ]


def measure_large(settings: Settings, spec: LargeCustomer, progress: Progress | None) -> Row:
    """The large customer, one question of each kind: the turn's prompt tokens vs. the full dump;
    each answer must cite every slice it read, state the expected facts and have no error."""
    from agent.runs import Runner
    from evals.bench.large import answer_problems, describe, dump_by_slice, large_questions

    questions = large_questions(spec)
    samples: list[TokenSample] = []
    problems: list[str] = []
    with Runner(settings) as runner:
        dump = dump_by_slice(runner.customer_context(spec.domain).slices)
        for i, q in enumerate(questions, 1):
            res = runner.ask(q.question, spec.domain, f"bench-large-{q.kind}")
            problems += answer_problems(res, q)
            if not res.get("error"):
                samples.append(token_sample(runner, res, q.kind, q.question))
            if progress:
                progress("large-customer questions", i, len(questions))
    failed = {p.split(":")[0] for p in problems}  # a problem starts with its question's kind
    return token_row(f"Tokens per question, large customer ({describe(spec)})", samples,
                     (0.10, "answers cite the slices read, no error"),
                     f"answers citing every slice read, with the expected facts: "
                     f"{len(questions) - len(failed)}/{len(questions)}", problems,
                     {"customer": spec.domain, "sizes": asdict(spec), "dump_tokens_by_slice": dump})


def measure_reviews(settings: Settings, out_dir: Path, sizes: Sequence[int], active: int,
                    progress: Progress | None) -> Row:
    from agent.reviews import run_reviews
    from agent.runs import Runner
    from tools.book import list_accounts

    figures: dict[str, Any] = {}
    with Runner(settings) as runner:
        def one(entry: Any) -> tuple[str, dict]:
            res = runner.review(entry.customer_id)
            if res.get("error"):
                raise RuntimeError(res["error"])
            return res["markdown"], {"customer_id": entry.customer_id, "name": entry.name, "summary": res["summary"],
                                     "review": res["review"], "slices_used": res["slices_used"]}

        chosen = sorted({min(s, active) for s in sizes})
        if len(sizes) > 1 and len(chosen) == 1:  # a small book: still two sizes, for the memory check
            chosen = sorted({max(1, active // 10), active})
        for n in chosen:
            target = out_dir / f"reviews-{n}"
            shutil.rmtree(target, ignore_errors=True)
            start = rss_mb()
            peak = [start]

            def tick(done: int, total: int | None, n: int = n, peak: list[float] = peak) -> None:
                peak[0] = max(peak[0], rss_mb())
                if progress:
                    progress(f"reviews ({n:,})", done, n)

            report = run_reviews(islice(list_accounts(settings), n), one, target, force=True, progress=tick, total=n)
            figures[str(n)] = {"accounts": report.written, "failed": len(report.failed), "seconds": report.seconds,
                               "per_second": round(report.written / report.seconds, 1) if report.seconds else None,
                               "peak_rss_growth_mb": round(peak[0] - start, 1)}
    sizes_run = list(figures)
    small, big = figures[sizes_run[0]], figures[sizes_run[-1]]
    grows = big["peak_rss_growth_mb"] > max(2 * small["peak_rss_growth_mb"], small["peak_rss_growth_mb"] + 50)
    text = "; ".join(f"{int(k):,}: {v['per_second']}/s, +{v['peak_rss_growth_mb']} MB" for k, v in figures.items())
    return Row("Batch reviews (offline model)", text, "", None, "memory must not grow with the count",
               not grows if len(figures) > 1 else None, figures)


# ------------------------------------------------------------------ the run
def run_bench(out_dir: Path, customers: int = DEFAULT_CUSTOMERS, reviews: Sequence[int] = DEFAULT_REVIEWS,
              progress: Progress | None = None, seed: int = 7, startup_runs: int | None = None,
              large: LargeCustomer | None = None) -> BenchReport:
    """Seed (or reuse) the warehouse, measure everything, write bench.md and bench.json as it goes.
    ``large``: the large customer's sizes (default: ``large_customer_for(customers)``)."""
    from agent.bootstrap import ready
    from evals.bench.large import large_customer_for
    from tools.identity import _ref, identity_customer
    from tools.memory import ContextMemory, open_store

    started = time.perf_counter()
    large = large or large_customer_for(customers)
    settings, seed_seconds = prepare(out_dir, customers, progress, large)
    r = ready(settings, progress)
    with engine_for(settings.state_db_url).connect() as conn:
        refs = [_ref(row._mapping) for row in conn.execute(identity_customer.select())]
    report = BenchReport(customers=len(refs), active=0, machine=machine(), seed_seconds=seed_seconds)
    rng = random.Random(seed)

    def add(*rows: Row) -> None:  # written as it goes: a long run stopped midway keeps its figures
        report.rows.extend(rows)
        report.seconds = round(time.perf_counter() - started, 1)
        write_bench(report, out_dir)

    with open_store(settings.state_db_url) as store:
        memory = ContextMemory.of(store, settings)
        rows, report.active = measure_refresh(settings, memory, progress, (*STORY_DOMAINS, large.domain))
        add(*rows)
        held = [ns[2] for ns in store.list_namespaces(prefix=("customers", settings.tenant), limit=10**7)]
        warm_ids = [rng.choice(held) for _ in range(WARM_SAMPLES)]
        add(measure_warm(settings, memory, warm_ids))
    add(*measure_startup(out_dir, startup_runs or (STARTUP_RUNS if customers >= DEFAULT_CUSTOMERS else 3), progress))
    cold = [rng.choice(refs) for _ in range(COLD_SAMPLES)]
    add(measure_cold(settings, cold, r.clock.as_of))
    add(*measure_turns(settings, progress))
    add(measure_large(settings, large, progress))
    add(measure_reviews(settings, out_dir, reviews, report.active, progress))
    return report


def write_bench(report: BenchReport, out_dir: Path) -> tuple[Path, Path]:
    m = report.machine
    lines = [f"# Benchmark: {report.customers:,} customers ({report.active:,} active)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, SQLite {m['sqlite']}, {m['system']}. "
             f"Run on {datetime.now(UTC):%Y-%m-%d}, {report.seconds:.0f} s"
             + (f" (seeding {report.seed_seconds:.0f} s)." if report.seed_seconds else " (warehouse reused)."),
             "", "| measure | ours | baseline / floor | ratio | goal | met |", "|---|---|---|---|---|---|"]
    for row in report.rows:
        met = {True: "yes", False: "**no**", None: "—"}[row.met]
        ratio = "—" if row.ratio is None else f"{row.ratio:g}"
        lines.append(f"| {row.measure} | {row.ours} | {row.baseline or '—'} | {ratio} | {row.goal} | {met} |")
    md = out_dir / "bench.md"
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    js = out_dir / "bench.json"
    js.write_text(json.dumps(asdict(report), indent=2, default=str), encoding="utf-8")
    return md, js
