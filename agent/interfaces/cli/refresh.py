"""``custctx refresh | event``: keep long-term memory warm (tools/refresh/jobs.py).

Exit codes: 0 done; 1 unknown customer or bad reference, or a principal whose role may not
trigger a refresh; 2 bad option or unknown event kind; 3 ambiguous reference; 4 done, but
some reads failed (those slices kept their last snapshot and their sources their watermarks;
run again to retry them).

Who refreshes: with ``--as ROLE[:USER]`` (or ``CUSTCTX_ROLE``) that principal, whose role needs
the access policy's ``refresh`` permission; it resolves the customer as it may see customers,
and the refresh reads and is audited as it. Without either, the refresh job of the local
operator: the policy's admin role, user ``refresh``, interface ``refresh`` (docs/ACCESS.md).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

from agent.interfaces.cli.common import (
    AsOpt,
    Format,
    FormatOpt,
    access_or_exit,
    err,
    fail,
    out,
    progress_bar,
    resolve_or_exit,
)

if TYPE_CHECKING:
    from agent.bootstrap import Ready
    from tools.access.principal import Principal
    from tools.context.scope import ReadScope
    from tools.refresh.jobs import RefreshReport

INCOMPLETE = 4

commands = typer.Typer()


def _time(v: object) -> str:
    return f"{v:%Y-%m-%d %H:%M:%S}" if v is not None and hasattr(v, "strftime") else "—"


def _summary(r: RefreshReport) -> str:
    what = {"full": "Full refresh", "incremental": "Incremental refresh", "customer": "Customer refresh",
            "event": f"Event {r.event}"}.get(r.mode, r.mode)
    return (f"{what}: {r.customers} customer{'s' if r.customers != 1 else ''}, {r.slices_written} slices written, "
            f"{r.gaps} without a record, {r.failures} failed in {r.seconds:.1f} s.")


def _print(r: RefreshReport, format: Format) -> None:
    if format is Format.json:
        print(json.dumps(r.as_dict(), indent=2, ensure_ascii=False))
    else:
        from rich.table import Table

        out.print(_summary(r), markup=False)
        if r.written:
            table = Table("slice", "fetched at", "source updated at", "records", box=None, pad_edge=False)
            for w in r.written:
                table.add_row(w.slice, _time(w.fetched_at), _time(w.source_updated_at), str(w.record_ids))
            out.print(table)
        elif r.mode in ("full", "incremental"):
            table = Table("source", "customers refreshed", "watermark", "note", box=None, pad_edge=False)
            for source, mark in r.watermarks.items():
                note = r.failed_sources.get(source) or ("read in full (no watermark yet)"
                                                        if source in r.full_sources else "")
                table.add_row(source, str(r.changed_by_source.get(source, 0)), mark or "—", note)
            out.print(table)
        if r.untracked:
            out.print(f"Not tracked incrementally (no update timestamp in the mapping): {', '.join(r.untracked)}",
                      markup=False)
    for cid, name in r.failed[:10]:
        err.print(f"failed {cid}: {name}", markup=False)
    if r.failures > 10:
        err.print(f"… {r.failures - 10} more failed reads", markup=False)


def _caller(as_: str | None, r: Ready, whole_book: bool = False) -> tuple[Principal | None, ReadScope | None]:
    """The principal a refresh runs for and its read scope (``--as``, else ``CUSTCTX_ROLE``), or
    (None, None): the refresh job. Exits 1 when the role may not trigger a refresh — or, for the
    whole book, when its row filter hides customers (it would refresh only what it sees)."""
    from tools.access.policy import Refused
    from tools.context.scope import ReadScope

    if not as_ and not r.settings.role:
        return None, None
    access = access_or_exit(as_, r.settings)
    try:
        access.role.require_refresh()
    except Refused as exc:
        raise fail(str(exc), 1) from None
    if whole_book and access.filters_rows:
        raise fail(f"the {access.role.name} role sees only some customers: refresh them one by one "
                   "(--customer) or as a role that sees every customer", 1)
    return access.principal, ReadScope.build(r.settings, r.clock, access=access, memory=r.memory, index=r.index)


def _finish(r: RefreshReport, format: Format) -> None:
    _print(r, format)
    if r.failures or r.failed_sources:
        raise typer.Exit(INCOMPLETE)


@commands.command()
def refresh(
    full: Annotated[bool, typer.Option("--full", help="Every slice of every active customer.")] = False,
    incremental: Annotated[bool, typer.Option(
        "--incremental", help="Only customers whose source rows changed since the last run (watermarks).")] = False,
    customer: Annotated[str | None, typer.Option(
        "--customer", "-c", help="One customer (email, domain, id or name): all its slices.")] = None,
    concurrency: Annotated[int, typer.Option(
        min=1, max=64, help="Customers read one by one at once (what a bulk read leaves).")] = 4,
    workers: Annotated[int | None, typer.Option(
        min=1, max=64, help="Worker processes [default: CUSTCTX_REFRESH_WORKERS, or one per core "
                            "(up to 4) from 2,000 customers on].")] = None,
    format: FormatOpt = Format.markdown,
    as_: AsOpt = None,
) -> None:
    """Refresh long-term memory from the sources: --full, --incremental or --customer REF."""
    from agent.bootstrap import ready
    from tools.book import BookError
    from tools.context.read import resolve
    from tools.refresh.jobs import refresh_customer, refresh_full, refresh_incremental

    if sum((full, incremental, customer is not None)) != 1:
        raise fail("give exactly one of --full, --incremental or --customer REF", 2)
    with progress_bar() as update:
        r = ready(progress=update, memory=True)
    assert r.memory is not None
    caller, scope = _caller(as_, r, whole_book=customer is None)
    try:
        if customer is not None:
            ref, _ = resolve_or_exit(lambda q: resolve(scope, q) if scope else r.index.resolve(q), customer, format)
            report = refresh_customer(r.settings, r.memory, ref.customer_id, caller=caller)
        else:
            with progress_bar() as update:
                run = refresh_full if full else refresh_incremental
                report = run(r.settings, r.memory, concurrency=concurrency, progress=update, workers=workers,
                             caller=caller)
    except BookError as exc:
        raise fail(str(exc), 1) from None
    _finish(report, format)


@commands.command()
def event(
    kind: Annotated[str, typer.Argument(help="What happened, e.g. ticket.created, invoice.paid, deal.updated.")],
    customer: Annotated[str, typer.Option("--customer", "-c", help="The customer it happened to.")],
    format: FormatOpt = Format.markdown,
    as_: AsOpt = None,
) -> None:
    """An event happened for a customer: refresh the slices it invalidates at once."""
    from agent.bootstrap import ready
    from tools.context.assembly import UnknownSlice
    from tools.context.read import resolve
    from tools.refresh.jobs import event_slices, refresh_event

    try:
        event_slices(kind)
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    with progress_bar() as update:
        r = ready(progress=update, memory=True)
    assert r.memory is not None
    caller, scope = _caller(as_, r)
    ref, _ = resolve_or_exit(lambda q: resolve(scope, q) if scope else r.index.resolve(q), customer, format)
    try:
        report = refresh_event(r.settings, r.memory, kind, ref.customer_id, caller=caller)
    except UnknownSlice as exc:  # pragma: no cover - EVENTS names known slices only
        raise fail(str(exc), 2) from None
    _finish(report, format)
