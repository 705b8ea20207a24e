"""The floor of a refresh: the book's slices as a script would build them, set-based.

What the cheapest honest refresh of the same book costs on the same warehouse: per slice
one statement over the whole set of customers (joins, the slice's time window, and
``ROW_NUMBER() OVER (PARTITION BY <customer key> ORDER BY ...)`` for "the newest N"; the
aggregates of ``billing.status``, ``billing.invoices``, ``support.summary`` and
``product.usage`` as ``GROUP BY``; chat mentions as a join on ``LIKE``), rows streamed back
raw — no conversion, no validation, no provenance — grouped per customer in a dict, and
written as one JSON row per (customer, slice) plus one audit row, in one transaction, into
tables of its own. Nothing product-side runs: no guard, no reader, no access gate, no
LangGraph store. The statements are built from the same mappings (their tables, columns,
filters and windows), so they read what the readers read; ``changed`` restricts every
statement to a set of customers (``WHERE key IN (...)``): the incremental refresh's floor.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    MetaData,
    String,
    Table,
    Text,
    case,
    func,
    insert,
    literal,
    select,
    type_coerce,
    union_all,
)
from sqlalchemy.types import NullType

from tools.identity import identity_customer
from tools.mapping.engine import EntityPart, Mapping
from tools.mapping.loader import load_mapping
from tools.settings import Settings
from tools.sources.registry import engine_for

floor_state = MetaData()
floor_slice = Table("bench_floor_slice", floor_state, Column("customer_id", String(40)), Column("slice", String(40)),
                    Column("value", Text))
floor_audit = Table("bench_floor_audit", floor_state, Column("at", String(40)), Column("what", Text))


@dataclass(frozen=True)
class Spec:
    """One slice's statement: rows of ``entity`` keyed by ``key`` (a customer key of ``kind``),
    through ``link`` (link entity, its customer key field, its field matching ``on``) when the
    customer is named in a link table; windowed, ranked and limited per customer."""

    slice: str
    source: str
    entity: str
    key: str
    kind: str  # crm | billing | support | product | domain | name
    window: tuple[str, int | None, int | None] | None = None  # field, days before as-of, days after
    order: str | None = None
    limit: int | None = None
    where: tuple[tuple[str, str], ...] = ()
    link: tuple[str, str, str, str] | None = None  # link entity, its key, its match field, our field


SPECS: tuple[Spec, ...] = (
    Spec("crm.account", "crm", "account", "id", "crm"),
    Spec("crm.contacts", "crm", "contact", "account_id", "crm"),
    Spec("crm.opportunities", "crm", "opportunity", "account_id", "crm", order="close_date"),
    Spec("crm.activities", "crm", "activity", "account_id", "crm", ("date", None, 0), "date", 20),
    Spec("billing.status", "billing", "subscription", "customer_id", "billing", order="created", limit=1),
    Spec("billing.status", "billing", "charge", "customer_id", "billing", order="created", limit=1,
         where=(("status", "succeeded"),)),
    Spec("billing.status", "billing", "payment_method", "customer_id", "billing", limit=1),
    Spec("billing.invoices", "billing", "invoice", "customer_id", "billing", order="created", limit=12),
    Spec("billing.invoices", "billing", "charge", "customer_id", "billing", ("created", 90, None), "created",
         where=(("status", "failed"),)),
    Spec("support.tickets", "support", "ticket", "organization_id", "support", ("created_at", None, 0),
         "created_at", 20),
    Spec("email.threads", "email", "message", "id", "domain", ("sent_at", 60, 0), "sent_at", 50,
         link=("recipient", "domain", "message_id", "id")),
    Spec("calendar.meetings", "calendar", "event", "id", "domain", ("start", 30, 30), "start", 50,
         link=("attendee", "domain", "event_id", "id")),
    Spec("docs.documents", "documents", "document", "domain", "domain", ("updated", None, 0), "updated", 20),
    Spec("calls.highlights", "calls", "call", "id", "domain", ("started_at", 90, 0), "started_at", 10,
         link=("participant", "domain", "call_id", "id")),
    Spec("research.news", "research", "article", "domain", "domain", ("published_at", 30, 0), "published_at", 20),
)
#: Aggregates, one GROUP BY statement each: (slice, source, entity, key, kind, {name: (func, field)}, where);
#: func is an SQL aggregate, or ``any`` for a boolean column (see :func:`_agg`).
AGGREGATES: tuple[tuple[str, str, str, str, str, dict[str, tuple[str, str | None]], tuple[tuple[str, str], ...]],
                  ...] = (
    ("billing.status", "billing", "customer", "id", "billing",
     {"email": ("max", "email"), "currency": ("max", "currency"), "delinquent": ("any", "delinquent")}, ()),
    ("billing.status", "billing", "invoice", "customer_id", "billing",
     {"balance_due": ("sum", "amount_remaining")}, (("status", "open"),)),
    ("billing.invoices", "billing", "charge", "customer_id", "billing",
     {"total_revenue": ("sum", "amount")}, (("status", "succeeded"),)),
    ("support.summary", "support", "ticket", "organization_id", "support",
     {"total": ("count", None), "last_created": ("max", "created_at")}, ()),
    ("product.usage", "product", "group", "group_id", "product", {"users": ("count", "user_id")}, ()),
)


def _columns(p: EntityPart) -> list[Any]:
    return [type_coerce(p.col(n), NullType()).label(n) for n in p.fields]


def _keys(settings: Settings, customer_ids: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """kind → key value → canonical customer ids, for the customers refreshed."""
    wanted = sorted(set(customer_ids))
    out: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    c = identity_customer.c
    with engine_for(settings.state_db_url).connect() as conn:
        rows = [row for i in range(0, len(wanted), 500)
                for row in conn.execute(select(identity_customer).where(c.customer_id.in_(wanted[i:i + 500])))]
        for row in rows:
            for source, rid in json.loads(row.anchors).items():
                out[source][rid].append(row.customer_id)
            for d in json.loads(row.domains):
                out["domain"][d].append(row.customer_id)
            out["name"][row.name.lower()].append(row.customer_id)
    return out


def _source_keys(field: Any, keys: list[str]) -> list[Any]:
    """The customers' keys (text) as the key column holds them — an integer CRM id as an integer:
    PostgreSQL compares no ``bigint`` with ``varchar``."""
    return [raw for _, raw in field.in_source(keys)]


def _statement(mapping: Mapping, spec: Spec, as_of: datetime, keys: list[str] | None) -> Any:
    p = mapping.entity(spec.entity).parts[0]
    frm: Any
    if spec.link:
        lp = replace(mapping.entity(spec.link[0]).parts[0], alias="l")  # both parts are "t" in their mappings
        key, field = lp.col(spec.link[1]), lp.fields[spec.link[1]]
        frm = p.from_clause.join(lp.from_clause, lp.col(spec.link[2]) == p.col(spec.link[3]))
        conds = [*p.filters(), *lp.filters()]
    else:
        key, field, frm, conds = p.col(spec.key), p.fields[spec.key], p.from_clause, list(p.filters())
    conds += [p.eq(k, v) for k, v in spec.where]
    if spec.window:
        name, before, after = spec.window
        conds += p.within(name, as_of - timedelta(days=before) if before is not None else None,
                          as_of + timedelta(days=after) if after is not None else None)
    if keys is not None:
        conds.append(key.in_(_source_keys(field, keys)))
    cols = [*_columns(p), type_coerce(key, NullType()).label("_key_")]
    if spec.limit is None:
        return select(*cols).select_from(frm).where(*conds)
    order = p.col(spec.order).desc().nulls_last() if spec.order else key
    ranked = select(*cols, func.row_number().over(partition_by=key, order_by=order).label("_rank_")) \
        .select_from(frm).where(*conds).subquery()
    return select(*(ranked.c[c.name] for c in cols)).where(ranked.c["_rank_"] <= spec.limit)


def _agg(fn: str, col: Any) -> Any:
    """``fn`` over ``col``; ``any``: whether any row's boolean is true, as 1/0 — ``max(CASE ...)``,
    which every dialect has (PostgreSQL has no ``max(boolean)``, SQLite no ``bool_or``)."""
    if fn == "any":
        return func.max(case((col, 1), else_=0))
    return getattr(func, fn)(col)


def _aggregate(mapping: Mapping, entity: str, key_field: str, aggs: dict[str, tuple[str, str | None]],
               where: tuple[tuple[str, str], ...], keys: list[str] | None) -> Any:
    p = mapping.entity(entity).parts[0]
    key = p.col(key_field)
    cols = [_agg(fn, p.col(f) if f else literal(1)).label(name) for name, (fn, f) in aggs.items()]
    conds = [*p.filters(), *(p.eq(k, v) for k, v in where)]
    if keys is not None:
        conds.append(key.in_(_source_keys(p.fields[key_field], keys)))
    return select(*(type_coerce(c, NullType()).label(c.name) for c in cols),
                  type_coerce(key, NullType()).label("_key_")).select_from(p.from_clause).where(*conds).group_by(key)


def _mentions(mapping: Mapping, names: list[str], as_of: datetime) -> Any:
    p = mapping.entity("message").parts[0]
    wanted = union_all(*(select(literal(n, String).label("name"), literal(f"%{n}%", String).label("pattern"))
                         for n in names)).subquery("wanted")
    rank = func.row_number().over(partition_by=wanted.c.name, order_by=p.col("ts").desc())
    ranked = (select(*_columns(p), wanted.c.name.label("_key_"), rank.label("_rank_"))
              .select_from(p.from_clause.join(wanted, func.lower(p.col("text")).like(wanted.c.pattern)))
              .where(*p.within("ts", as_of - timedelta(days=30), as_of)).subquery())
    return select(*(c for c in ranked.c if c.name != "_rank_")).where(ranked.c["_rank_"] <= 20)


def floor_refresh(settings: Settings, customer_ids: Sequence[str], as_of: datetime,
                  restrict: bool = False, only: Collection[str] | None = None) -> dict[str, Any]:
    """Build the slices of ``customer_ids`` set-based and write them with one audit row in one
    transaction. ``restrict``: every statement limited to these customers' keys (the floor of an
    incremental refresh); else statements over the whole book. ``only``: these slices (None:
    all). Returns seconds and counts."""
    started = time.perf_counter()
    keys = _keys(settings, customer_ids)
    slices: dict[tuple[str, str], dict[str, Any]] = defaultdict(dict)
    mappings = {s: load_mapping(settings.source(s).mapping or s) for s in
                {spec.source for spec in SPECS} | {a[1] for a in AGGREGATES} | {"chat"}}
    statements = 0

    def take(slice_name: str, part: str, rows: Any, kind: str, listed: bool) -> None:
        for row in rows:
            for cid in keys[kind].get(str(row[-1]), ()):
                value = dict(zip(row._fields[:-1], (v if isinstance(v, int | float | str) or v is None else str(v)
                                                    for v in row[:-1]), strict=True))
                entry = slices[cid, slice_name]
                if listed:
                    entry.setdefault(part, []).append(value)
                else:
                    entry[part] = value

    for spec in SPECS:
        url = settings.source(spec.source).url
        if not url or (only is not None and spec.slice not in only):
            continue
        restricted = sorted(keys[spec.kind]) if restrict else None
        with engine_for(url).connect() as conn:
            stmt = _statement(mappings[spec.source], spec, as_of, restricted)
            take(spec.slice, spec.entity, conn.execute(stmt, execution_options={"yield_per": 5_000}), spec.kind, True)
            statements += 1
    for slice_name, source, entity, key_field, kind, aggs, where in AGGREGATES:
        url = settings.source(source).url
        if not url or (only is not None and slice_name not in only):
            continue
        with engine_for(url).connect() as conn:
            stmt = _aggregate(mappings[source], entity, key_field, aggs, where,
                              sorted(keys[kind]) if restrict else None)
            take(slice_name, entity, conn.execute(stmt), kind, False)
            statements += 1
    chat_url = settings.source("chat").url
    names = sorted(keys["name"])
    if chat_url and names and (only is None or "chat.mentions" in only):
        with engine_for(chat_url).connect() as conn:
            for i in range(0, len(names), 400):  # SQLite: at most 500 terms in a compound SELECT
                take("chat.mentions", "message", conn.execute(_mentions(mappings["chat"], names[i:i + 400], as_of)),
                     "name", True)
                statements += 1
    # one row per (customer, slice) the customer's keys reach, empty or not: the slices a refresh writes
    kinds = {spec.slice: spec.kind for spec in SPECS} | {a[0]: a[4] for a in AGGREGATES} | {"chat.mentions": "name"}
    kinds = {n: k for n, k in kinds.items() if only is None or n in only}
    holds: dict[str, set[str]] = defaultdict(set)
    for kind, by_value in keys.items():
        for cids in by_value.values():
            for cid in cids:
                holds[cid].add(kind)
    for cid in customer_ids:
        for slice_name, kind in kinds.items():
            if kind in holds[cid]:
                slices[cid, slice_name]  # noqa: B018 - defaultdict: creates the (possibly empty) slice
    eng = engine_for(settings.state_db_url)
    floor_state.create_all(eng)
    rows = [{"customer_id": cid, "slice": name, "value": json.dumps(value, separators=(",", ":"))}
            for (cid, name), value in slices.items()]
    with eng.begin() as conn:
        conn.execute(floor_slice.delete())
        if rows:
            conn.execute(insert(floor_slice), rows)
        conn.execute(insert(floor_audit), [{"at": datetime.now().isoformat(),
                                             "what": f"floor refresh of {len(customer_ids)} customers"}])
    return {"seconds": round(time.perf_counter() - started, 3), "slices": len(rows), "statements": statements,
            "customers": len(customer_ids)}
