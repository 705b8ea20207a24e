"""Keeping the identity index current from the rows that changed, not by rebuilding it.

``tools.identity.ensure_index`` rebuilds the whole index whenever a customer source's
fingerprint moves — any update of an identity table, such as a new MRR on a CRM
account, costs a scan of every source. :func:`maintain_index` does the same job in
proportion to the change:

1. Per table of every identity entity it keeps a watermark (newest update timestamp
   seen, row count) in ``identity_watermark``, and per source record (*node*) a digest
   of the identity values its rows give (``identity_node``: every identity key's values,
   in row order — names, domains, emails, ids, person keys alike).
2. The changed rows are found with one range query per table and key anchor
   (``updated_at > watermark``; no entity filter, so a row soft-deleted since is seen
   too); they name their nodes, whose identity values are read again (point lookups by
   the anchor field) and digested.
3. A node whose digest is unchanged changes nothing: an MRR change, a new sync stamp, a
   renewal date — no index row is written and nothing else is read. Only the watermarks
   and the fingerprint move.

Which records form one customer is :mod:`tools.identity`'s rule (shared values refused,
persons riding with accounts: not local to the changed records), so a change of identity
values themselves — a new domain, a contact moved to another company, a new or deleted
record — is answered with a full build (``build_index``), as it is when there is no
index or watermark yet, a source's URL or mapping changed, an identity table has no update
timestamp, or a table lost rows (a hard delete, which timestamps cannot show). A table
without an update timestamp (Zendesk's organization domains) shows a change by its row
count only, as the fingerprint sees it.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    inspect,
    select,
    type_coerce,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.types import NullType

from tools.identity import (
    ANCHORED_SOURCES,
    UNAVAILABLE,
    build_index,
    create_state,
    identity_customer,
    identity_key,
    identity_meta,
    source_fingerprint,
)
from tools.mapping.conversions import RowError
from tools.mapping.engine import IN_CHUNK, EntityPart, IdentityKey, Mapping
from tools.mapping.loader import load_mapping
from tools.settings import Settings
from tools.sources.base import utcnow
from tools.sources.registry import engine_for

index_state = MetaData()
identity_watermark = Table(
    "identity_watermark", index_state,
    Column("source", String(20), primary_key=True),
    Column("part", String(200), primary_key=True),  # "<entity>/<table>"
    Column("config", String(40), nullable=False),  # digest of URL and mapping
    Column("value", Text),  # newest update timestamp seen (ISO); NULL: the table was empty
    Column("row_count", Integer, nullable=False),
    Column("recorded_at", DateTime, nullable=False),
)
identity_node = Table(
    "identity_node", index_state,
    Column("source", String(20), primary_key=True),
    Column("record", String(300), primary_key=True),  # record id; a person's: "person:<id>"
    Column("digest", String(40), nullable=False),  # of the identity values its rows give
)
#: Record ids of person nodes start with this (as ``tools.identity`` names them).
PERSON = "person:"
NodeId = tuple[str, str]  # (source, record id)
Mark = tuple[str, str | None, int]  # config digest, newest update timestamp (ISO), row count
_BATCH = 5_000


@dataclass
class IndexUpdate:
    """What :func:`maintain_index` did."""

    mode: str  # unchanged | incremental (only watermarks moved) | rebuilt | kept (a source is down)
    changed_nodes: int = 0  # source records with a changed identity row (their values read again)
    reason: str = ""  # why a full build was done, or the index kept


@dataclass
class _Table:
    source: str
    url: str
    mapping: Mapping
    entity: str
    part: EntityPart
    keys: list[IdentityKey]  # the identity keys read from this entity
    name: str = ""  # "<entity>/<table>"
    config: str = ""
    current: tuple[Any, int] = (None, 0)  # (newest update timestamp, rows), measured


def _usable_keys(conn: Connection, mapping: Mapping) -> list[tuple[int, IdentityKey]]:
    """The mapping's identity keys whose tables exist (a person key's tables may be absent)."""
    have = inspect(conn)
    out = []
    for i, key in enumerate(mapping.identity):
        parts = mapping.entity(key.entity).parts
        tables = {p.table for p in parts} | {j["table"] for p in parts for j in p.joins}
        if all(have.has_table(t) for t in tables):
            out.append((i, key))
    return out


def _tables(settings: Settings) -> list[_Table]:
    out = []
    for source in ANCHORED_SOURCES:
        cfg = settings.source(source)
        if not cfg.url:
            continue
        mapping = load_mapping(cfg.mapping or source)
        digest = hashlib.sha1(f"{cfg.url}|{mapping.name}".encode()).hexdigest()[:16]
        by_entity: dict[str, list[IdentityKey]] = defaultdict(list)
        with engine_for(cfg.url).connect() as conn:
            for _, key in _usable_keys(conn, mapping):
                by_entity[key.entity].append(key)
        for ent_name, keys in by_entity.items():
            for p in mapping.entity(ent_name).parts:
                out.append(_Table(source, cfg.url, mapping, ent_name, p, keys, f"{ent_name}/{p.table}", digest))
    return out


def _node(source: str, key: IdentityKey, anchor: Any) -> NodeId:
    return (source, f"{PERSON}{anchor}" if getattr(key, "person", False) else str(anchor))


def _digest(values: list[tuple[int, str]]) -> str:
    return hashlib.sha1(json.dumps(values, separators=(",", ":")).encode()).hexdigest()


def _all_digests(settings: Settings) -> dict[NodeId, str]:
    """Every node's digest: each identity key's values, in row order (one scan per key, as a build)."""
    values: dict[NodeId, list[tuple[int, str]]] = defaultdict(list)
    for source in ANCHORED_SOURCES:
        cfg = settings.source(source)
        if not cfg.url:
            continue
        mapping = load_mapping(cfg.mapping or source)
        with engine_for(cfg.url).connect() as conn:
            for i, key in _usable_keys(conn, mapping):
                fields = list(dict.fromkeys([key.anchor, key.field]))
                for r in mapping.entity(key.entity).rows(conn, fields=fields).rows:
                    anchor, value = r.get(key.anchor), r.get(key.field)
                    if anchor is not None and value is not None and value != "":
                        values[_node(source, key, anchor)].append((i, str(value)))
    return {n: _digest(v) for n, v in values.items()}


def _digests_of(settings: Settings, nodes: Iterable[NodeId]) -> dict[NodeId, str]:
    """The digests of these nodes, read by their anchors (point lookups, IN_CHUNK at a time)."""
    wanted: dict[str, set[str]] = defaultdict(set)
    for source, rid in nodes:
        wanted[source].add(rid)
    values: dict[NodeId, list[tuple[int, str]]] = defaultdict(list)
    for source, rids in wanted.items():
        cfg = settings.source(source)
        if not cfg.url:
            continue
        mapping = load_mapping(cfg.mapping or source)
        with engine_for(cfg.url).connect() as conn:
            for i, key in _usable_keys(conn, mapping):
                person = getattr(key, "person", False)
                ids = sorted(r.removeprefix(PERSON) for r in rids if r.startswith(PERSON) == person)
                ent = mapping.entity(key.entity)
                fields = list(dict.fromkeys([key.anchor, key.field]))
                for j in range(0, len(ids), IN_CHUNK):
                    got = ent.rows_by(conn, key.anchor, ids[j:j + IN_CHUNK], fields=fields)
                    for rid, fetched in got.items():
                        for r in fetched.rows:
                            value = r.get(key.field)
                            if r.get(key.anchor) is not None and value is not None and value != "":
                                values[_node(source, key, rid)].append((i, str(value)))
    return {n: _digest(v) for n, v in values.items()}


def _from_text(v: str) -> Any:
    try:
        return datetime.fromisoformat(v)
    except ValueError:
        return v


def _text(v: Any) -> str | None:
    return None if v is None else (v.isoformat() if isinstance(v, date | datetime) else str(v))


def _state(settings: Settings) -> Engine:
    eng = engine_for(settings.state_db_url)
    create_state(eng)  # an index of an older layout is dropped and rebuilt
    index_state.create_all(eng)
    return eng


def _measure(tables: list[_Table]) -> None:
    """Each table's newest update timestamp and row count, now (taken before reading changes)."""
    for t in tables:
        p, stamped = t.part, "updated_at" in t.part.fields
        newest_col = func.max(p.col("updated_at")) if stamped else func.count()
        with engine_for(t.url).connect() as conn:
            newest, rows = conn.execute(select(type_coerce(newest_col, NullType()), func.count())
                                        .select_from(p.from_clause)).one()
        t.current = (p.fields["updated_at"].to_python(newest) if stamped and newest is not None else None, int(rows))


def _save(conn: Connection, tables: list[_Table], fingerprint: str, digests: dict[NodeId, str] | None) -> None:
    now = utcnow()
    conn.execute(delete(identity_watermark))
    if tables:
        conn.execute(insert(identity_watermark), [
            {"source": t.source, "part": t.name, "config": t.config, "value": _text(t.current[0]),
             "row_count": t.current[1], "recorded_at": now} for t in tables])
    conn.execute(delete(identity_meta).where(identity_meta.c.key == "fingerprint"))
    conn.execute(insert(identity_meta), [{"key": "fingerprint", "value": fingerprint}])
    if digests is not None:
        conn.execute(delete(identity_node))
        rows = [{"source": s, "record": r, "digest": d} for (s, r), d in digests.items()]
        for i in range(0, len(rows), _BATCH):
            conn.execute(insert(identity_node), rows[i:i + _BATCH])


def _rebuild(settings: Settings, tables: list[_Table], fingerprint: str, reason: str,
             build: bool = True) -> IndexUpdate:
    _measure(tables)  # before reading: what changes meanwhile is seen next time
    if build:
        build_index(settings, fingerprint=fingerprint)
    digests = _all_digests(settings)
    with _state(settings).begin() as conn:
        _save(conn, tables, fingerprint, digests)
    return IndexUpdate("rebuilt" if build else "unchanged", reason=reason)


def maintain_index(settings: Settings) -> IndexUpdate:
    """Bring the identity index up to date with the sources, in proportion to what changed
    (see the module docstring); the index is built when there is none."""
    eng = _state(settings)
    with eng.connect() as conn:
        stored = conn.execute(select(identity_meta.c.value).where(identity_meta.c.key == "fingerprint")).scalar()
        marks: dict[tuple[str, str], Mark] = {
            (r.source, r.part): (r.config, r.value, r.row_count) for r in conn.execute(select(identity_watermark))}
        nodes_known = conn.execute(select(identity_node.c.source).limit(1)).first() is not None
    fingerprint = source_fingerprint(settings)
    if stored == fingerprint and marks:
        return IndexUpdate("unchanged")
    if stored and fingerprint.startswith(UNAVAILABLE):
        return IndexUpdate("kept", reason="a source is down: the last good index is kept")
    tables = _tables(settings)
    if stored is None:
        return _rebuild(settings, tables, fingerprint, "no index yet")
    if not marks or not nodes_known:
        if stored == fingerprint:  # the index matches the sources: only its watermarks are new
            return _rebuild(settings, tables, fingerprint, "first identity watermarks", build=False)
        return _rebuild(settings, tables, fingerprint, "no identity watermarks yet")
    for t in tables:
        mark = marks.get((t.source, t.name))
        if mark is None or mark[0] != t.config:
            return _rebuild(settings, tables, fingerprint, f"{t.source}: a new source, URL or mapping")
    if len(marks) != len(tables):
        return _rebuild(settings, tables, fingerprint, "the identity tables changed")
    try:
        _measure(tables)
        for t in tables:
            if t.current[1] < marks[t.source, t.name][2]:
                return _rebuild(settings, tables, fingerprint, f"{t.source}.{t.name}: rows were deleted")
            if "updated_at" not in t.part.fields and t.current[1] != marks[t.source, t.name][2]:
                # no update timestamp: only its row count shows a change (as the fingerprint sees it)
                return _rebuild(settings, tables, fingerprint, f"{t.source}.{t.name} changed (no update timestamp)")
        changed = _changed_nodes(tables, marks)
        fresh = _digests_of(settings, changed)
    except SQLAlchemyError as exc:
        return IndexUpdate("kept", reason=f"a source could not be read ({type(exc).__name__}): the index is kept")
    old = _stored_digests(eng, changed)
    moved = [n for n in changed if fresh.get(n) != old.get(n)]
    if moved:
        return _rebuild(settings, tables, fingerprint, f"identity values of {len(moved)} record(s) changed")
    with eng.begin() as conn:
        _save(conn, tables, fingerprint, None)
    return IndexUpdate("incremental", changed_nodes=len(changed))


def _changed_nodes(tables: list[_Table], marks: dict[tuple[str, str], Mark]) -> set[NodeId]:
    """Nodes with an identity row updated after the watermark (any row: filters left out, so a
    soft-deleted row is seen), found by one range query per table and key anchor."""
    nodes: set[NodeId] = set()
    for t in tables:
        p, after = t.part, marks[t.source, t.name][1]
        if "updated_at" not in p.fields:
            continue  # its changes are seen by its row count (maintain_index)
        with engine_for(t.url).connect() as conn:
            for key in {k.anchor: k for k in t.keys}.values():
                stmt = select(type_coerce(p.col(key.anchor), NullType())).distinct().select_from(p.from_clause)
                if after is not None:
                    stmt = stmt.where(*p.within("updated_at", after=_from_text(after)))
                for (raw,) in conn.execute(stmt):
                    try:
                        value = None if raw is None else p.fields[key.anchor].to_python(raw)
                    except RowError:
                        continue
                    if value is not None and value != "":
                        nodes.add(_node(t.source, key, value))
    return nodes


def _stored_digests(eng: Engine, nodes: Iterable[NodeId]) -> dict[NodeId, str]:
    by_source: dict[str, list[str]] = defaultdict(list)
    for source, rid in nodes:
        by_source[source].append(rid)
    c = identity_node.c
    out: dict[NodeId, str] = {}
    with eng.connect() as conn:
        for source, rids in by_source.items():
            for i in range(0, len(rids), IN_CHUNK):
                for row in conn.execute(select(c.source, c.record, c.digest)
                                        .where(c.source == source, c.record.in_(rids[i:i + IN_CHUNK]))):
                    out[row.source, row.record] = row.digest
    return out


def index_rows(settings: Settings) -> tuple[list[tuple], list[tuple]]:
    """Every customer row and key row of the index, sorted (to compare two indexes)."""
    with engine_for(settings.state_db_url).connect() as conn:
        customers = sorted(tuple(r) for r in conn.execute(select(identity_customer)))
        keys = sorted(tuple(r) for r in conn.execute(select(identity_key)))
    return customers, keys
