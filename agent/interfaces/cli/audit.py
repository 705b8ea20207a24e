"""``custctx audit``: read the audit log (one record per slice read, newest first)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from typing import Annotated

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

_CUSTOMER_ID = re.compile(r"^c_[0-9a-f]{12}$")

commands = typer.Typer()


@commands.command()
def audit(
    customer: Annotated[str | None, typer.Option(
        "--customer", "-c", help="Only this customer's records (email, domain, id or name).")] = None,
    since: Annotated[str | None, typer.Option(
        help="Only records since an ISO date/time (UTC) or an age: 30m, 1h, 2d, 1w.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many records (newest first).")] = 50,
    format: FormatOpt = Format.markdown,
    as_: AsOpt = None,
) -> None:
    """Read the audit log of this tenant: who read which slice of which customer, the decision
    (allowed / masked / denied), the outcome and the latency. Needs a role with audit_log."""
    from agent.bootstrap import ready
    from tools.access.audit import audit_log, parse_since

    try:
        since_at = parse_since(since) if since else None
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    with progress_bar() as update:
        r = ready(progress=update)
    access = access_or_exit(as_, r.settings)
    if not access.role.audit_log:
        raise fail(f"the {access.role.name} role may not read the audit log (docs/ACCESS.md)", 1)
    customer_id = None
    if customer:
        # The audit log keeps ids of customers that may since have left the index.
        customer_id = customer if _CUSTOMER_ID.match(customer) else resolve_or_exit(r.index.resolve, customer)[0].customer_id
    records = audit_log(r.settings.state_db_url).query(access.tenant, customer_id, since_at, limit)
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
