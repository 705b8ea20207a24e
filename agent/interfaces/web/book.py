"""The book: accounts by risk, tier, owner and renewal window, as the user may see them (the book
table, through the access gate: row filter, masks, audit)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from agent.interfaces.service import ContextService, NotAvailable
from agent.interfaces.web.render import WebError, call, page
from agent.interfaces.web.session import User
from tools.access.principal import Principal
from tools.traits import RISK_ORDER

router = APIRouter()
TIERS = ("enterprise", "mid_market", "self_serve")
#: every risk the book can filter on: account risk indicators, then relationship risks (tools.signals)
RISKS = RISK_ORDER
SORTS = ("churn", "renewal", "name", "mrr")


def _book(s: ContextService, principal: Principal, filters: dict[str, str | None], sort: str) -> dict[str, Any]:
    try:
        return s.find_customers(**filters, sort=sort, limit=200, principal=principal)
    except ImportError as exc:  # a build without the book table
        raise NotAvailable(f"the book is not available in this build ({exc})") from None


@router.get("/book", response_class=HTMLResponse, include_in_schema=False)
async def book(request: Request, user: User, risk: str = "", tier: str = "", owner: str = "",
               renewal_within: str = "", sort: str = "churn") -> Response:
    """The book filtered by risk, tier, owner and renewal window (e.g. 30d), sorted by churn risk."""
    filters = {"risk": risk.strip() or None, "tier": tier.strip() or None, "owner": owner.strip() or None,
               "renewal_within": renewal_within.strip() or None}
    form = {k: v or "" for k, v in filters.items()} | {"sort": sort}
    try:
        listing = await call(request, lambda s: _book(s, user.principal, filters, sort))
    except WebError as exc:
        if exc.status not in (422, 501):
            raise
        return page(request, "book.html", exc.status, listing=None, problem=exc, form=form, tiers=TIERS,
                    risks=RISKS, sorts=SORTS)
    return page(request, "book.html", listing=listing, problem=None, form=form, tiers=TIERS, risks=RISKS,
                sorts=SORTS)
