"""``custctx seed | context | sources``: the warehouse, one customer's context, source health."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from agent.interfaces.cli.common import (
    AsOpt,
    Format,
    FormatOpt,
    access_or_exit,
    fail,
    out,
    progress_bar,
    resolve_or_exit,
)

if TYPE_CHECKING:
    from tools.settings import Settings

commands = typer.Typer()


@commands.command()
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
    from tools.identity import build_index
    from tools.settings import Settings

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


@commands.command()
def context(
    ref: Annotated[str, typer.Argument(help="Customer email, domain, id (e.g. crm:1001) or name; a person by "
                                       "user:<app user id>, anon:<anonymous id>, support_user:<id> (or "
                                       "zendesk_user:<id>) or 'name+postcode:<name>, <postcode>'.")],
    format: FormatOpt = Format.markdown,
    slices: Annotated[list[str] | None, typer.Option(
        "--slices", "-s", help="Slices or sources to include, e.g. billing.status,support (default: all).")] = None,
    fresh: Annotated[bool, typer.Option(
        "--fresh", help="Read every slice from its source, not from long-term memory.")] = False,
    as_: AsOpt = None,
) -> None:
    """Print one customer's unified context: slices, derived traits, gaps, conflicts, provenance."""
    from agent.bootstrap import ready
    from tools.context.assembly import UnknownSlice, assemble_context, expand_slices
    from tools.context.read import resolve
    from tools.context.scope import ReadScope

    try:
        wanted = expand_slices(slices)
    except UnknownSlice as exc:
        raise fail(str(exc), 2) from None
    with progress_bar() as update:
        r = ready(progress=update, memory=True)
    access = access_or_exit(as_, r.settings)
    scope = ReadScope.build(r.settings, r.clock, access=access, memory=r.memory, index=r.index,
                            prefer_memory=not fresh)
    customer, matched_by = resolve_or_exit(lambda q: resolve(scope, q), ref, format)
    ctx = assemble_context(scope, customer, wanted, matched_by=matched_by)
    from tools.facts import user_facts

    facts = user_facts(scope, customer.customer_id)  # what users told us (custctx note): provenance user
    if format is Format.json:
        from tools.context.view import reference_view

        view = reference_view(ctx)
        view["user_facts"] = [f.model_dump(mode="json") for f in facts]
        print(json.dumps(view, indent=2, ensure_ascii=False))
    else:
        from agent.brief import render_brief

        out.print(render_brief(ctx, facts), markup=False)


@commands.command()
def sources(format: FormatOpt = Format.markdown) -> None:
    """Health of every source: connected or not, reachable, latency, newest row, breaker, injected fault."""
    from rich.table import Table

    from agent.bootstrap import ready
    from tools.context.scope import default_guard
    from tools.sources.health import check_sources

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
                      f"{h.newest_row:%Y-%m-%d %H:%M}" if h.newest_row else "—", h.breaker or "—", h.fault or "—",
                      h.detail or "")
    out.print(table)
    _print_worker(r.settings)


def _print_worker(settings: Settings) -> None:
    """The refresh worker's jobs (``custctx serve worker``): last run, next run, errors."""
    from rich.table import Table

    from tools.refresh.worker import worker_status

    jobs = worker_status(settings)
    if not jobs:
        out.print("Refresh worker: never ran for this tenant (custctx serve worker).", markup=False)
        return
    table = Table("worker job", "status", "last run (UTC)", "last success", "next run", "runs", "failures",
                  "last error", box=None, pad_edge=False)
    for j in jobs:
        table.add_row(j.job, j.status, *(f"{t:%Y-%m-%d %H:%M:%S}" if t else "—"
                                         for t in (j.last_finished, j.last_ok, j.next_run)),
                      str(j.runs), str(j.failures), j.last_error or "")
    out.print(table)
