"""Listing the book through a principal's access gate (``tools.booktable``: row filter, masks, audit)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import select

from tools.access.gate import Access
from tools.access.policy import marker
from tools.booktable.table import (
    BookQueryError,
    book_engine,
    book_risk,
    book_size,
    book_traits,
    clock_date,
)
from tools.settings import Settings
from tools.slices import CrmAccount

#: Health and the churn score are shown only to a role that may read every one of these: the account's
#: risk indicators' slices and the relationship signals' (a role that may not read the conversations,
#: finance by default, sees them masked — its own context derives them without the conversations).
HEALTH_INPUTS = ("crm.account", "billing.status", "product.usage", "support.summary", "crm.contacts",
                 "email.threads", "calendar.meetings", "calls.highlights")
SORTS = ("churn", "renewal", "name", "mrr")
Sort = Literal["churn", "renewal", "name", "mrr"]
#: Longest listing returned at once.
MAX_LIMIT = 1_000


@dataclass
class BookQuery:
    """What to list: every filter is optional (None: any)."""

    risk: str | None = None
    tier: str | None = None
    owner: str | None = None
    health: str | None = None
    renewal_within_days: int | None = None
    sort: Sort = "churn"
    limit: int = 100

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in (("risk", self.risk), ("tier", self.tier), ("owner", self.owner),
                                         ("health", self.health), ("renewal_within", self.renewal_within_days))
                 if v is not None]
        return ", ".join(parts + [f"sort={self.sort}", f"limit={self.limit}"])


@dataclass
class BookEntry:
    """One customer of a listing, as the caller's role may see it."""

    customer_id: str
    name: str
    tier: str | None
    mrr: float | str | None
    health: str | None
    churn_score: int | str | None
    risk_indicators: list[str]  # the account's (billing, usage, support, CRM), or ["healthy"]
    renewal_date: date | str | None
    owner: str | None
    segment: str | None
    status: str | None
    last_touch: datetime | str | None
    masked_fields: list[str] = field(default_factory=list)
    relationship_risks: list[str] = field(default_factory=list)  # the relationship signals' (SIGNALS.md)


@dataclass
class BookListing:
    entries: list[BookEntry]
    query: BookQuery
    materialised: int  # rows the book table holds for the tenant
    truncated: bool = False
    sorted_by: str = ""  # the order applied: the query's, or name when the role sees its key masked

    def as_dict(self) -> dict[str, Any]:
        def enc(v: Any) -> Any:
            return v.isoformat() if isinstance(v, date | datetime) else v

        return {"customers": [{k: enc(v) for k, v in e.__dict__.items()} for e in self.entries],
                "count": len(self.entries), "truncated": self.truncated, "query": self.query.__dict__,
                "sorted_by": self.sorted_by or self.query.sort, "book_size": self.materialised}


def parse_within(text: str | None) -> int | None:
    """``30d``, ``2w`` or ``30`` → days (BookQueryError otherwise)."""
    if text is None or str(text).strip() == "":
        return None
    t = str(text).strip().lower()
    unit = {"d": 1, "w": 7}.get(t[-1:], None)
    number = t[:-1] if unit else t
    if not number.isdigit() or len(number) > 5:
        raise BookQueryError(f"--renewal-within takes days such as 30d, 2w or 30, not {str(text)[:40]!r}")
    return int(number) * (unit or 1)


def check_query(q: BookQuery) -> None:
    from tools.traits import RISK_ORDER

    if q.sort not in SORTS:
        raise BookQueryError(f"unknown sort {str(q.sort)[:40]!r}; sort by one of {', '.join(SORTS)}")
    if q.tier is not None and q.tier not in ("enterprise", "mid_market", "self_serve"):
        raise BookQueryError(f"unknown tier {q.tier[:40]!r}; tiers: enterprise, mid_market, self_serve")
    if q.risk is not None and q.risk not in RISK_ORDER:
        raise BookQueryError(f"unknown risk {q.risk[:40]!r}; risks: {', '.join(RISK_ORDER)}")
    if q.health is not None and q.health not in ("healthy", "needs attention", "at risk", "churned"):
        raise BookQueryError(f"unknown health {q.health[:40]!r}; healthy, needs attention, at risk or churned")
    if not 1 <= q.limit <= MAX_LIMIT:
        raise BookQueryError(f"limit is 1 to {MAX_LIMIT}, not {q.limit}")


def _visible(access: Access | None, slice_name: str | None, fname: str | None = None) -> bool:
    if access is None or slice_name is None:
        return True
    return all(access.allows(n) for n in slice_name.split(",") if n) and (
        fname is None or fname not in access.role.mask.get(slice_name, ()))


#: One stored risk: (name, kind, the slices a role must read to see it, comma-separated).
Risk = tuple[str, str, str]


def _entry(r: Any, risks: Sequence[Risk], access: Access | None) -> BookEntry:
    hidden = marker(access.role.name) if access else ""
    masked: list[str] = []

    def show(value: Any, name: str, slice_name: str | None, fname: str | None = None) -> Any:
        if value is None or _visible(access, slice_name, fname):
            return value
        masked.append(name)
        return hidden

    health_ok = all(_visible(access, n) for n in HEALTH_INPUTS)
    account = [(name, s) for name, kind, s in risks if kind == "account"]
    related = [(name, s) for name, kind, s in risks if kind == "relationship"]
    shown_risks = [name for name, s in account if _visible(access, s)]
    if len(shown_risks) < len(account):
        masked.append("risk_indicators")
    shown_related = [name for name, s in related if _visible(access, s)]
    if len(shown_related) < len(related):
        masked.append("relationship_risks")
    entry = BookEntry(
        customer_id=r.customer_id, name=r.name,
        tier=show(r.tier, "tier", r.tier_source, "mrr"), mrr=show(r.mrr, "mrr", r.tier_source, "mrr"),
        health=r.health if health_ok else hidden, churn_score=r.churn_score if health_ok else hidden,
        risk_indicators=shown_risks or (["healthy"] if health_ok else []),
        renewal_date=show(r.renewal_date, "renewal_date", "crm.account", "renewal_date"),
        owner=show(r.owner, "owner", "crm.account", "owner"),
        segment=show(r.segment, "segment", "crm.account", "segment"),
        status=show(r.status, "status", "crm.account", "status"),
        last_touch=show(r.last_touch, "last_touch", r.last_touch_slice), masked_fields=masked,
        relationship_risks=shown_related)
    if not health_ok:
        entry.masked_fields += ["health", "churn_score"]
    return entry


def _matches(e: BookEntry, q: BookQuery, today: date, hidden: str) -> bool:
    """The filters, on what the caller sees (a masked value never matches)."""
    if q.risk is not None and q.risk not in e.risk_indicators and q.risk not in e.relationship_risks:
        return False
    if q.tier is not None and e.tier != q.tier:
        return False
    if q.health is not None and e.health != q.health:
        return False
    if q.owner is not None and (e.owner in (None, hidden)
                                or str(e.owner).casefold() != q.owner.split("@")[0].strip().casefold()):
        return False
    if q.renewal_within_days is not None:
        if not isinstance(e.renewal_date, date):
            return False
        days = (e.renewal_date - today).days
        if not 0 <= days <= q.renewal_within_days:
            return False
    return True


def sort_for(q: BookQuery, access: Access | None) -> Sort:
    """The order the listing is in: the one asked for, or by name when the role sees the sort key
    masked (an order by a hidden value would reveal it)."""
    hidden = {"churn": not all(_visible(access, n) for n in HEALTH_INPUTS),
              "renewal": not _visible(access, "crm.account", "renewal_date"),
              "mrr": not (_visible(access, "crm.account", "mrr") and _visible(access, "billing.status", "mrr"))}
    return "name" if hidden.get(q.sort) else q.sort


def _statement(tenant: str, q: BookQuery, access: Access | None, today: date) -> Any:
    t = book_traits.c
    stmt = select(book_traits).where(t.tenant == tenant)
    if q.tier is not None:
        stmt = stmt.where(t.tier == q.tier)
    if q.health is not None:
        stmt = stmt.where(t.health == q.health)
    if q.risk is not None:
        r = book_risk.c
        stmt = stmt.where(t.customer_id.in_(select(r.customer_id).where(r.tenant == tenant, r.risk == q.risk)))
    if q.renewal_within_days is not None:
        stmt = stmt.where(t.renewal_date >= today, t.renewal_date <= today + timedelta(days=q.renewal_within_days))
    rows = access.role.rows if access is not None else None
    if rows is not None and access is not None and "owner" in rows.require:  # pushed down; judged exactly below
        owners = [w.format(user=access.principal.user, tenant=tenant) for w in rows.require["owner"]]
        stmt = stmt.where(t.owner.in_(owners))
    order = {"churn": (t.churn_score.desc(), t.name), "renewal": (t.renewal_date, t.name),
             "name": (t.name,), "mrr": (t.mrr.desc(), t.name)}[sort_for(q, access)]
    return stmt.order_by(*order, t.customer_id)


def find_customers(settings: Settings, q: BookQuery, access: Access | None = None) -> BookListing:
    """The book as ``access``'s principal may see it, filtered and sorted (None: unrestricted).

    Raises:
        BookQueryError: an unknown sort, tier, risk or health, or a limit out of range.
    """
    check_query(q)
    tenant = access.tenant if access is not None else settings.tenant
    today = clock_date(settings)
    hidden = marker(access.role.name) if access is not None else ""
    eng = book_engine(settings)
    out: list[BookEntry] = []
    truncated = False
    with eng.connect() as conn:
        result = conn.execution_options(yield_per=500).execute(_statement(tenant, q, access, today))
        for part in result.partitions():
            ids = [r.customer_id for r in part]
            rc = book_risk.c
            risks: dict[str, list[Risk]] = {}
            with eng.connect() as rconn:
                for cid, name, kind, inputs in rconn.execute(select(rc.customer_id, rc.risk, rc.kind, rc.inputs).where(
                        rc.tenant == tenant, rc.customer_id.in_(ids))):
                    risks.setdefault(cid, []).append((name, kind, inputs))
            for r in part:
                if access is not None and access.filters_rows:
                    account = CrmAccount.model_validate_json(r.account) if r.account else None
                    if not access.role.sees(account, access.principal.user, tenant)[0]:
                        continue
                e = _entry(r, _ordered(risks.get(r.customer_id, [])), access)
                if _matches(e, q, today, hidden):
                    if len(out) == q.limit:
                        truncated = True
                        break
                    out.append(e)
            if truncated:
                break
    listing = BookListing(entries=out, query=q, materialised=book_size(settings, tenant), truncated=truncated,
                          sorted_by=sort_for(q, access))
    _audit(access, listing)
    return listing


def _ordered(risks: list[Risk]) -> list[Risk]:
    from tools.traits import RISK_ORDER

    rank = {n: i for i, n in enumerate(RISK_ORDER)}
    return sorted(risks, key=lambda x: rank.get(x[0], len(rank)))


def _audit(access: Access | None, listing: BookListing) -> None:
    if access is None:
        return
    with access.batch():
        access.record("*", "book", "allowed", "listed", 0.0,
                      f"book listing ({listing.query.describe()}): {len(listing.entries)} customers")
        for e in listing.entries:
            access.record(e.customer_id, "book", "masked" if e.masked_fields else "allowed", "listed", 0.0,
                          f"masked: {', '.join(e.masked_fields)}" if e.masked_fields else None)


def book_json(listing: BookListing) -> str:
    return json.dumps(listing.as_dict(), indent=2, ensure_ascii=False)
