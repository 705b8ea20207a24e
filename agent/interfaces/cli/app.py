"""``custctx``: the command line."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from agent.bootstrap import ready
from agent.brief import render_brief
from tools.access.gate import Access, resolve_visible
from tools.access.policy import PolicyError
from tools.access.principal import BadPrincipal, default_principal, parse_as
from tools.context.assembly import (
    UnknownSlice,
    assemble_context,
    default_guard,
    expand_slices,
    reference_view,
)
from tools.faults import FaultSpecError
from tools.identity import (
    AmbiguousCustomer,
    BadReference,
    CustomerNotFound,
    build_index,
)
from tools.mapping.engine import MappingError
from tools.settings import Settings
from tools.sources.base import CustomerRef
from tools.sources.health import check_sources

app = typer.Typer(help="Customer context agent: fresh, safe, step-sized customer context.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


class Format(StrEnum):
    json = "json"
    markdown = "markdown"


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", markup=True)
    return typer.Exit(code)


@contextmanager
def progress_bar(enabled: bool = True):
    """A rich progress bar for long work; a no-op callback when output is not a terminal."""
    if not enabled or not err.is_terminal:
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as bar:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update


AsOpt = Annotated[str | None, typer.Option(
    "--as", metavar="ROLE[:USER]",
    help="Read as this role and user, e.g. account_exec:dana.scully (roles: docs/ACCESS.md). "
         "Default: CUSTCTX_ROLE / CUSTCTX_USER, else admin as your login.")]


def access_or_exit(as_: str | None, settings: Settings, interface: str = "cli") -> Access:
    """The access gate of ``--as ROLE[:USER]`` (or the default principal), or exit 2 with why."""
    try:
        principal = parse_as(as_, settings, interface) if as_ else default_principal(settings, interface)
        return Access.for_principal(settings, principal)
    except (BadPrincipal, PolicyError) as exc:
        raise fail(str(exc), 2) from None


def resolve_or_exit(resolve: Callable[[str], tuple[CustomerRef, str]], ref: str,
                    format: Format = Format.markdown) -> tuple[CustomerRef, str]:
    """Resolve a customer reference with ``resolve`` (an index's, or as a principal may), or
    exit with a one-line reason (1: not found, 3: ambiguous)."""
    try:
        return resolve(ref)
    except AmbiguousCustomer as exc:
        if format is Format.json:
            print(json.dumps({"error": "ambiguous", "message": str(exc),
                              "candidates": [c.__dict__ for c in exc.candidates]}, indent=2))
            raise typer.Exit(3) from None
        err.print(f"{ref!r} matches {len(exc.candidates)} customers:")
        for c in exc.candidates:
            err.print(f"  - {c.name} ({c.domain or '-'}, {c.customer_id})")
        err.print("Use a domain, an email or an id to pick one.")
        raise typer.Exit(3) from None
    except (CustomerNotFound, BadReference) as exc:
        raise fail(str(exc), 1) from None


@app.command()
def seed(
    customers: Annotated[int, typer.Option(help="Background customers besides the 13 story customers.")] = 200,
    seed_value: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same rows).")] = 7,
    url: Annotated[str | None, typer.Option(help="SQLAlchemy URL to seed instead of the embedded warehouse.")] = None,
    salesforce_url: Annotated[str | None, typer.Option(
        "--salesforce-url", help="Also write the small Salesforce-flavour CRM fixture to this URL.")] = None,
) -> None:
    """Create the fixture warehouse: story customers, background customers, triage tickets."""
    from tools.embedded.generate import seed as run_seed
    from tools.embedded.generate import seed_salesforce

    settings = Settings()
    target = url or settings.embedded_warehouse_url
    if target.startswith("sqlite:///"):
        Path(target.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    with progress_bar() as update:
        report = run_seed(target, customers=customers, seed=seed_value, progress=update)
        if salesforce_url:
            seed_salesforce(salesforce_url)
        indexed = None
        if target == settings.embedded_warehouse_url:
            indexed = build_index(settings, update)
    rows = sum(report.rows.values())
    out.print(f"Seeded {report.customers} customers ({rows:,} rows in {len(report.rows)} tables) "
              f"into {target} in {report.seconds:.1f} s."
              + (f" Identity index: {indexed} customers." if indexed is not None else ""))


@app.command()
def context(
    ref: Annotated[str, typer.Argument(help="Customer email, domain, id (e.g. crm:1001) or name.")],
    format: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.markdown,
    slices: Annotated[list[str] | None, typer.Option(
        "--slices", "-s", help="Slices or sources to include, e.g. billing.status,support (default: all).")] = None,
    fresh: Annotated[bool, typer.Option(
        "--fresh", help="Read every slice from its source, not from long-term memory.")] = False,
    as_: AsOpt = None,
) -> None:
    """Print one customer's unified context: slices, derived traits, gaps, conflicts, provenance."""
    try:
        wanted = expand_slices(slices)
    except UnknownSlice as exc:
        raise fail(str(exc), 2) from None
    with progress_bar() as update:
        r = ready(progress=update, memory=True)
    access = access_or_exit(as_, r.settings)
    customer, matched_by = resolve_or_exit(
        lambda q: resolve_visible(r.index, q, r.settings, r.ctx, access, memory=r.memory), ref, format)
    ctx = assemble_context(r.settings, customer, r.ctx, wanted, matched_by=matched_by, memory=r.memory,
                           prefer_memory=not fresh, access=access)
    if format is Format.json:
        print(json.dumps(reference_view(ctx), indent=2, ensure_ascii=False))
    else:
        out.print(render_brief(ctx), markup=False)


@app.command()
def sources(
    format: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.markdown,
) -> None:
    """Health of every source: connected or not, reachable, latency, newest row, breaker, injected fault."""
    with progress_bar() as update:
        r = ready(progress=update)
    report = check_sources(r.settings, default_guard(r.settings))
    if format is Format.json:
        print(json.dumps([h.model_dump(mode="json") for h in report], indent=2))
        return
    table = Table("source", "status", "system", "latency", "rows", "newest row", "breaker", "fault", "detail",
                  box=None, pad_edge=False)
    for h in report:
        table.add_row(h.source, h.status, h.system or "—",
                      f"{h.latency_ms:.1f} ms" if h.latency_ms is not None else "—",
                      f"{h.rows:,}" if h.rows is not None else "—",
                      f"{h.newest_row:%Y-%m-%d %H:%M}" if h.newest_row else "—", h.breaker or "—", h.fault or "—", h.detail or "")
    out.print(table)


from agent.interfaces.cli import (  # noqa: E402  (commands register themselves on import)
    audit,  # noqa: E402,F401  (registers audit)
    bench,  # noqa: E402,F401  (registers bench)
    evals,  # noqa: E402,F401  (registers eval)
    refresh,  # noqa: E402,F401  (registers refresh, event)
    serve,  # noqa: E402,F401
    workflows,  # noqa: E402,F401  (registers ask, chat, triage, review)
)


def main() -> None:
    """Entry point: user errors become one line on stderr, never a traceback."""
    from openai import OpenAIError

    from agent.models import ModelConfigError

    try:
        app()
    except (ModelConfigError, OpenAIError) as exc:
        if os.environ.get("CUSTCTX_DEBUG"):
            raise
        err.print(f"error: model: {str(exc).strip().splitlines()[0]}", markup=False)
        sys.exit(2)
    except (MappingError, FaultSpecError, SQLAlchemyError, OSError) as exc:
        if os.environ.get("CUSTCTX_DEBUG"):
            raise
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        err.print(f"error: {first[0] if first else type(exc).__name__}", markup=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
