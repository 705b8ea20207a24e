"""What an incremental refresh watches, its watermarks, and change detection pushed down.

For every source a refresh keeps a **watermark** per watched entity (table) — the newest
update timestamp seen — in the ``refresh_watermark`` table of the state database. Change
detection is one indexed range query per watched table (``updated_at > watermark``,
grouped by the customer key, or joined through a link table: e-mail recipients, meeting
attendees, call participants, product users), so its cost follows the number of changed
rows, not the size of the book. The changed keys become canonical customers through the
identity index's keys (:func:`_customers_for`). A watermark advances only after every
refresh read of its source succeeded (:func:`_commit`), so a failing source is retried
from its old watermark next time (at least once). Used by ``tools.refresh.jobs``.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    literal,
    select,
    type_coerce,
    union_all,
)
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement
from sqlalchemy.types import NullType

from tools.context.scope import default_guard
from tools.guard import SourceGuard, summarize
from tools.identity import identity_key, normalize_name
from tools.mapping.conversions import MappingError, RowError
from tools.mapping.engine import IN_CHUNK, Entity, EntityPart, FieldSpec, Mapping
from tools.mapping.loader import load_mapping
from tools.refresh.runner import RefreshReport, _Tally
from tools.settings import SOURCE_NAMES, Settings
from tools.sources.base import utcnow
from tools.sources.registry import engine_for

#: Budget of one source's change-detection scan (a watched table without an index on its
#: update timestamp is scanned in full; that must not time out like a slice read).
CHANGE_SCAN_TIMEOUT_S = 60.0
#: Longest customer name (in words) looked for in changed chat messages.
_MAX_NAME_WORDS = 8

# ------------------------------------------------------------------ what is watched
# Slices fed by the same tables (shared with the events that invalidate them).
_support = ["support.summary", "support.tickets"]
_billing = ["billing.status", "billing.invoices"]
_commerce = ["commerce.orders", "commerce.refunds", "commerce.payment_methods", "commerce.addresses"]

@dataclass(frozen=True)
class Via:
    """Customers of a changed row are found through a link table:
    ``SELECT link.<key> FROM link WHERE link.<match> IN (SELECT changed.<on> ...)``."""

    entity: str
    match: str
    on: str


@dataclass(frozen=True)
class Watch:
    """One watched entity of a source: which field names its customer, which slices it feeds."""

    entity: str
    key: str  # field holding the customer key (on ``via.entity`` when via is set)
    kind: str  # identity key kind: crm_id, billing_id, support_id, product_id, domain, name
    slices: tuple[str, ...]
    ts: str = "updated_at"  # the entity's update-timestamp field
    via: Via | None = None


def _w(entity: str, key: str, kind: str, *slices: str, ts: str = "updated_at", via: Via | None = None) -> Watch:
    return Watch(entity, key, kind, slices, ts, via)


# Entity and field names are the mapped ones, shared by every flavour of a source
# (hubspot.yaml and salesforce.yaml both have account.id, contact.account_id, ...).
WATCHES: dict[str, tuple[Watch, ...]] = {
    "crm": (
        _w("account", "id", "crm_id", "crm.account"),
        _w("contact", "account_id", "crm_id", "crm.contacts"),
        _w("opportunity", "account_id", "crm_id", "crm.opportunities"),
        _w("activity", "account_id", "crm_id", "crm.activities"),
    ),
    "billing": (
        _w("customer", "id", "billing_id", "billing.status"),
        _w("subscription", "customer_id", "billing_id", "billing.status"),
        _w("payment_method", "customer_id", "billing_id", "billing.status"),
        _w("invoice", "customer_id", "billing_id", *_billing),
        _w("charge", "customer_id", "billing_id", *_billing),
    ),
    "product": (
        _w("group", "group_id", "product_id", "product.usage"),
        _w("event", "group_id", "product_id", "product.usage", via=Via("group", "user_id", "user_id")),
    ),
    "support": (
        _w("ticket", "organization_id", "support_id", *_support),
        _w("ticket_history", "organization_id", "support_id", "support.summary", ts="updated",
           via=Via("ticket", "id", "ticket_id")),
        # a new comment alone changes the ticket's thread (support.tickets shows the latest comments)
        _w("ticket_comment", "organization_id", "support_id", "support.tickets", ts="created_at",
           via=Via("ticket", "id", "ticket_id")),
    ),
    "email": (_w("message", "domain", "domain", "email.threads", via=Via("recipient", "message_id", "id")),),
    "calendar": (_w("event", "domain", "domain", "calendar.meetings", via=Via("attendee", "event_id", "id")),),
    "chat": (_w("message", "text", "name", "chat.mentions"),),  # mentions by name, as the reader matches them
    "documents": (_w("document", "domain", "domain", "docs.documents"),),
    "calls": (_w("call", "domain", "domain", "calls.highlights", via=Via("participant", "call_id", "id")),),
    "research": (_w("article", "domain", "domain", "research.news"),),
    "commerce": (
        _w("customer", "id", "commerce_id", *_commerce),
        _w("order", "customer_id", "commerce_id", *_commerce),
    ),
}
assert set(WATCHES) == set(SOURCE_NAMES)


# ------------------------------------------------------------------ watermarks
refresh_state = MetaData()
refresh_watermark = Table(
    "refresh_watermark", refresh_state,
    Column("tenant", String(100), primary_key=True),
    Column("source", String(20), primary_key=True),
    Column("entity", String(120), primary_key=True),  # "<entity>/<table>" (one per table of an entity)
    Column("config", String(40), nullable=False),  # digest of URL, mapping, table and timestamp column
    Column("value", Text),  # newest update timestamp seen (ISO), NULL: the table was empty
    Column("recorded_at", DateTime, nullable=False),
)


@dataclass(frozen=True)
class _Mark:
    """The watermark slot of one table of a watched entity."""

    source: str
    watch: Watch
    part: EntityPart = field(compare=False)
    key: str = ""  # refresh_watermark.entity
    config: str = ""


def _marks(settings: Settings, source: str) -> tuple[list[_Mark], list[str]]:
    """Watermark slots of a connected source, and the watched entities it cannot track."""
    cfg = settings.source(source)
    assert cfg.url is not None
    mapping = load_mapping(cfg.mapping or source)
    marks, untracked = [], []
    for w in WATCHES[source]:
        ent = mapping.entities.get(w.entity)
        link = mapping.entities.get(w.via.entity) if w.via else ent
        if ent is None or link is None or not ent.has(w.ts) or not link.has(w.key) \
                or (w.via and not (ent.has(w.via.on) and link.has(w.via.match))):
            untracked.append(f"{source}.{w.entity}")
            continue
        for p in ent.parts:
            col = p.fields[w.ts].column or p.fields[w.ts].name
            digest = hashlib.sha1(f"{cfg.url}|{mapping.name}|{p.table}|{col}".encode()).hexdigest()[:16]
            marks.append(_Mark(source, w, p, f"{w.entity}/{p.table}", digest))
    return marks, untracked


def _to_text(v: Any) -> str | None:
    if v is None:
        return None
    return v.isoformat() if isinstance(v, date | datetime) else str(v)


def _from_text(v: str) -> Any:
    try:
        return datetime.fromisoformat(v)
    except ValueError:
        return v


def _state_engine(settings: Settings):  # noqa: ANN202
    eng = engine_for(settings.state_db_url)
    refresh_state.create_all(eng)
    return eng


def _load(settings: Settings) -> dict[tuple[str, str], tuple[str, str | None]]:
    """(source, entity key) → (config digest, value) of this tenant's watermarks."""
    t = refresh_watermark.c
    with _state_engine(settings).connect() as conn:
        rows = conn.execute(select(t.source, t.entity, t.config, t.value).where(t.tenant == settings.tenant))
        return {(r.source, r.entity): (r.config, r.value) for r in rows}


def _save(settings: Settings, marks: dict[_Mark, Any]) -> None:
    if not marks:
        return
    t = refresh_watermark.c
    now = utcnow()
    with _state_engine(settings).begin() as conn:
        for m in marks:
            conn.execute(delete(refresh_watermark).where(t.tenant == settings.tenant, t.source == m.source,
                                                         t.entity == m.key))
        conn.execute(insert(refresh_watermark), [
            {"tenant": settings.tenant, "source": m.source, "entity": m.key, "config": m.config,
             "value": _to_text(value), "recorded_at": now} for m, value in marks.items()])


def watermarks(settings: Settings) -> dict[str, str | None]:
    """Per source, the newest update timestamp the last successful refresh saw (None: none yet)."""
    out: dict[str, str | None] = {s: None for s in SOURCE_NAMES}
    for (source, _), (_, value) in _load(settings).items():
        if source not in out or value is None:
            continue
        current = out[source]
        if current is None or value > current:
            out[source] = value
    return out


def table_watermarks(settings: Settings) -> dict[str, str | None]:
    """Every recorded watermark: ``"<source>.<entity>/<table>"`` → newest update timestamp seen."""
    return {f"{source}.{entity}": value for (source, entity), (_, value) in sorted(_load(settings).items())}


def reset_watermarks(settings: Settings, sources: Iterable[str] | None = None) -> None:
    """Forget watermarks (all, or some sources'): the next incremental refresh reads those in full."""
    t = refresh_watermark.c
    stmt = delete(refresh_watermark).where(t.tenant == settings.tenant)
    if sources is not None:
        stmt = stmt.where(t.source.in_(list(sources)))
    with _state_engine(settings).begin() as conn:
        conn.execute(stmt)


# ------------------------------------------------------------------ change detection
def _py(spec: FieldSpec, raw: Any) -> Any:
    """A raw source value in Python, None when it is missing or malformed (never fatal here)."""
    try:
        return None if raw is None else spec.to_python(raw)
    except RowError:
        return None


def _raw(expr: ColumnElement[Any]) -> ColumnElement[Any]:
    # Raw values, converted by FieldSpec.to_python, as Entity.select does: a driver result
    # processor would fail the whole scan on one garbage value.
    return type_coerce(expr, NullType())


def _newest(conn: Connection, m: _Mark, after: Any) -> Any:
    """max(update timestamp) of one table, above ``after``: pushed down, index-friendly."""
    p, ts = m.part, m.watch.ts
    stmt = select(_raw(func.max(p.col(ts)))).select_from(p.from_clause).where(*p.within(ts, after=after))
    return _py(p.fields[ts], conn.execute(stmt).scalar())


def _moved(conn: Connection, after_of: dict[_Mark, Any]) -> set[_Mark]:
    """The tables with a row updated after their watermark: one statement for all of a source's
    tables (``max(update timestamp)`` above each watermark, an index seek where the stamp is
    indexed), so an unchanged table costs no range scan of its own."""
    marks = list(after_of)
    if not marks:
        return set()
    parts = []
    for i, m in enumerate(marks):
        p, ts = m.part, m.watch.ts
        parts.append(select(literal(i).label("i"), _raw(func.max(p.col(ts))).label("top"))
                     .select_from(p.from_clause).where(*p.within(ts, after=after_of[m])))
    out: set[_Mark] = set()
    for j in range(0, len(parts), 50):  # SQLite takes at most 500 terms in one compound SELECT
        chunk = parts[j:j + 50]
        stmt = union_all(*chunk) if len(chunk) > 1 else chunk[0]
        out.update(marks[int(i)] for i, top in conn.execute(stmt) if top is not None)
    return out


def _later(a: Any, b: Any) -> Any:
    return b if a is None or (b is not None and b > a) else a


def _changed_keys(conn: Connection, mapping: Mapping, m: _Mark, after: Any) -> tuple[set[tuple[str, str]], Any]:
    """Customer keys ``(kind, value)`` of the rows of one table changed after ``after``, and
    the newest change among them."""
    w, p = m.watch, m.part
    changed = p.within(w.ts, after=after)
    ts_spec = p.fields[w.ts]
    keys: set[tuple[str, str]] = set()
    newest = None
    if w.kind == "name":  # chat: the customers whose names the changed messages mention
        result = conn.execution_options(yield_per=2_000).execute(
            select(_raw(p.col(w.key)), _raw(p.col(w.ts))).select_from(p.from_clause).where(*changed))
        for raw_text, raw_ts in result:
            newest = _later(newest, _py(ts_spec, raw_ts))
            keys.update(("name", n) for n in _ngrams(str(raw_text or "")))
        return keys, newest
    if w.via is None:
        key = p.col(w.key)
        stmt = (select(_raw(key), _raw(func.max(p.col(w.ts)))).select_from(p.from_clause)
                .where(*changed).group_by(key))
        for raw_key, raw_ts in conn.execute(stmt):
            value = _py(p.fields[w.key], raw_key)
            if value is not None and value != "":
                keys.add((w.kind, _key_text(w.kind, value)))
            newest = _later(newest, _py(ts_spec, raw_ts))
        return keys, newest
    link: Entity = mapping.entity(w.via.entity)
    changed_ids = select(p.col(w.via.on)).select_from(p.from_clause).where(*changed)
    for lp in link.parts:
        link_stmt = (select(_raw(lp.col(w.key))).distinct().select_from(lp.from_clause)
                     .where(lp.col(w.via.match).in_(changed_ids.scalar_subquery())))
        for (raw_key,) in conn.execute(link_stmt):
            value = _py(lp.fields[w.key], raw_key)
            if value is not None and value != "":
                keys.add((w.kind, _key_text(w.kind, value)))
    return keys, _newest(conn, m, after)


def _key_text(kind: str, value: Any) -> str:
    text = str(value).strip()
    return text.lower() if kind in ("domain", "email") else text


def _ngrams(text: str) -> Iterator[str]:
    words = normalize_name(text).split()
    for i in range(len(words)):
        for j in range(i + 1, min(len(words), i + _MAX_NAME_WORDS) + 1):
            yield " ".join(words[i:j])


def _customers_for(settings: Settings, keys: set[tuple[str, str]]) -> set[str]:
    """Canonical customer ids holding any of these identity keys (the index's primary key)."""
    by_kind: dict[str, list[str]] = defaultdict(list)
    for kind, value in keys:
        by_kind[kind].append(value[:255])
    c = identity_key.c
    out: set[str] = set()
    with engine_for(settings.state_db_url).connect() as conn:
        for kind, values in by_kind.items():
            for i in range(0, len(values), IN_CHUNK):
                chunk = values[i:i + IN_CHUNK]
                out.update(r[0] for r in conn.execute(
                    select(c.customer_id).where(c.kind == kind, c.value.in_(chunk))))
    return out


# ------------------------------------------------------------------ watermark bookkeeping
def _capture(settings: Settings, sources: Sequence[str], guard: SourceGuard | None,
             report: RefreshReport) -> dict[_Mark, Any]:
    """Each table's current newest update timestamp (taken before a full read)."""
    guard = guard or default_guard(settings)
    out: dict[_Mark, Any] = {}
    for source in sources:
        try:
            marks, untracked = _marks(settings, source)
        except MappingError as exc:
            report.failed_sources[source] = summarize(exc)
            continue
        report.untracked.extend(u for u in untracked if u not in report.untracked)
        if not marks:
            continue
        url = settings.source(source).url
        assert url is not None

        def scan(marks: list[_Mark] = marks, url: str = url) -> dict[_Mark, Any]:
            with engine_for(url).connect() as conn:
                return {m: _newest(conn, m, None) for m in marks}

        got, outcome, _ = guard.call(source, f"{source}.watermark", scan,
                                     max(CHANGE_SCAN_TIMEOUT_S, settings.source(source).timeout_s or 0))
        if outcome.status == "ok":
            out.update(got)
        else:
            report.failed_sources[source] = f"watermark scan failed: {outcome.error}"
    return out


def _detect(settings: Settings, source: str, old: dict[_Mark, str | None], guard: SourceGuard,
            report: RefreshReport) -> tuple[dict[tuple[str, ...], set[tuple[str, str]]], dict[_Mark, Any]] | None:
    """Changed customer keys (grouped by the slices they feed) and the new watermarks of one
    source, or None when the source could not be scanned (its watermarks stay)."""
    url = settings.source(source).url
    assert url is not None
    mapping = load_mapping(settings.source(source).mapping or source)

    def scan() -> tuple[dict[tuple[str, ...], set[tuple[str, str]]], dict[_Mark, Any]]:
        keys: dict[tuple[str, ...], set[tuple[str, str]]] = defaultdict(set)
        newest: dict[_Mark, Any] = {}
        with engine_for(url).connect() as conn:
            after_of = {m: _from_text(value) if value is not None else None for m, value in old.items()}
            moved = _moved(conn, after_of)
            for m, after in after_of.items():
                if m not in moved:
                    continue  # nothing newer than its watermark: no range scan
                found, top = _changed_keys(conn, mapping, m, after)
                keys[m.watch.slices].update(found)
                if top is not None:
                    newest[m] = top
        return keys, newest

    got, outcome, _ = guard.call(source, f"{source}.changes", scan,
                                 max(CHANGE_SCAN_TIMEOUT_S, settings.source(source).timeout_s or 0))
    if outcome.status != "ok":
        report.failed_sources[source] = f"change detection failed: {outcome.error}"
        return None
    return got


def _commit(settings: Settings, marks: dict[_Mark, Any], tally: _Tally, report: RefreshReport) -> None:
    """Record the watermarks of the sources whose every read succeeded; report the others."""
    keep = {m: v for m, v in marks.items()
            if not tally.failed_by_source[m.source] and m.source not in report.failed_sources}
    for source, n in tally.failed_by_source.items():
        report.failed_sources.setdefault(source, f"{n} slice read(s) failed; its watermark was kept")
    _save(settings, keep)
    report.watermarks = watermarks(settings)


