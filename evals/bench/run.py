"""``custctx bench``: how fast and how cheap, each figure beside its floor, in one run.

The benchmark seeds its own warehouse (``--customers`` background customers plus the
story ones and one large customer, in ``OUT/warehouse.sqlite``; reused when a previous
run seeded the same sizes), starts from an empty state database (``OUT/state``) and measures, in this
process, one after the other (with ``--url``, every database is on that PostgreSQL server
instead: ``evals.bench.warehouse``):

1. **Refresh**: full materialisation of the active book into long-term memory, then an
   incremental refresh after 1% of the customers changed (a CRM update each).
2. **Warm context lookup**: one customer's every stored slice read from long-term
   memory as validated slices (``ContextMemory.get_many``: what a warm context read
   costs) vs. the floor, the same stored JSON read by a raw SQL point lookup with the
   standard library (``sqlite3`` + ``json``).
2b. **Served read** (``evals.bench.served``): a cached customer's context as the HTTP API
   serves it — resolve, access gate, audit append, reference view — vs. a Feast-like online
   read, our own raw memory read of the same slices; every audit record counted afterwards.
2c. **The HTTP API under load** (``--api``, ``evals.bench.api``): ``custctx serve api`` at
   concurrency 50 over loopback vs. a bare FastAPI app serving the same JSON from a dict.
3. **Cold assembly**: one customer's reference view (``reference_view`` of the slices it
   needs, read live from the sources, no memory) vs. one hand-written SQL query that
   computes the same view (``evals.bench.sql``), run with ``sqlite3``.
4. **Tokens** per assistant question: the prompt tokens of every model call of the turn
   (``tokens.prompt``: instructions, tool definitions, the question, the tool calls and
   their results, as a hosted model is sent them) vs. ONE call with the instructions, the
   customer's whole context and the question (``evals.runner.full_dump_tokens``), with the
   answers' eval facts checked; over the assistant eval questions on the fixture customers
   (not the commerce ones: the warehouse has no store), and over the same question kinds on
   a large customer the benchmark writes into its warehouse (``evals.bench.large``: hundreds
   of tickets, emails, calls, activities…). Both
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
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

from evals.bench.api import API_REQUESTS, measure_api
from evals.bench.common import (
    BenchReport,
    Progress,
    Row,
    machine,
    paired,
    percentile,
    rss_mb,
    timed,
)
from evals.bench.reads import (
    COLD_SAMPLES,
    REFERENCE_VIEW_SLICES,
    WARM_SAMPLES,
    measure_cold,
    measure_warm,
)
from evals.bench.refresh import (
    measure_refresh as measure_refresh_beside_floor,  # the set-based floor
)
from evals.bench.served import SERVED_CUSTOMERS, SERVED_SAMPLES, measure_served, visible_ids
from evals.bench.startup import STARTUP_RUNS, measure_startup
from evals.bench.turns import measure_large, measure_turns
from evals.bench.warehouse import bench_env, bench_settings, prepare
from tools.embedded.large import LargeCustomer
from tools.embedded.story_data import STORY_DOMAINS
from tools.settings import Settings
from tools.sources.registry import engine_for

__all__ = ["REFERENCE_VIEW_SLICES", "BenchReport", "Row", "bench_env", "bench_settings", "paired", "percentile",
           "prepare", "run_bench", "timed", "write_bench"]

DEFAULT_CUSTOMERS = 1_000
DEFAULT_REVIEWS = (1_000, 10_000)


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
              large: LargeCustomer | None = None, api: bool = False, api_requests: int = API_REQUESTS,
              url: str | None = None) -> BenchReport:
    """Seed (or reuse) the warehouse, measure everything, write bench.md and bench.json as it goes.
    ``large``: the large customer's sizes (default: ``large_customer_for(customers)``); ``api``:
    also drive the HTTP API (``api_requests`` per server); ``url``: run on that PostgreSQL server
    (sources, store, checkpointer, audit) instead of SQLite files."""
    from agent.bootstrap import ready
    from evals.bench.large import large_customer_for
    from tools.identity import _ref, identity_customer
    from tools.memory import ContextMemory, open_store

    started = time.perf_counter()
    large = large or large_customer_for(customers)
    settings, seed_seconds = prepare(out_dir, customers, progress, large, url)
    r = ready(settings, progress)
    with engine_for(settings.state_db_url).connect() as conn:
        refs = [_ref(row._mapping) for row in conn.execute(identity_customer.select())]
    report = BenchReport(customers=len(refs), active=0, machine={**machine(), "backend": backend(settings)},
                         seed_seconds=seed_seconds)
    rng = random.Random(seed)

    def add(*rows: Row) -> None:  # written as it goes: a long run stopped midway keeps its figures
        report.rows.extend(rows)
        report.seconds = round(time.perf_counter() - started, 1)
        write_bench(report, out_dir)

    with open_store(settings.state_db_url) as store:
        memory = ContextMemory.of(store, settings)
        rows, report.active = measure_refresh_beside_floor(settings, memory, progress, (*STORY_DOMAINS, large.domain))
        add(*rows)
        held = [ns[2] for ns in store.list_namespaces(prefix=("customers", settings.tenant), limit=10**7)]
        warm_ids = [rng.choice(held) for _ in range(WARM_SAMPLES)]
        add(measure_warm(settings, memory, warm_ids))
    hot = visible_ids(settings, rng.sample(held, min(len(held), SERVED_CUSTOMERS)))
    add(measure_served(settings, [rng.choice(hot) for _ in range(SERVED_SAMPLES)]))
    if api:
        add(measure_api(settings, bench_env(out_dir, url), out_dir, hot, api_requests, progress=progress))
    add(*measure_startup(out_dir, startup_runs or (STARTUP_RUNS if customers >= DEFAULT_CUSTOMERS else 3), progress,
                         url))
    cold = [rng.choice(refs) for _ in range(COLD_SAMPLES)]
    add(measure_cold(settings, cold, r.clock.as_of))
    add(*measure_turns(settings, progress))
    add(measure_large(settings, large, progress))
    add(measure_reviews(settings, out_dir, reviews, report.active, progress))
    return report


def backend(settings: Settings) -> str:
    """Where the run's sources and state live: ``SQLite 3.x`` or ``PostgreSQL 16.x``."""
    eng = engine_for(settings.state_db_url)
    if eng.dialect.name != "postgresql":
        return f"SQLite {machine()['sqlite']}"
    with eng.connect() as conn:
        return f"PostgreSQL {conn.exec_driver_sql('SHOW server_version').scalar()}"


def write_bench(report: BenchReport, out_dir: Path) -> tuple[Path, Path]:
    m = report.machine
    lines = [f"# Benchmark: {report.customers:,} customers ({report.active:,} active)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, {m['system']}. Sources, store, "
             f"checkpointer and audit on {m.get('backend', 'SQLite ' + m['sqlite'])}. "
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
