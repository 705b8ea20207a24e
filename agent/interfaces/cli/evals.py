"""``custctx eval``: run the eval suites on the fixture customers and check the offline gate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agent.interfaces.cli.common import err, fail, out, progress_bar

commands = typer.Typer()


@commands.command("eval")
def eval_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for report.md and results.json.")],
    suite: Annotated[list[str] | None, typer.Option(
        "--suite", help="Suite(s) to run: assistant, triage, review, degradation, injection (default: all).")] = None,
    model: Annotated[str | None, typer.Option("--model", help='"offline" (default) or an OpenAI-compatible model.')] = None,
    trials: Annotated[int, typer.Option(min=1, max=20, help="Runs per case; the report gives pass^k.")] = 1,
    gate: Annotated[bool, typer.Option("--gate", help="Exit 1 when the offline thresholds are not met.")] = False,
    entry_points: Annotated[str | None, typer.Option(
        "--entry-points", help="Entry points the access suite drives: cli, http, mcp, langgraph (comma-separated), "
                               "all, or none (default: cli,http,mcp).")] = None,
) -> None:
    """Run the eval suites and write a markdown report and JSON with the full settings."""
    from agent.bootstrap import ready
    from agent.run_context import remember
    from evals.access_suite import entry_points_option
    from evals.runner import SUITES, run_eval, write_report

    try:
        drive = entry_points_option(entry_points)
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    suites = [s for item in (suite or list(SUITES)) for s in item.split(",") if s.strip()]
    with progress_bar() as update:
        r = ready(progress=update)
    remember(r)
    try:
        with progress_bar() as update:
            report = run_eval(r.settings, suites, model=model, trials=trials, progress=update, entry_points=drive)
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    md, js = write_report(report, out_dir)
    out.print(md.read_text(encoding="utf-8"), markup=False)
    err.print(f"report: {md}  results: {js}", markup=False)
    if gate and not report.gate_passed:
        err.print("eval gate FAILED: see the Gate table above", markup=False)
        raise typer.Exit(1)
