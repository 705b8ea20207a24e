"""Keeping the identity index current from the rows that changed, not by rebuilding it.

``tools.identity.ensure_index`` rebuilds the whole index whenever a customer source's
fingerprint moves. :func:`maintain_index` does the same job in proportion to the change (it
is what start-up, ``agent.bootstrap.ready``, and every refresh run):

1. A build records, beside the index, the identity tables' watermarks (newest update
   timestamp, row count: ``tools.identity_marks``), every source record's (*node's*)
   identity values in row order (``identity_record``), who holds each linking value
   (``identity_value``) and which records every customer is made of or carries
   (``identity_member``: ``tools.identity_rows``).
2. The changed rows are found with one range query per table and key anchor
   (``updated_at > watermark``; no entity filter, so a row soft-deleted since is seen
   too); a table without an update timestamp whose row count moved, or one that lost rows
   (a hard delete), is read again whole and compared with what was stored — that table,
   not every source. The changed records' identity values are read again by point lookups.
3. A record whose values are unchanged changes nothing: an MRR change, a new sync stamp, a
   renewal date — no index row is written and nothing else is read; only the watermarks
   and the recorded fingerprint move (neither is an index table: the resolution cache's
   generation stays).
4. Changed values — a new domain, a contact moved to another company, a new, merged, split
   or deleted record — recompute only the customers they touch (``tools.refresh.regroup``),
   with the build's own rule and the same result as a fresh build; only rows that differ are
   written (which moves the generation).

A full build is left for: no index or watermarks yet, a source's URL or mapping changed, or
the set of identity tables changed.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, type_coerce
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.types import NullType

from tools.identity import (
    build_index,
    create_state,
    identity_customer,
    identity_key,
)
from tools.identity_build import fingerprint_of, record_sync, stored_fingerprint
from tools.identity_graph import PERSON, Value
from tools.identity_marks import (
    IdentityTable,
    Mark,
    from_text,
    load_marks,
    measured_tables,
    save_marks,
    usable_keys,
)
from tools.identity_rows import Values, identity_record, node_of
from tools.mapping.conversions import RowError
from tools.mapping.engine import IN_CHUNK, IdentityKey
from tools.mapping.loader import load_mapping
from tools.refresh.regroup import holders_of, linking, regroup, stored_values
from tools.settings import Settings
from tools.sources.registry import engine_for

NodeId = tuple[str, str]  # (source, record id)


@dataclass
class IndexUpdate:
    """What :func:`maintain_index` did."""

    mode: str  # unchanged | incremental (watermarks moved, maybe some customers) | rebuilt | kept (a source is down)
    changed_nodes: int = 0  # source records with a changed identity row (their values read again)
    reason: str = ""  # why a full build was done, or the index kept
    moved_nodes: int = 0  # records whose identity values changed
    customers: int = 0  # customers written (recomputed and found different)


def _node(source: str, key: IdentityKey, anchor: Any) -> NodeId:
    return (source, f"{PERSON}{anchor}" if key.person else str(anchor))


def _values_of(settings: Settings, nodes: Iterable[NodeId]) -> dict[NodeId, Values]:
    """The identity values of these nodes now, read by their anchors (point lookups, IN_CHUNK
    at a time); a node without rows is absent."""
    wanted: dict[str, set[str]] = defaultdict(set)
    for source, rid in nodes:
        wanted[source].add(rid)
    values: dict[NodeId, Values] = defaultdict(list)
    for source, rids in wanted.items():
        cfg = settings.source(source)
        if not cfg.url:
            continue
        mapping = load_mapping(cfg.mapping or source)
        with engine_for(cfg.url).connect() as conn:
            for i, key in usable_keys(conn, mapping):
                ids = sorted(r.removeprefix(PERSON) for r in rids if r.startswith(PERSON) == key.person)
                ent = mapping.entity(key.entity)
                fields = list(dict.fromkeys([key.anchor, key.field]))
                for j in range(0, len(ids), IN_CHUNK):
                    got = ent.rows_by(conn, key.anchor, ids[j:j + IN_CHUNK], fields=fields)
                    for rid, fetched in got.items():
                        for r in fetched.rows:
                            value = r.get(key.field)
                            if r.get(key.anchor) is not None and value is not None and value != "":
                                values[_node(source, key, rid)].append((i, str(value)))
    return dict(values)


def _state(settings: Settings) -> Engine:
    eng = engine_for(settings.state_db_url)
    create_state(eng)  # an index of an older layout is dropped and rebuilt
    return eng


def _rebuild(settings: Settings, reason: str, progress: Callable[[str, int, int], None] | None) -> IndexUpdate:
    build_index(settings, progress)  # it records the watermarks and the records' values too
    return IndexUpdate("rebuilt", reason=reason)


def maintain_index(settings: Settings, progress: Callable[[str, int, int], None] | None = None) -> IndexUpdate:
    """Bring the identity index up to date with the sources, in proportion to what changed
    (see the module docstring); the index is built when there is none (``progress`` hears
    a build's rows, as the CLI shows them)."""
    eng = _state(settings)
    with eng.connect() as conn:
        stored = stored_fingerprint(conn)
        marks = load_marks(conn)
        records_known = conn.execute(select(identity_record.c.source).limit(1)).first() is not None
    digest, tables, down = measured_tables(settings)
    fingerprint = fingerprint_of(digest, tables, down)
    if stored == fingerprint and marks:
        return IndexUpdate("unchanged")
    if stored and down:
        return IndexUpdate("kept", reason="a source is down: the last good index is kept")
    if stored is None:
        return _rebuild(settings, "no index yet", progress)
    if not marks or not records_known:
        return _rebuild(settings, "no identity watermarks yet", progress)
    for t in tables:
        mark = marks.get((t.source, t.name))
        if mark is None or mark[0] != t.config:
            return _rebuild(settings, f"{t.source}: a new source, URL or mapping", progress)
    if len(marks) != len(tables):
        return _rebuild(settings, "the identity tables changed", progress)
    try:
        rescan = [t for t in tables if t.current[1] < marks[t.source, t.name][2]
                  or (not t.stamped and t.current[1] != marks[t.source, t.name][2])]
        changed = _changed_nodes([t for t in tables if t.stamped], marks) | _rescanned(eng, rescan)
        fresh = _values_of(settings, changed)
        # a row that moved to another record (a contact to another company) left its old record:
        # the other holders, in the same source, of the values a changed record gained are read too
        with eng.connect() as conn:
            left = _left_behind(conn, _keys(tables), changed, fresh)
        fresh.update(_values_of(settings, left))
        changed |= left
    except SQLAlchemyError as exc:
        return IndexUpdate("kept", reason=f"a source could not be read ({type(exc).__name__}): the index is kept")
    with eng.begin() as conn:
        _serialise(conn)
        if stored_fingerprint(conn) == fingerprint:  # another process (several start at once) did it meanwhile
            return IndexUpdate("unchanged")
        old = stored_values(conn, changed)
        moved = {n: fresh.get(n) for n in changed if fresh.get(n) != old.get(n)}
        written = regroup(conn, _keys(tables), moved) if moved else 0
        record_sync(conn, fingerprint)
        save_marks(conn, tables)
    return IndexUpdate("incremental", changed_nodes=len(changed), moved_nodes=len(moved), customers=written)


def _serialise(conn: Connection) -> None:
    """Take the index's write lock first thing in the transaction, so two processes updating at
    once (API workers and the worker start together) run one after the other and the second
    sees what the first wrote; on other databases the unique keys still refuse a double write."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # the driver begins only before a write: a write lock now
    elif conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(1732017)")  # released at commit or rollback


def _left_behind(conn: Connection, keys: dict[str, tuple[IdentityKey, ...]], changed: set[NodeId],
                 fresh: dict[NodeId, Values]) -> set[NodeId]:
    """Records of the same source that held a value a changed record gained (it may have moved)."""
    old = stored_values(conn, changed)
    gained: dict[str, set[Value]] = defaultdict(set)
    for n in changed:
        if n[0] in keys and fresh.get(n):
            before = linking(node_of(keys[n[0]], old.get(n, [])))
            gained[n[0]] |= linking(node_of(keys[n[0]], fresh[n])) - before
    out: set[NodeId] = set()
    for source, values in gained.items():
        out.update(h for hs in holders_of(conn, values).values() for h, _ in hs if h[0] == source)
    return out - changed


def _keys(tables: list[IdentityTable]) -> dict[str, tuple[IdentityKey, ...]]:
    return {t.source: t.mapping.identity for t in tables}


def _changed_nodes(tables: list[IdentityTable], marks: dict[tuple[str, str], Mark]) -> set[NodeId]:
    """Nodes with an identity row updated after the watermark (any row: filters left out, so a
    soft-deleted row is seen), found by one range query per table and key anchor."""
    nodes: set[NodeId] = set()
    for t in tables:
        p, after = t.part, marks[t.source, t.name][1]
        if after is not None and t.current[0] is not None and from_text(after) == t.current[0]:
            continue  # nothing newer than the watermark (the newest stamp was just measured)
        with engine_for(t.url).connect() as conn:
            for key in {k.anchor: k for _, k in t.keys}.values():
                stmt = select(type_coerce(p.col(key.anchor), NullType())).distinct().select_from(p.from_clause)
                if after is not None:
                    stmt = stmt.where(*p.within("updated_at", after=from_text(after)))
                for (raw,) in conn.execute(stmt):
                    try:
                        value = None if raw is None else p.fields[key.anchor].to_python(raw)
                    except RowError:
                        continue
                    if value is not None and value != "":
                        nodes.add(_node(t.source, key, value))
    return nodes


def _rescanned(eng: Engine, tables: list[IdentityTable]) -> set[NodeId]:
    """Nodes whose values from these tables' entities differ from the stored ones: the tables
    without an update timestamp whose row count moved, and those that lost rows, read whole."""
    out: set[NodeId] = set()
    done: set[tuple[str, str]] = set()
    for t in tables:
        if (t.source, t.entity) in done:
            continue
        done.add((t.source, t.entity))
        mine = {i for i, _ in t.keys}
        now: dict[NodeId, Values] = defaultdict(list)
        with engine_for(t.url).connect() as conn:
            for i, key in t.keys:
                fields = list(dict.fromkeys([key.anchor, key.field]))
                for r in t.mapping.entity(t.entity).rows(conn, fields=fields).rows:
                    anchor, value = r.get(key.anchor), r.get(key.field)
                    if anchor is not None and value is not None and value != "":
                        now[_node(t.source, key, anchor)].append((i, str(value)))
        c = identity_record.c
        with eng.connect() as conn:
            stored = {(t.source, r.record): [(int(i), str(v)) for i, v in json.loads(r.vals) if int(i) in mine]
                      for r in conn.execute(select(c.record, c.vals).where(c.source == t.source))}
        for nid in set(now) | {n for n, v in stored.items() if v}:
            if now.get(nid, []) != stored.get(nid, []):
                out.add(nid)
    return out


def index_rows(settings: Settings) -> tuple[list[tuple], list[tuple]]:
    """Every customer row and key row of the index, sorted (to compare two indexes)."""
    with engine_for(settings.state_db_url).connect() as conn:
        customers = sorted(tuple(r) for r in conn.execute(select(identity_customer)))
        keys = sorted(tuple(r) for r in conn.execute(select(identity_key)))
    return customers, keys
