"""The identity index's tables and how the index is built: every connected customer source's
identity keys collected, grouped into customers by :mod:`tools.identity_graph`'s rule, and
written in one transaction — with what the index keeps to be maintained from the changed rows
afterwards (each record's identity values, who holds each value, the tables' watermarks:
``tools.refresh.index``). Everything here is importable from ``tools.identity`` too (which
resolves references).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from sqlalchemy import (
    Column,
    MetaData,
    String,
    Table,
    Text,
    delete,
    insert,
    inspect,
    select,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from tools.guard import misconfiguration
from tools.identity_graph import PERSON, Node, NodeId, group_records
from tools.identity_marks import (
    ANCHORED_SOURCES,
    IdentityTable,
    marks_state,
    measured_tables,
    save_marks,
    usable_keys,
)
from tools.identity_rows import (
    Values,
    customer_id_for,  # noqa: F401 - importable from here (tools.identity)
    customer_rows,
    identity_member,
    identity_record,
    identity_value,
    node_state,
    record_row,
    riders_alone,
    value_rows,
)
from tools.mapping.engine import Mapping
from tools.mapping.loader import load_mapping
from tools.settings import Settings
from tools.sources.registry import engine_for

log = logging.getLogger("tools.identity")  # the index's warnings keep the name they always had
_BATCH = 20_000

state = MetaData()
identity_customer = Table(
    "identity_customer", state,
    Column("customer_id", String(40), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("name_norm", String(255), nullable=False, index=True),
    Column("primary_domain", String(255)),
    Column("anchors", Text, nullable=False),  # JSON {source: record id}
    Column("domains", Text, nullable=False),  # JSON list, primary first
    Column("emails", Text, nullable=False),  # JSON list
    Column("persons", Text),  # JSON {source: [person record ids]} (CustomerRef.person_ids)
)
identity_key = Table(
    "identity_key", state,
    Column("kind", String(20), primary_key=True),
    Column("value", String(255), primary_key=True),
    Column("customer_id", String(40), primary_key=True),
)
identity_meta = Table(
    "identity_meta", state,
    Column("key", String(50), primary_key=True),
    Column("value", Text),
)
#: The sources' fingerprint the index is current with. Not an index table: recording that an
#: update changed nothing (an MRR) does not move the resolution cache's generation.
identity_sync = Table(
    "identity_sync", node_state,
    Column("key", String(50), primary_key=True),
    Column("value", Text),
)


# ---------------------------------------------------------------- building
def _collect(settings: Settings) -> tuple[dict[NodeId, Node], dict[NodeId, Values]]:
    nodes: dict[NodeId, Node] = {}
    values: dict[NodeId, Values] = {}
    for source in ANCHORED_SOURCES:
        cfg = settings.source(source)
        if not cfg.url:
            continue
        try:
            _collect_source(source, cfg.url, load_mapping(cfg.mapping or source), nodes, values)
        except SQLAlchemyError as exc:
            # an unreachable source adds no keys; its customers resolve through the others. A
            # mapping the database refuses (a wrong column) is said once, not passed over in silence.
            if problem := misconfiguration(exc):
                log.warning("identity index: the %s source's identity keys were left out: %s "
                            "(run `custctx mappings check`)", source, problem)
            continue
    return nodes, values


def _collect_source(source: str, url: str, mapping: Mapping, nodes: dict[NodeId, Node],
                    values: dict[NodeId, Values]) -> None:
    with engine_for(url).connect() as conn:
        for i, key in usable_keys(conn, mapping):
            fetched = mapping.entity(key.entity).rows(conn, fields=list(dict.fromkeys([key.anchor, key.field])))
            for r in fetched.rows:
                anchor, value = r.get(key.anchor), r.get(key.field)
                if anchor is None or value is None or value == "":
                    continue
                nid = (source, f"{PERSON}{anchor}" if key.person else str(anchor))
                node = nodes.get(nid)
                if node is None:
                    node = nodes[nid] = Node(person=key.person)
                    values[nid] = []
                node.add(key, str(value))
                values[nid].append((i, str(value)))


def build_index(settings: Settings, progress: Callable[[str, int, int], None] | None = None,
                fingerprint: str | None = None) -> int:
    """(Re)build the identity index from every connected source. Returns the customer count.

    Also records what keeps it current from the changed rows afterwards: the identity tables'
    watermarks (measured before reading), each record's values and who holds each value."""
    measured = measured_tables(settings)  # before reading: what changes meanwhile is seen next time
    nodes, values = _collect(settings)
    groups = group_records(nodes)
    customers, keys, members = customer_rows(groups, nodes, riders_alone(groups))
    eng = engine_for(settings.state_db_url)
    create_state(eng)
    with eng.begin() as conn:
        for t in (identity_key, identity_customer, identity_meta, identity_member, identity_value, identity_record):
            conn.execute(delete(t))
        for i in range(0, len(customers), _BATCH):
            _insert(conn, identity_customer, customers[i:i + _BATCH])
            if progress:
                progress("identity", min(i + _BATCH, len(customers)), len(customers))
        # each table's rows in its key's order: appended to the b-tree, not scattered over it
        _insert(conn, identity_key, [{"kind": k, "value": v, "customer_id": c} for k, v, c in sorted(keys)])
        _insert(conn, identity_member, sorted(members, key=lambda r: (r["source"], r["record"], r["customer_id"])))
        _insert(conn, identity_record, [record_row(n, values[n]) for n in sorted(values)])
        _insert(conn, identity_value, sorted((r for n, node in nodes.items() for r in value_rows(n, node)),
                                             key=lambda r: (r["kind"], r["value"], r["source"], r["record"])))
        fingerprint = fingerprint or fingerprint_of(*measured)
        conn.execute(insert(identity_meta), [{"key": "fingerprint", "value": fingerprint}])
        record_sync(conn, fingerprint)
        save_marks(conn, [] if measured[2] else measured[1])  # a source down: none, the next update builds
    return len(customers)


def _insert(conn: Connection, table: Table, rows: list[dict]) -> None:
    """Insert plain rows through the driver's executemany (no per-row parameter processing:
    the index's columns are text and integers)."""
    if not rows:
        return
    cols = list(rows[0])
    named = conn.dialect.paramstyle in ("qmark", "named")  # sqlite3 takes :name with dicts either way
    if not named and conn.dialect.paramstyle != "pyformat":
        conn.execute(insert(table), rows)
        return
    marks = ", ".join(f":{c}" if named else f"%({c})s" for c in cols)
    prep = conn.dialect.identifier_preparer
    sql = f"INSERT INTO {prep.format_table(table)} ({', '.join(prep.quote(c) for c in cols)}) VALUES ({marks})"
    for i in range(0, len(rows), _BATCH):
        conn.exec_driver_sql(sql, rows[i:i + _BATCH])


def record_sync(conn: Connection, fingerprint: str) -> None:
    """Record the sources' fingerprint the index is now current with (no index table written)."""
    conn.execute(delete(identity_sync))
    conn.execute(insert(identity_sync), [{"key": "fingerprint", "value": fingerprint}])


def stored_fingerprint(conn: Connection) -> str | None:
    """The sources' fingerprint the index was last brought up to date with (None: no index)."""
    synced = conn.execute(select(identity_sync.c.value).where(identity_sync.c.key == "fingerprint")).scalar()
    built = conn.execute(select(identity_meta.c.value).where(identity_meta.c.key == "fingerprint")).scalar()
    return synced if synced is not None and built is not None else built


_CREATED: set[tuple[str, tuple[int, int] | None]] = set()


def _identity_of(eng: Engine) -> tuple[str, tuple[int, int] | None]:
    """The database behind ``eng``: its URL, and for a SQLite file the file itself (one deleted
    and created again at the same path is another database)."""
    path = eng.url.database if eng.dialect.name == "sqlite" else None
    try:
        st = os.stat(path) if path and path != ":memory:" else None
    except OSError:
        st = None
    return eng.url.render_as_string(hide_password=False), (st.st_dev, st.st_ino) if st else None


def create_state(eng: Engine) -> None:
    """Create the index tables (once per SQLite file and process); an index of an older layout
    (no ``persons`` column) is dropped first — it is derived data, rebuilt by the next
    :func:`ensure_index`."""
    seen = _identity_of(eng)
    if seen in _CREATED:
        return
    _create_state(eng)
    if (now := _identity_of(eng))[1] is not None:  # a SQLite file (a server's database may be dropped and made again)
        _CREATED.add(now)


def _create_state(eng: Engine) -> None:
    have = inspect(eng)
    if have.has_table(identity_customer.name) and \
            "persons" not in {c["name"] for c in have.get_columns(identity_customer.name)}:
        state.drop_all(eng)
        node_state.drop_all(eng)
    state.create_all(eng)
    node_state.create_all(eng)
    marks_state.create_all(eng)


UNAVAILABLE = "unavailable:"


def source_fingerprint(settings: Settings) -> str:
    """Changes whenever a connected customer source's configuration, row counts or newest
    update change (:func:`tools.identity_marks.measured_tables`).

    Starts with ``unavailable:`` when a source could not be reached.
    """
    return fingerprint_of(*measured_tables(settings))


def fingerprint_of(digest: str, tables: list[IdentityTable], down: list[str]) -> str:
    return f"{UNAVAILABLE}{','.join(down)}:{digest}" if down else digest


def ensure_index(settings: Settings, progress: Callable[[str, int, int], None] | None = None) -> bool:
    """Build the index when it is missing or its sources changed. True if it was rebuilt.

    A whole build whenever the fingerprint moved; start-up and refresh keep the index in
    proportion to the change instead (``tools.refresh.index.maintain_index``)."""
    eng = engine_for(settings.state_db_url)
    create_state(eng)
    with eng.connect() as conn:
        stored = stored_fingerprint(conn)
    current = source_fingerprint(settings)
    if stored == current:
        return False
    if stored and current.startswith(UNAVAILABLE):
        return False  # keep the last good index while a source is down
    build_index(settings, progress, fingerprint=current)
    return True
