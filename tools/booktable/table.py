"""The book table's tables and their upkeep: every refresh materialises its customers' traits here
(the package docstring, ``tools.booktable``, says why and how it is listed)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    insert,
    inspect,
    select,
)
from sqlalchemy.engine import Engine

from tools.identity import identity_customer
from tools.mapping.engine import IN_CHUNK
from tools.memory import ContextMemory
from tools.settings import Settings
from tools.slices import (
    CalendarMeetings,
    CallHighlights,
    CrmAccount,
    CrmActivities,
    EmailThreads,
    Slice,
)
from tools.sources.base import utcnow
from tools.sources.registry import engine_for
from tools.traits import derive_traits

#: The slices traits are computed from — the account's risk indicators (billing, usage, support, CRM)
#: and the relationship signals (contacts, email, meetings, calls, invoices: tools/signals.py) —
#: so the book's health and churn score are the ones a customer's context shows.
TRAIT_SLICES = ("crm.account", "crm.contacts", "billing.status", "billing.invoices", "product.usage",
                "support.summary", "email.threads", "calendar.meetings", "calls.highlights")
#: The slices a last touch is taken from (the newest dated exchange with the customer).
TOUCH_SLICES = ("crm.activities", "email.threads", "calendar.meetings", "calls.highlights")
#: Every slice a book row is made from (one memory query per customer reads them all).
BOOK_SLICES = tuple(dict.fromkeys((*TRAIT_SLICES, *TOUCH_SLICES)))
#: What each relationship risk is derived from (tools/signals.py): a role sees the risk, and may
#: filter on it, only when it may read every one of these (its absence says something about them too).
RELATIONSHIP_INPUTS: dict[str, tuple[str, ...]] = {
    "renewal_at_risk": ("calls.highlights", "email.threads"),
    "negative_sentiment": ("email.threads",),
    "champion_cold": ("crm.contacts", "email.threads", "calendar.meetings", "calls.highlights"),
    "engagement_declining": ("email.threads", "calendar.meetings", "calls.highlights"),
    "competitor_mentioned": ("calls.highlights",),
}
book_state = MetaData()
book_traits = Table(
    "book_traits", book_state,
    Column("tenant", String(100), primary_key=True),
    Column("customer_id", String(40), primary_key=True),
    Column("name", Text, nullable=False),
    Column("tier", String(20)),
    Column("tier_source", String(40)),
    Column("mrr", Float),
    Column("health", String(20)),
    Column("churn_score", Integer),
    Column("renewal_date", Date),
    Column("owner", String(200)),
    Column("segment", String(100)),
    Column("status", String(40)),
    Column("last_touch", DateTime),
    Column("last_touch_slice", String(40)),
    Column("account", Text),  # the CRM account (JSON) the row filter is judged on; NULL: no CRM record
    Column("updated_at", DateTime, nullable=False),
    Index("ix_book_traits_tier", "tenant", "tier"),
    Index("ix_book_traits_health", "tenant", "health"),
    Index("ix_book_traits_owner", "tenant", "owner"),
    Index("ix_book_traits_renewal", "tenant", "renewal_date"),
    Index("ix_book_traits_churn", "tenant", "churn_score"),
)
book_risk = Table(
    "book_risk", book_state,
    Column("tenant", String(100), primary_key=True),
    Column("customer_id", String(40), primary_key=True),
    Column("risk", String(40), primary_key=True),
    Column("kind", String(20), nullable=False),  # account (risk_indicators) | relationship (relationship_risks)
    Column("slice", String(40), nullable=False),  # where it came from (the first source, for a relationship risk)
    Column("inputs", Text, nullable=False),  # comma-separated: every slice a role must read to see it
    Column("reason", Text),
    Index("ix_book_risk_risk", "tenant", "risk", "customer_id"),
)


class BookQueryError(ValueError):
    """The listing cannot be made as asked; the message is one line meant for a person."""


_created: set[str] = set()


def book_engine(settings: Settings) -> Engine:
    """The state database, with the book tables (created once per process and URL; tables of an
    older layout are dropped and made again, empty: the next listing or refresh rebuilds the book)."""
    eng = engine_for(settings.state_db_url)
    if settings.state_db_url not in _created:
        have = inspect(eng)
        if any(have.has_table(t.name) and {c.name for c in t.columns} - {c["name"] for c in have.get_columns(t.name)}
               for t in book_state.sorted_tables):
            book_state.drop_all(eng)
        book_state.create_all(eng)
        _created.add(settings.state_db_url)
    return eng


# ------------------------------------------------------------------ materialising
def _last_touch(slices: dict[str, Slice], now: datetime) -> tuple[datetime | None, str | None]:
    """The newest past exchange with the customer, and the slice it is in."""
    found: list[tuple[datetime, str]] = []
    acts = slices.get("crm.activities")
    if isinstance(acts, CrmActivities):
        found += [(a.date, "crm.activities") for a in acts.activities]
    mail = slices.get("email.threads")
    if isinstance(mail, EmailThreads):
        found += [(t.last_message_at, "email.threads") for t in mail.threads if t.last_message_at]
    cal = slices.get("calendar.meetings")
    if isinstance(cal, CalendarMeetings):
        found += [(m.start, "calendar.meetings") for m in cal.meetings if m.start and not m.upcoming]
    calls = slices.get("calls.highlights")
    if isinstance(calls, CallHighlights):
        found += [(c.date, "calls.highlights") for c in calls.calls if c.date]
    found = [(_naive(at), name) for at, name in found if _naive(at) <= _naive(now)]
    return max(found) if found else (None, None)


def _naive(at: datetime) -> datetime:
    return at.replace(tzinfo=None) - (at.utcoffset() or timedelta(0)) if at.tzinfo else at


def book_rows(settings: Settings, tenant: str, customer_id: str, name: str, slices: dict[str, Slice],
              now: datetime) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One customer's ``book_traits`` row and ``book_risk`` rows from its slices (a pure function)."""
    traits = derive_traits({n: s for n, s in slices.items() if n in TRAIT_SLICES},
                           settings.thresholds, settings.churn_weights)
    account = slices.get("crm.account")
    acct = account if isinstance(account, CrmAccount) else None
    touch, touch_slice = _last_touch(slices, now)
    row = {
        "tenant": tenant, "customer_id": customer_id, "name": name, "tier": traits.tier,
        "tier_source": traits.tier_source, "mrr": traits.mrr, "health": traits.health,
        "churn_score": traits.churn_risk.score, "renewal_date": acct.renewal_date if acct else None,
        "owner": acct.owner if acct else None, "segment": acct.segment if acct else None,
        "status": acct.status if acct else None, "last_touch": touch, "last_touch_slice": touch_slice,
        "account": acct.model_dump_json() if acct else None, "updated_at": _naive(utcnow()),
    }
    risks = [{"tenant": tenant, "customer_id": customer_id, "risk": r.name, "kind": "account", "slice": r.slice,
              "inputs": r.slice, "reason": r.reason} for r in traits.risk_reasons]
    risks += [{"tenant": tenant, "customer_id": customer_id, "risk": r.name, "kind": "relationship",
               "slice": r.slice or RELATIONSHIP_INPUTS.get(r.name, ("",))[0],
               "inputs": ",".join(RELATIONSHIP_INPUTS.get(r.name, (r.slice,))), "reason": r.reason}
              for r in traits.relationship_risks]
    return row, risks


def clock_date(settings: Settings) -> date:
    """The read clock's date (the fixtures' as-of date with the embedded warehouse)."""
    from tools.sources.registry import resolve_as_of

    return resolve_as_of(settings).date()


def materialise_slices(settings: Settings, tenant: str, slices: dict[str, dict[str, Slice]]) -> int:
    """Replace the book rows of these customers (customer id → its slices at hand, e.g. a refresh
    chunk's, so nothing is read back) in one transaction per :data:`IN_CHUNK` customers; idempotent,
    so several workers may do it at once. Returns the rows written (a customer the identity index
    does not know gets none)."""
    eng = book_engine(settings)
    now = datetime.combine(clock_date(settings), datetime.max.time())
    written = 0
    ids = list(slices)
    for i in range(0, len(ids), IN_CHUNK):
        chunk = ids[i:i + IN_CHUNK]
        c = identity_customer.c
        with eng.connect() as conn:
            names = dict(conn.execute(select(c.customer_id, c.name).where(c.customer_id.in_(chunk))).all())
        rows, risks = [], []
        for cid in chunk:
            if cid in names:
                row, rs = book_rows(settings, tenant, cid, names[cid], slices[cid], now)
                rows.append(row)
                risks += rs
        with eng.begin() as conn:
            for t in (book_traits, book_risk):
                conn.execute(delete(t).where(t.c.tenant == tenant, t.c.customer_id.in_(chunk)))
            if rows:
                conn.execute(insert(book_traits), rows)
            if risks:
                conn.execute(insert(book_risk), risks)
        written += len(rows)
    return written


def materialise(settings: Settings, memory: ContextMemory, customer_ids: Iterable[str]) -> int:
    """Recompute the book rows of these customers from the snapshots long-term memory holds (one
    memory read per customer: ~1-2 ms each; a refresh that has the slices at hand should call
    :func:`materialise_slices`). Returns the rows written."""
    written = 0
    ids = list(dict.fromkeys(customer_ids))
    for i in range(0, len(ids), IN_CHUNK):
        held = {cid: {n: c.slice for n, c in memory.get_many(cid, BOOK_SLICES).items()}
                for cid in ids[i:i + IN_CHUNK]}
        written += materialise_slices(settings, memory.tenant, held)
    return written


def materialise_refreshed(settings: Settings, memory: ContextMemory, held: dict[str, dict[str, Slice]],
                          missing: dict[str, list[str]]) -> int:
    """A refresh chunk's book rows (``tools.refresh.runner``), in ``memory``'s tenant: each customer's
    from the slices the chunk just wrote (``held``: customer id → slices), and what it did not write
    (``missing``: customer id → slice names — a read that failed, whose last snapshot memory keeps,
    or a slice the refresh did not read) from memory. Returns the rows written."""
    for cid, names in missing.items():
        held.setdefault(cid, {}).update({n: c.slice for n, c in memory.get_many(cid, names).items()})
    return materialise_slices(settings, memory.tenant, held)


def book_size(settings: Settings, tenant: str) -> int:
    """Rows the book table holds for a tenant (0: never materialised)."""
    from sqlalchemy import func

    with book_engine(settings).connect() as conn:
        return int(conn.execute(select(func.count()).select_from(book_traits)
                                .where(book_traits.c.tenant == tenant)).scalar() or 0)
