"""The book of accounts: every customer of the identity index with its CRM owner,
segment and status, for work over many accounts (batch account reviews).

Reading it stays cheap and bounded at 100 000 customers: the identity index is read
in pages of :data:`PAGE` customers in name order (keyset pagination, one short read
per page, so no read transaction stays open on the state database while a caller
spends hours on the accounts), and each page is completed with one pushed-down
query per source — the page's CRM accounts (``id IN (...)`` through the CRM
mapping) and, for the customers the CRM cannot place (no record, or no status or
MRR), their billing subscriptions. Memory holds one page, whatever the size of the
book; the database does the lookups by primary key.

Status: the CRM's (``active`` / ``churned`` / ``prospect``); a customer the CRM does
not hold takes it from billing (a canceled subscription is ``churned``, any other
``active``, as for Hooli); ``None`` when neither source knows. Segment: the CRM's
segment field (the fixtures hold ``enterprise`` / ``mid_market`` / ``self_serve``;
Salesforce's ``Mid Market`` reads as ``mid_market``), else the tier derived from MRR
exactly as ``tools.traits`` derives it (CRM MRR, else billing). The identity index
must have been built (``agent.bootstrap.ready`` does it).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.exc import SQLAlchemyError

from tools.guard import summarize
from tools.identity import identity_customer
from tools.mapping.conversions import MappingError
from tools.mapping.engine import Mapping
from tools.mapping.loader import load_mapping
from tools.settings import Settings, Thresholds
from tools.sources.billing import BillingReader
from tools.sources.registry import engine_for
from tools.traits import tier_for

#: Customers read from the identity index (and looked up in each source) at a time.
PAGE = 1_000
_CRM_FIELDS = ("id", "segment", "owner", "status", "mrr")
_SUB_FIELDS = ("customer_id", "status", "amount", "interval", "created")

NEEDS_CRM = "--{option} needs a connected CRM source (account {what} come from the CRM); connect one or use --all."
SOURCE_FAILED = "Could not read the {source} source to list accounts: {error}"
NO_INDEX = "The identity index could not be read ({error}); run any custctx command once to build it."


class BookError(ValueError):
    """The book cannot be listed as asked; the message is one line meant for a person."""


@dataclass(frozen=True)
class AccountEntry:
    """One account of the book: enough to select it, name its files and review it."""

    customer_id: str
    name: str
    segment: str | None  # the CRM segment, else the tier derived from MRR (CRM, else billing)
    owner: str | None  # the CRM owner (e.g. ``dana.scully``)
    status: str | None  # active | churned | prospect | None (no CRM nor billing status)


@dataclass(frozen=True)
class _Crm:
    segment: str | None
    owner: str | None
    status: str | None
    mrr: float | None


@dataclass(frozen=True)
class _Billing:
    status: str | None  # active | churned | None (no subscription)
    mrr: float | None


def normalize_segment(value: str) -> str:
    """``Mid Market``, ``mid-market`` and ``MID_MARKET`` all become ``mid_market``."""
    folded = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode().casefold()
    return re.sub(r"[^a-z0-9]+", "_", folded).strip("_")


def _owner_key(value: str) -> str:
    return value.strip().casefold()


def list_accounts(settings: Settings, *, segment: str | None = None, owner: str | None = None,
                  include_churned: bool = False) -> Iterator[AccountEntry]:
    """Every customer of the identity index, in name order, filtered; read lazily, page by page.

    Args:
        settings: Where the identity index and the sources are.
        segment: Keep accounts whose CRM segment or derived tier (enterprise / mid_market /
            self_serve) is this, case- and punctuation-insensitive (``"Mid Market"`` works).
        owner: Keep accounts whose CRM owner is this (``dana.scully``; a full email matches
            by its local part), case-insensitive.
        include_churned: Also list churned accounts (CRM status churned, or a canceled
            billing subscription and no CRM record).

    Raises:
        BookError: at once when a filter needs the CRM and none is connected or a mapping
            is broken; while iterating when a source or the identity index cannot be read.
    """
    crm_mapping = _mapping(settings, "crm")
    if crm_mapping is None:
        for option, what, value in (("owner", "owners", owner), ("segment", "segments", segment)):
            if value is not None:
                raise BookError(NEEDS_CRM.format(option=option, what=what))
    want_owner = _owner_key(owner) if owner is not None else None
    if want_owner and "@" in want_owner:
        want_owner = want_owner.split("@", 1)[0]  # CRM owners are email local parts
    return _accounts(settings, crm_mapping, _mapping(settings, "billing"),
                     normalize_segment(segment) if segment is not None else None, want_owner, include_churned)


def _accounts(settings: Settings, crm_mapping: Mapping | None, billing_mapping: Mapping | None,
              want_segment: str | None, want_owner: str | None, include_churned: bool) -> Iterator[AccountEntry]:
    for page in _identity_pages(settings):
        crm = _crm_page(settings, crm_mapping, [a["crm"] for _, _, a in page if "crm" in a])
        billing = _billing_page(settings, billing_mapping,
                                [a["billing"] for _, _, a in page if "billing" in a and _unplaced(crm, a)])
        for customer_id, name, anchors in page:
            entry, tier = _entry(customer_id, name, crm.get(anchors.get("crm", "")),
                                 billing.get(anchors.get("billing", "")), settings.thresholds)
            if entry.status == "churned" and not include_churned:
                continue
            if want_owner is not None and _owner_key(entry.owner or "") != want_owner:
                continue
            if want_segment is not None and want_segment not in {tier, normalize_segment(entry.segment or "")}:
                continue
            yield entry


def count_accounts(settings: Settings, **filters: Any) -> int:
    """How many accounts :func:`list_accounts` yields with these filters (one cheap pass)."""
    return sum(1 for _ in list_accounts(settings, **filters))


def _entry(customer_id: str, name: str, crm: _Crm | None, billing: _Billing | None,
           thresholds: Thresholds) -> tuple[AccountEntry, str | None]:
    """The account and its derived tier (as ``tools.traits`` derives it: CRM MRR, else billing)."""
    mrr = crm.mrr if crm and crm.mrr is not None else (billing.mrr if billing else None)
    tier = tier_for(mrr, thresholds) if mrr is not None else None
    status = (crm.status if crm else None) or (billing.status if billing else None)
    return AccountEntry(customer_id=customer_id, name=name, segment=(crm.segment if crm else None) or tier,
                        owner=crm.owner if crm else None, status=status), tier


def _unplaced(crm: dict[str, _Crm], anchors: dict[str, str]) -> bool:
    """The CRM does not say this customer's status or MRR: billing has to."""
    record = crm.get(anchors.get("crm", ""))
    return record is None or record.status is None or record.mrr is None


def _mapping(settings: Settings, source: str) -> Mapping | None:
    cfg = settings.source(source)
    if not cfg.url:
        return None
    try:
        return load_mapping(cfg.mapping or source)
    except MappingError as exc:
        raise BookError(SOURCE_FAILED.format(source=source, error=exc)) from None


def _identity_pages(settings: Settings) -> Iterator[list[tuple[str, str, dict[str, str]]]]:
    """(customer id, name, anchors) in name order, PAGE at a time, each page its own short read."""
    c = identity_customer.c
    after: tuple[str, str] | None = None
    while True:
        stmt = select(c.customer_id, c.name, c.name_norm, c.anchors).order_by(c.name_norm, c.customer_id).limit(PAGE)
        if after is not None:
            stmt = stmt.where(or_(c.name_norm > after[0], and_(c.name_norm == after[0], c.customer_id > after[1])))
        try:
            with engine_for(settings.state_db_url).connect() as conn:
                rows = conn.execute(stmt).all()
        except SQLAlchemyError as exc:
            raise BookError(NO_INDEX.format(error=summarize(exc))) from None
        if not rows:
            return
        yield [(r.customer_id, r.name, json.loads(r.anchors)) for r in rows]
        if len(rows) < PAGE:
            return
        after = (rows[-1].name_norm, rows[-1].customer_id)


def _crm_page(settings: Settings, mapping: Mapping | None, ids: Sequence[str]) -> dict[str, _Crm]:
    if mapping is None or not ids:
        return {}
    account = mapping.entity("account")
    fields = [f for f in _CRM_FIELDS if account.has(f)]
    rows = _read(settings, "crm", lambda conn: account.rows(conn, where=lambda p: [p.in_("id", ids)], fields=fields))
    out = {}
    for r in rows:
        status = r.get("status")
        out[str(r["id"])] = _Crm(segment=r.get("segment") or None, owner=r.get("owner") or None,
                                 status=str(status).lower() if status else None, mrr=r.get("mrr"))
    return out


def _billing_page(settings: Settings, mapping: Mapping | None, ids: Sequence[str]) -> dict[str, _Billing]:
    """Status and MRR of each billing customer's latest subscription (as the billing reader reads it)."""
    if mapping is None or not ids:
        return {}
    sub = mapping.entity("subscription")
    fields = [f for f in _SUB_FIELDS if sub.has(f)]
    rows = _read(settings, "billing", lambda conn: sub.rows(
        conn, where=lambda p: [p.in_("customer_id", ids)], fields=fields, order_by="created", descending=False))
    status_map: dict[str, str] = mapping.settings.get("status_map", {})
    monthly_amount = BillingReader(mapping, engine_for(settings.source("billing").url or "")).monthly_amount
    latest: dict[str, dict[str, Any]] = {}
    for r in rows:  # oldest first: the last one seen per customer is the latest
        latest[str(r["customer_id"])] = r
    out = {}
    for billing_id, r in latest.items():
        canceled = status_map.get(r["status"], r["status"]) == "canceled"
        out[billing_id] = _Billing(status="churned" if canceled else "active",
                                   mrr=None if canceled else monthly_amount(r))
    return out


def _read(settings: Settings, source: str, fetch: Any) -> list[dict[str, Any]]:
    url = settings.source(source).url
    assert url is not None
    try:
        with engine_for(url).connect() as conn:
            return fetch(conn).rows
    except SQLAlchemyError as exc:
        raise BookError(SOURCE_FAILED.format(source=source, error=summarize(exc))) from None
