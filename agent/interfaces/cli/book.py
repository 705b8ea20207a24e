"""``custctx book``: the whole book at a glance, from the materialised traits (tools/booktable.py).

Exit codes: 0 listed (possibly nothing); 1 a principal the policy does not know, or no book yet;
2 a bad option.
Listed as the principal of ``--as`` (else ``CUSTCTX_ROLE``, else the local admin): its row
filter applies, fields from slices it may not read are masked, and the listing is audited.
The table is filled by every refresh (``custctx refresh``, ``custctx serve worker``, events
and webhooks); the first listing of a tenant that has none builds it with a full refresh when
the principal's role may refresh (exit 1 with what to run otherwise).
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated

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
)

commands = typer.Typer()


class SortBy(StrEnum):
    churn = "churn"
    renewal = "renewal"
    name = "name"
    mrr = "mrr"


@commands.command()
def book(
    risk: Annotated[str | None, typer.Option(
        help="Accounts with this risk: a risk indicator (billing_issue, ...) or a relationship risk "
             "(renewal_at_risk, negative_sentiment, champion_cold, engagement_declining, competitor_mentioned).")]
    = None,
    tier: Annotated[str | None, typer.Option(help="enterprise, mid_market or self_serve.")] = None,
    owner: Annotated[str | None, typer.Option(help="Accounts this CRM owner holds, e.g. dana.scully.")] = None,
    health: Annotated[str | None, typer.Option(help="healthy, 'needs attention', 'at risk' or churned.")] = None,
    renewal_within: Annotated[str | None, typer.Option(
        "--renewal-within", help="Renewing within this many days from today, e.g. 30d or 2w.")] = None,
    sort: Annotated[SortBy, typer.Option(help="churn (highest score first), renewal (soonest), name, mrr.")]
    = SortBy.churn,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many accounts.")] = 100,
    format: FormatOpt = Format.markdown,
    as_: AsOpt = None,
) -> None:
    """The book of accounts: tier, health, risks (the account's and the relationship's), churn score, renewal,
    owner, last touch; filtered and sorted."""
    from agent.bootstrap import ready
    from tools.booktable import (
        BookQuery,
        BookQueryError,
        book_size,
        check_query,
        find_customers,
        parse_within,
    )
    from tools.refresh.jobs import refresh_full

    try:
        query = BookQuery(risk=risk, tier=tier, owner=owner, health=health,
                          renewal_within_days=parse_within(renewal_within), sort=sort.value, limit=limit)
        check_query(query)
    except BookQueryError as exc:
        raise fail(str(exc), 2) from None
    with progress_bar() as update:
        r = ready(progress=update, memory=True)
    assert r.memory is not None
    access = access_or_exit(as_, r.settings)
    if book_size(r.settings, access.tenant) == 0:  # first use: built once, by a role that may refresh
        if not access.role.refresh:
            raise fail(f"the book of tenant {access.tenant} has not been built yet: run `custctx refresh --full` "
                       "or `custctx serve worker` (as a role that may refresh)", 1)
        with progress_bar() as update:
            refresh_full(r.settings, r.memory.for_tenant(access.tenant), progress=update)
    listing = find_customers(r.settings, query, access)
    if format is Format.json:
        print(json.dumps(listing.as_dict(), indent=2, ensure_ascii=False))
        return
    from rich.table import Table

    table = Table("account", "tier", "health", "churn", "risks", "relationship risks", "renewal", "owner", "segment",
                  "last touch", box=None, pad_edge=False)
    for e in listing.entries:
        table.add_row(e.name, _cell(e.tier), _cell(e.health), _cell(e.churn_score),
                      ", ".join(e.risk_indicators) or "—", ", ".join(e.relationship_risks) or "—",
                      _cell(e.renewal_date), _cell(e.owner), _cell(e.segment),
                      _cell(e.last_touch)[:16])
    out.print(table)
    more = " (more match: raise --limit)" if listing.truncated else ""
    if listing.sorted_by != query.sort:
        more += f"; sorted by {listing.sorted_by}: your role sees {query.sort} masked"
    err.print(f"{len(listing.entries)} account{'s' if len(listing.entries) != 1 else ''}{more}", markup=False)


def _cell(v: object) -> str:
    if v is None or v == "":
        return "—"
    return v.isoformat() if hasattr(v, "isoformat") else str(v)
