"""``custctx audit``: read the audit log (one record per slice read, newest first), verify its
hash chains (``audit verify``) and start a new chain after a break (``audit restart-chain``)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any

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
    from tools.access.audit import ChainHead, ChainReport
    from tools.access.gate import Access
    from tools.settings import Settings

_CUSTOMER_ID = re.compile(r"^c_[0-9a-f]{12}$")
EXIT_BROKEN = 5  # `audit verify`: a chain is broken (1: an error, 2: a bad option, as everywhere)

commands = typer.Typer()
group = typer.Typer()
commands.add_typer(group, name="audit")


@group.callback(invoke_without_command=True)
def audit(
    ctx: typer.Context,
    customer: Annotated[str | None, typer.Option(
        "--customer", "-c", help="Only this customer's records (email, domain, id or name).")] = None,
    since: Annotated[str | None, typer.Option(
        help="Only records since an ISO date/time (UTC) or an age: 30m, 1h, 2d, 1w.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many records (newest first).")] = 50,
    format: FormatOpt = Format.markdown,
    as_: AsOpt = None,
) -> None:
    """Read the audit log of this tenant; `audit verify` checks that none of it was tampered with.

    Who read which slice of which customer, the decision (allowed / masked / denied), the
    outcome and the latency, newest first. Needs a role with audit_log."""
    if ctx.invoked_subcommand is not None:
        return
    from agent.bootstrap import ready
    from tools.access.audit import audit_log_for, parse_since

    try:
        since_at = parse_since(since) if since else None
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    with progress_bar() as update:
        r = ready(progress=update)
    access = _auditor(as_, r.settings)
    customer_id = None
    if customer:
        # The audit log keeps ids of customers that may since have left the index.
        customer_id = customer if _CUSTOMER_ID.match(customer) else resolve_or_exit(r.index.resolve, customer)[0].customer_id
    records = audit_log_for(r.settings).query(access.tenant, customer_id, since_at, limit)
    if format is Format.json:
        print(json.dumps([{**asdict(x), "at": x.at.isoformat() + "Z"} for x in records], indent=2,
                         ensure_ascii=False))
        return
    names: dict[str, str] = {}
    lines = ["| time (UTC) | interface | principal | customer | slice | decision | outcome | latency | detail |",
             "|---|---|---|---|---|---|---|---|---|"]
    for x in records:
        if x.customer_id not in names:
            ref = r.index.get(x.customer_id)
            names[x.customer_id] = f"{ref.name} ({x.customer_id})" if ref else x.customer_id
        lines.append(f"| {x.at:%Y-%m-%d %H:%M:%S} | {x.interface} | {x.role}:{x.user_name} | {names[x.customer_id]} "
                     f"| {x.slice} | {x.decision} | {x.outcome} | {x.latency_ms:.1f} ms | {x.detail or ''} |")
    out.print("\n".join(lines), markup=False)
    out.print(f"{len(records)} record{'s' if len(records) != 1 else ''} (tenant {access.tenant}"
              f"{', newest first, limit ' + str(limit) if len(records) == limit else ''}).", markup=False)


@group.command()
def verify(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's chain (default: every tenant's).")] = None,
    format: FormatOpt = Format.markdown,
    as_: AsOpt = None,
) -> None:
    """Check the audit log's hash chains and anchor. Exit 0: intact; 5: broken; 1: an error.

    Walks every tenant's chain (or one) and names the first record missing, altered or forged,
    by sequence number and time; prints each chain's head hash (keep a copy elsewhere)."""
    from tools.access.audit import AuditChainBroken, audit_log_for, log_identity
    from tools.settings import Settings

    settings = Settings()
    _auditor(as_, settings)
    log = audit_log_for(settings)
    try:
        reports = log.verify(tenant)
    except AuditChainBroken as exc:  # the anchor itself is unreadable
        raise fail(str(exc), EXIT_BROKEN) from None
    intact = all(r.intact for r in reports)
    where = {"log": log_identity(log.engine), "anchor": str(log.anchor.path) if log.anchor else None}
    if format is Format.json:
        print(json.dumps({**where, "intact": intact, "tenants": [_report_json(r) for r in reports]}, indent=2,
                         ensure_ascii=False))
    else:
        out.print(f"audit log {where['log']} (anchor {where['anchor']})", markup=False)
        for r in reports:
            out.print(_report_text(r), markup=False)
        if not reports:
            out.print("no audit records yet.", markup=False)
    if not intact:
        raise typer.Exit(EXIT_BROKEN)


@group.command("restart-chain")
def restart_chain(
    tenant: Annotated[str, typer.Option(help="The tenant whose chain to restart.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the chain_restart record).")],
    as_: AsOpt = None,
) -> None:
    """Start a new chain after a break that stops appends, on purpose and on record.

    For when records the anchor holds are gone (a dropped or emptied table): one chain_restart
    record, linked to the anchored head, names who and why; reads are recorded again, and
    verify keeps reporting the lost records (exit 5)."""
    from tools.access.audit import AuditRecord, audit_log_for
    from tools.settings import Settings
    from tools.sources.base import utcnow

    settings = Settings()
    access = _auditor(as_, settings)
    log = audit_log_for(settings)
    if all(r.intact for r in log.verify(tenant)):
        raise fail(f"the audit log of tenant {tenant!r} is intact: nothing to restart", 1)
    p = access.principal
    by = AuditRecord(at=utcnow(), tenant=tenant, user_name=p.user, role=p.role, scope=p.scope, interface=p.interface,
                     customer_id="-", slice="audit.chain", decision="allowed", outcome="chain_restart", latency_ms=0.0)
    head = log.restart_chain(tenant, reason, by)
    out.print(f"tenant {tenant}: new chain from seq {head.seq} (hash {head.hash}); "
              "`custctx audit verify` keeps reporting the records lost before it.", markup=False)


def _auditor(as_: str | None, settings: Settings) -> Access:
    access = access_or_exit(as_, settings)
    if not access.role.audit_log:
        raise fail(f"the {access.role.name} role may not read the audit log (docs/ACCESS.md)", 1)
    return access


def _head_json(h: ChainHead | None) -> dict[str, Any] | None:
    return None if h is None else {"seq": h.seq, "hash": h.hash, "at": h.at.isoformat() + "Z" if h.at else None}


def _report_json(r: ChainReport) -> dict[str, Any]:
    problems = [{"seq": p.seq, "at": p.at.isoformat() + "Z" if p.at else None, "kind": p.kind, "message": p.message}
                for p in r.problems]
    return {"tenant": r.tenant, "intact": r.intact, "records": r.records, "unchained": r.unchained,
            "head": _head_json(r.head), "anchor": _head_json(r.anchor),
            "first_problem": problems[0] if problems else None, "problems": problems}


def _report_text(r: ChainReport) -> str:
    head = f"head seq {r.head.seq} at {r.head.at:%Y-%m-%d %H:%M:%S}, hash {r.head.hash}" if r.head and r.head.at \
        else "no records"
    anchor = f"anchor seq {r.anchor.seq}" if r.anchor else "no anchor"
    older = f"; {r.unchained} older records from before the chain (not verifiable)" if r.unchained else ""
    if r.intact:
        return f"tenant {r.tenant}: intact — {_n(r.records, 'record')}, {head}; {anchor}{older}"
    lines = [f"tenant {r.tenant}: BROKEN — {r.problems[0].message}",
             f"  {_n(len(r.problems), 'problem')}; {_n(r.records, 'record')}, {head}; {anchor}{older}"]
    lines += [f"  - seq {p.seq} ({p.kind}): {p.message}" for p in r.problems[1:10]]
    if len(r.problems) > 10:
        lines.append(f"  … and {len(r.problems) - 10} more")
    return "\n".join(lines)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
