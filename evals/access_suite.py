"""The ``access`` eval suite: every principal of evals/datasets/access.yaml × every story customer.

1. **The read path** (in process): all slices through ``custctx context``'s read path — zero leaks,
   the policy's slices and masks exactly, every read audited; then tickets by id, threads continued
   by another principal and events through the runner (evals/access_probes.py).
2. **Every entry point** (evals/access_entry.py): the installed CLI (in process through its entry
   point, plus one real ``custctx`` process), the HTTP API served by uvicorn, the MCP server over
   streamable HTTP with bearer keys and LangGraph's server (``langgraph dev``), each a real server on
   loopback with an API key per principal.
3. **Timing**: hidden vs non-existent references, 200 requests each, interleaved after a warm-up, in
   process and over HTTP; their medians (``hidden_median_ms`` / ``missing_median_ms``) within 2 ms.
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from evals import access_probes as ap
from evals import evaluators as ev
from evals.access_drivers import CliDriver, HttpDriver, LangGraphDriver, McpDriver, Reply, closing
from evals.access_entry import EntryContext, entry_point_probes, identity, leaks, same_as_missing
from evals.access_servers import InProcessCli, ServerFailed, cli_subprocess, served, write_keys

ENTRY_POINTS = ("cli", "http", "mcp", "langgraph")
"""Every entry point the suite can drive (``entry_points=()``: the in-process read path only)."""
DEFAULT_ENTRY_POINTS = ("cli", "http", "mcp")
"""Those of a plain ``custctx eval``: LangGraph's server takes minutes more (a run costs ~0.3 s there),
so it runs with ``--entry-points all`` (and in tests/test_access_eval_entry_points.py)."""


def entry_points_option(value: str | None) -> tuple[str, ...]:
    """``--entry-points``: ``all``, ``none`` or a comma-separated list (unset: the default ones).

    Raises:
        ValueError: an unknown entry point.
    """
    if value is None or not value.strip():
        return DEFAULT_ENTRY_POINTS
    names = [v.strip().lower() for v in value.split(",") if v.strip()]
    if names == ["all"]:
        return ENTRY_POINTS
    if names == ["none"]:
        return ()
    if unknown := [n for n in names if n not in ENTRY_POINTS]:
        raise ValueError(f"unknown entry point {unknown[0]!r}; entry points: {', '.join(ENTRY_POINTS)}, all, none")
    return tuple(dict.fromkeys(names))


def probe_scores(p: ap.Probe) -> list[dict[str, Any]]:
    found = [x for x in p.problems if x.startswith("LEAK")]
    return [ev.result("leaks", float(len(found)), "; ".join(found[:3])),
            ev.result("access_policy", float(len(p.problems) == len(found)),
                      "; ".join(x for x in p.problems if not x.startswith("LEAK"))[:300]),
            ev.result("audit_complete", float(not p.audit), "; ".join(p.audit)),
            *(ev.result(k, v, p.note) for k, v in p.metrics.items())]


def read_path_probes(runner: Any, baseline: dict[str, ap.Baseline]) -> Iterator[ap.Probe]:
    """Every principal × story customer × every slice through the CLI's read path (in process)."""
    from agent.brief import render_brief
    from agent.prompting import context_block
    from tools.context.assembly import read_customer_context
    from tools.context.view import reference_view
    from tools.identity import CustomerNotFound
    from tools.slices import SLICE_NAMES
    from tools.sources.base import utcnow

    for exp in ap.EXPECT:
        for ref in ap.REFS:
            base, since, t0 = baseline[ref], utcnow(), time.perf_counter()
            problems: list[str] = []
            try:
                c = read_customer_context(runner.request(exp.principal("cli")), ref, list(SLICE_NAMES))
                found = True
                block = context_block({"name": c.name}, c.slices, c.gaps, c.traits.model_dump(mode="json"))
                problems += ap.check_view(reference_view(c), base, exp, [render_brief(c), block])
            except CustomerNotFound:
                found = False
            if found != (ref in exp.visible):
                problems.append(f"visible {found}, expected {ref in exp.visible}")
            audit = ap.check_audit(ap.audited(runner.settings, base.customer_id, since, "cli", exp), exp,
                                   ref in exp.visible)
            yield ap.Probe(f"{exp.label} × {ref}", problems, audit, (time.perf_counter() - t0) * 1000)


def timing(label: str, pair: tuple[str, str], call: Callable[[str], None], n: int, gap: float,
           warm: int = 20) -> ap.Probe:
    """``n`` calls each of a hidden and a missing reference, interleaved (alternating which goes first)
    after ``warm`` rounds; their medians must be within ``gap`` ms."""
    hidden, missing = pair
    times: dict[str, list[float]] = {hidden: [], missing: []}
    t0 = time.perf_counter()
    for i in range(warm + n):
        for ref in (hidden, missing) if i % 2 == 0 else (missing, hidden):
            started = time.perf_counter()
            call(ref)
            if i >= warm:
                times[ref].append((time.perf_counter() - started) * 1000)
    mh, mm = statistics.median(times[hidden]), statistics.median(times[missing])
    note = f"medians over {n} requests each: hidden {mh:.2f} ms, missing {mm:.2f} ms (gap {abs(mh - mm):.2f} ms)"
    problems = [f"timing tells them apart: {note}"] if abs(mh - mm) > gap else []
    return ap.Probe(label, problems, [], (time.perf_counter() - t0) * 1000,
                    {"hidden_median_ms": round(mh, 3), "missing_median_ms": round(mm, 3)}, note)


def runner_timing_probes(runner: Any) -> Iterator[ap.Probe]:
    """The timing pairs of access.yaml in process: ``custctx context``'s read path (resolve as the
    principal may, then read) for customer references, the ticket lookup by id for ``ticket:ID``."""
    from tools.context.assembly import read_customer_context
    from tools.identity import CustomerNotFound
    from tools.slices import SLICE_NAMES
    from tools.sources.tickets import TicketNotFound

    spec = ap.ENTRY["timing"]
    exp = next(e for e in ap.EXPECT if e.label == spec["as"])
    n, gap = int(spec["requests"]), float(spec["max_gap_ms"])
    for hidden_ref, missing_ref in spec["pairs"]:
        pair = (ap.concrete_ref(runner, hidden_ref), ap.concrete_ref(runner, missing_ref))
        found: list[str] = []

        def call(ref: str, found: list[str] = found) -> None:
            try:
                if ref.startswith("ticket:"):  # a ticket by id: its owner resolved and row-checked
                    runner.ticket(ref.partition(":")[2], scope=runner.request(exp.principal("cli")))
                else:
                    read_customer_context(runner.request(exp.principal("cli")), ref, list(SLICE_NAMES))
                found.append(f"{ref} was found")
            except (CustomerNotFound, TicketNotFound):
                pass

        p = timing(f"timing {exp.label}: {hidden_ref} vs {missing_ref}", pair, call, n, gap)
        p.problems += sorted(set(found))
        yield p


def http_timing_probes(runner: Any, http: HttpDriver) -> Iterator[ap.Probe]:
    """The timing pairs of access.yaml over the real HTTP server: the context endpoint for customer
    references, the triage endpoint for ``ticket:ID``; each answer must be the not-found one."""
    spec = ap.ENTRY["timing"]
    who, n, gap = spec["as"], int(spec["requests"]), float(spec["max_gap_ms"])
    for hidden_ref, missing_ref in spec["pairs"]:
        pair = (ap.concrete_ref(runner, hidden_ref), ap.concrete_ref(runner, missing_ref))
        wrong: list[str] = []

        def call(ref: str, wrong: list[str] = wrong) -> None:
            reply = http.ticket(who, ref.partition(":")[2]) if ref.startswith("ticket:") else http.context(who, ref)
            if reply.ok or not reply.shape.startswith("404"):
                wrong.append(f"{ref}: {reply.shape}")

        p = timing(f"http: timing {who}: {hidden_ref} vs {missing_ref}", pair, call, n, gap)
        p.problems += sorted(set(wrong))[:3]
        yield p


def cli_smoke_probes(settings: Any, baseline: dict[str, ap.Baseline], ids: dict[str, set[str]]) -> Iterator[ap.Probe]:
    """One real ``custctx`` process per reference (visible, hidden, missing) as an account executive: what
    the in-process calls stand for holds for the installed command too."""
    from evals.access_entry import MISSING_CUSTOMER, hidden_needles

    exp = next(e for e in ap.EXPECT if e.label == ap.ENTRY["timing"]["as"])
    hidden = next(r for r in ap.REFS if r not in exp.visible)
    visible = next(r for r in ap.REFS if r in exp.visible)
    t0 = time.perf_counter()
    replies = {}
    for ref in (visible, hidden, MISSING_CUSTOMER):
        r = cli_subprocess(settings, "context", ref, "--format", "json", "--as", exp.label)
        replies[ref] = Reply(r.code == 0, f"exit {r.code}", r.stdout + "\n" + r.stderr)
    problems = [] if replies[visible].ok and baseline[visible].name in replies[visible].text else \
        [f"custctx context {visible}: {replies[visible].shape}"]
    problems += same_as_missing(replies[hidden], hidden, replies[MISSING_CUSTOMER], MISSING_CUSTOMER)
    for ref, reply in replies.items():
        problems += leaks(reply.text, hidden_needles(exp, ids, baseline), (ref,))
    yield ap.Probe(f"cli: custctx process {exp.label} × {visible}, {hidden}, {MISSING_CUSTOMER}", problems, [],
                   (time.perf_counter() - t0) * 1000)


def entry_points_probes(runner: Any, baseline: dict[str, ap.Baseline], tickets: dict[str, str],
                        entry_points: Sequence[str], workdir: Path) -> Iterator[tuple[str, ap.Probe | str]]:
    """(entry point, probe) for every probe of every entry point; (entry point, why) for one that could
    not be started (a gap the gate's ``entry_points_covered`` counts)."""
    settings = runner.settings
    ids = identity(runner, baseline)
    keys = write_keys(workdir / "keys.json", [(e.label, e.role, e.user) for e in ap.EXPECT], ap.TENANT)
    for name in entry_points:
        ctx = EntryContext(settings, baseline, ids, tickets, "langgraph" if name == "langgraph" else name)
        if name == "cli":
            yield name, "covered"
            for p in itertools.chain(entry_point_probes(CliDriver(InProcessCli(settings)), ctx),
                                     cli_smoke_probes(settings, baseline, ids)):
                yield name, p
            continue
        try:
            with served(name, settings, workdir / "keys.json", workdir / name) as base:
                driver = {"http": HttpDriver, "mcp": McpDriver, "langgraph": LangGraphDriver}[name](base, keys)
                with closing(driver):
                    yield name, "covered"
                    yield from ((name, p) for p in entry_point_probes(driver, ctx))
                    if isinstance(driver, HttpDriver):
                        yield from ((name, p) for p in http_timing_probes(runner, driver))
        except ServerFailed as exc:
            yield name, str(exc)
        except (httpx.TransportError, TimeoutError, RuntimeError) as exc:  # the server went away mid-run
            yield name, f"the {name} entry point stopped answering: {type(exc).__name__}: {exc}"[:300]


def access_cases(settings: Any, trial: int, entry_points: Sequence[str] = DEFAULT_ENTRY_POINTS) -> Iterator[Any]:
    """The suite's CaseResults (see the module docstring)."""
    from agent.runs import Runner
    from evals.runner import CaseResult, _passed
    from tools.access.principal import Principal
    from tools.context.view import reference_view

    base_settings = settings.model_copy(update={"tenant": ap.TENANT})
    with Runner(base_settings, principal=Principal(ap.TENANT, "root", "admin", interface="runner")) as runner:
        baseline = {}
        for ref in ap.REFS:
            c = runner.customer_context(ref, None)
            baseline[ref] = ap.Baseline(c.customer_id, c.name, reference_view(c)["slices"])
        tickets = ap.story_tickets(runner, baseline)
        probes = itertools.chain(read_path_probes(runner, baseline),
                                 ap.ticket_probes(runner, baseline, tickets), ap.thread_probes(runner, baseline),
                                 ap.event_probes(runner, baseline), runner_timing_probes(runner))
        for p in probes:
            scores = probe_scores(p)
            yield CaseResult("access", p.case, trial, _passed(scores), scores, p.ms, 0, note=p.note, entry="runner")
        with tempfile.TemporaryDirectory(prefix="custctx-eval-access-") as tmp:
            for name, item in entry_points_probes(runner, baseline, tickets, entry_points, Path(tmp)):
                if isinstance(item, str):
                    covered = item == "covered"
                    scores = [ev.result("entry_points_covered", float(covered), "" if covered else item)]
                    yield CaseResult("access", f"{name}: entry point", trial, covered, scores, 0.0, 0,
                                     note="" if covered else item, entry=name)
                    continue
                scores = probe_scores(item)
                yield CaseResult("access", item.case, trial, _passed(scores), scores, item.ms, 0, note=item.note,
                                 entry=name)
