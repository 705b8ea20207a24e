"""``custctx bench``: the performance benchmark (``evals.bench.run``), printed and written."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agent.interfaces.cli.common import err, fail, out, progress_bar

commands = typer.Typer()


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise fail(f"--reviews {text!r}: give account counts such as 1000,10000", 2) from None
    if not sizes or min(sizes) < 1:
        raise fail(f"--reviews {text!r}: give account counts such as 1000,10000", 2)
    return sizes


@commands.command()
def bench(
    customers: Annotated[int, typer.Option(
        min=10, max=1_000_000, help="Background customers to seed (100000 for the headline run).")] = 1_000,
    out_dir: Annotated[Path, typer.Option(
        "--out", help="Directory for the warehouse, state, bench.md and bench.json.")] = Path("bench-out"),
    reviews: Annotated[str, typer.Option(
        help="Book sizes of the batch-review runs (capped at the active book).")] = "1000,10000",
    api: Annotated[bool, typer.Option(
        "--api", help="Also drive the HTTP API (custctx serve api) over loopback at concurrency 50, beside a "
                      "bare FastAPI app serving the same JSON.")] = False,
    api_requests: Annotated[int, typer.Option(
        min=100, max=1_000_000, help="Requests per server for --api.")] = 4_000,
    url: Annotated[str | None, typer.Option(
        help="A PostgreSQL server (postgresql+psycopg://user@host:port/db) to run on instead of SQLite files: the "
             "benchmark creates its own databases custctx_bench_warehouse and custctx_bench_state there "
             "(the state one dropped and created anew each run).")] = None,
) -> None:
    """Seed a warehouse and measure refresh, warm lookups, the served read, cold assembly, tokens,
    graph overhead and batch reviews (and with --api the HTTP API under load), each beside its
    floor; print the table, write bench.md and bench.json."""
    from rich.table import Table

    from evals.bench.run import run_bench, write_bench
    from evals.bench.warehouse import bench_urls

    sizes = _sizes(reviews)
    if url is not None:
        try:
            bench_urls(out_dir, url)
        except ValueError as exc:
            raise fail(str(exc), 2) from None
    with progress_bar() as update:
        report = run_bench(out_dir, customers, sizes, progress=update, api=api, api_requests=api_requests, url=url)
    md, js = write_bench(report, out_dir)
    m = report.machine
    table = Table(title=f"custctx bench: {report.customers:,} customers ({report.active:,} active) on "
                        f"{m['cpu']}, {m['cores']} cores", title_justify="left")
    for col in ("measure", "ours", "baseline / floor", "ratio", "goal", "met"):
        table.add_column(col, overflow="fold")
    for row in report.rows:
        table.add_row(row.measure, row.ours, row.baseline or "—", "—" if row.ratio is None else f"{row.ratio:g}",
                      row.goal, {True: "yes", False: "NO", None: "—"}[row.met])
    out.print(table)
    err.print(f"report: {md}  figures: {js}", markup=False)
