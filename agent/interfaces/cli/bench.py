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
) -> None:
    """Seed a warehouse and measure refresh, warm lookups, cold assembly, tokens, graph overhead
    and batch reviews, each beside its floor; print the table, write bench.md and bench.json."""
    from rich.table import Table

    from evals.bench.run import run_bench, write_bench

    sizes = _sizes(reviews)
    with progress_bar() as update:
        report = run_bench(out_dir, customers, sizes, progress=update)
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
