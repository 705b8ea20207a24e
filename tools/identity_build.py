"""The identity index's tables and how the index is built: every connected customer source's
identity keys collected, grouped into customers by :mod:`tools.identity_graph`'s rule, and
written in one transaction; rebuilt when a source's configuration or row counts change.
Everything here is importable from ``tools.identity`` too (which resolves references).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable

from sqlalchemy import (
    Column,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    inspect,
    select,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from tools.guard import misconfiguration
from tools.identity_graph import (
    PERSON,
    Group,
    Node,
    NodeId,
    group_records,
    normalize_name,
)
from tools.mapping.engine import Mapping
from tools.mapping.loader import load_mapping
from tools.settings import Settings
from tools.sources.registry import engine_for

#: Sources whose records are customers; their priority decides the canonical record.
ANCHORED_SOURCES: tuple[str, ...] = ("crm", "billing", "support", "product", "commerce")
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


# ---------------------------------------------------------------- building
def _collect(settings: Settings) -> dict[NodeId, Node]:
    nodes: dict[NodeId, Node] = {}
    for source in ANCHORED_SOURCES:
        cfg = settings.source(source)
        if not cfg.url:
            continue
        try:
            _collect_source(source, cfg.url, load_mapping(cfg.mapping or source), nodes)
        except SQLAlchemyError as exc:
            # an unreachable source adds no keys; its customers resolve through the others. A
            # mapping the database refuses (a wrong column) is said once, not passed over in silence.
            if problem := misconfiguration(exc):
                log.warning("identity index: the %s source's identity keys were left out: %s "
                            "(run `custctx mappings check`)", source, problem)
            continue
    return nodes


def _absent_person_entities(conn: Connection, mapping: Mapping) -> set[str]:
    """Entities of person keys whose tables the source does not have (a Segment warehouse without
    ``aliases``): those keys are skipped. One catalogue query, and none without person keys."""
    entities = {k.entity for k in mapping.identity if k.person}
    seen = (conn.engine.url.render_as_string(), mapping.name)
    if not entities or seen in _PERSON_TABLES_PRESENT:
        return set()
    have = set(inspect(conn).get_table_names())
    absent = {e for e in entities
              if any(t not in have for p in mapping.entity(e).parts for t in (p.table, *(j["table"] for j in p.joins)))}
    if not absent:  # once there, asked no more (a table dropped later fails its query: the source is down)
        _PERSON_TABLES_PRESENT.add(seen)
    return absent


_PERSON_TABLES_PRESENT: set[tuple[str, str]] = set()


def _collect_source(source: str, url: str, mapping: Mapping, nodes: dict[NodeId, Node]) -> None:
    with engine_for(url).connect() as conn:
        absent = _absent_person_entities(conn, mapping)
        for key in mapping.identity:
            if key.person and key.entity in absent:
                continue
            fetched = mapping.entity(key.entity).rows(conn, fields=list(dict.fromkeys([key.anchor, key.field])))
            for r in fetched.rows:
                anchor, value = r.get(key.anchor), r.get(key.field)
                if anchor is None or value is None or value == "":
                    continue
                nid = (source, f"{PERSON}{anchor}" if key.person else str(anchor))
                node = nodes.get(nid)
                if node is None:
                    node = nodes[nid] = Node(person=key.person)
                node.add(key, str(value))


def customer_id_for(source: str, record_id: str) -> str:
    return "c_" + hashlib.sha1(f"{source}:{record_id}".encode()).hexdigest()[:12]


def _person_ids(group: Group, sole: set[NodeId]) -> dict[str, list[str]]:
    """Source → the person records a customer's person-level reads go by: a person-customer's own,
    and those of the persons riding with this customer only (one riding with several is nobody's)."""
    out: dict[str, set[str]] = {}
    for source, rid in (*group.members, *(r for r in group.riders if r in sole)):
        if rid.startswith(PERSON):
            out.setdefault(source, set()).add(rid.removeprefix(PERSON))
    return {source: sorted(ids) for source, ids in sorted(out.items())}


def _customer_row(group: Group, nodes: dict[NodeId, Node], sole: set[NodeId] | None = None) -> dict:
    order = {s: i for i, s in enumerate(ANCHORED_SOURCES)}
    members = sorted(group.members, key=lambda n: (order.get(n[0], len(order)), n[1]))
    anchors: dict[str, str] = {}
    for source, rid in members:
        if not rid.startswith(PERSON):  # a person-customer has no customer record in any source
            anchors.setdefault(source, rid)
    name = next((nodes[m].names[0] for m in members if nodes[m].names), members[0][1].removeprefix(PERSON))
    domains = list(dict.fromkeys(d for m in members for d in nodes[m].domains if ("domain", d) not in group.refused))
    emails = sorted({v for m in members for k, v in nodes[m].keys if k == "email"})
    return {
        "customer_id": customer_id_for(*members[0]),
        "name": name,
        "name_norm": normalize_name(name),
        "primary_domain": domains[0] if domains else None,
        "anchors": json.dumps(anchors),
        "domains": json.dumps(domains),
        "emails": json.dumps(emails[:100]),
        "persons": json.dumps(_person_ids(group, sole or set())),
    }


def build_index(settings: Settings, progress: Callable[[str, int, int], None] | None = None,
                fingerprint: str | None = None) -> int:
    """(Re)build the identity index from every connected source. Returns the customer count."""
    nodes = _collect(settings)
    customers: list[dict] = []
    keys: set[tuple[str, str, str]] = set()
    groups = group_records(nodes)
    rides = Counter(r for g in groups for r in g.riders)
    sole = {r for r, n in rides.items() if n == 1}
    for group in groups:
        row = _customer_row(group, nodes, sole)
        customers.append(row)
        keys.update((k, v, row["customer_id"]) for k, v in _group_keys(group, nodes))
    eng = engine_for(settings.state_db_url)
    create_state(eng)
    with eng.begin() as conn:
        for t in (identity_key, identity_customer, identity_meta):
            conn.execute(delete(t))
        for i in range(0, len(customers), _BATCH):
            conn.execute(insert(identity_customer), customers[i:i + _BATCH])
            if progress:
                progress("identity", min(i + _BATCH, len(customers)), len(customers))
        key_rows = [{"kind": k, "value": v[:255], "customer_id": c} for k, v, c in keys]
        for i in range(0, len(key_rows), _BATCH):
            conn.execute(insert(identity_key), key_rows[i:i + _BATCH])
        conn.execute(insert(identity_meta), [{"key": "fingerprint",
                                              "value": fingerprint or source_fingerprint(settings)}])
    return len(customers)


def create_state(eng: Engine) -> None:
    """Create the index tables; an index of an older layout (no ``persons`` column) is dropped
    first — it is derived data, rebuilt by the next :func:`ensure_index`."""
    have = inspect(eng)
    if have.has_table(identity_customer.name) and \
            "persons" not in {c["name"] for c in have.get_columns(identity_customer.name)}:
        state.drop_all(eng)
    state.create_all(eng)


def _group_keys(group: Group, nodes: dict[NodeId, Node]) -> set[tuple[str, str]]:
    """What a customer answers to: its records' values (but shared derived domains), the values
    of the persons riding with it, name + postcode pairs, and a person-customer's names."""
    out: set[tuple[str, str]] = set()
    for m in (*group.members, *group.riders):
        out |= nodes[m].keys | nodes[m].lookup_values()
    if all(nodes[m].person for m in group.members):
        out |= {("name", n) for m in group.members for x in nodes[m].names if (n := normalize_name(x))}
    return out - group.refused


UNAVAILABLE = "unavailable:"


def source_fingerprint(settings: Settings) -> str:
    """Changes whenever a connected customer source's configuration or row counts change.

    Starts with ``unavailable:`` when a source could not be reached.
    """
    parts, down = [], []
    for source in ANCHORED_SOURCES:
        cfg = settings.source(source)
        if not cfg.url:
            continue
        mapping = load_mapping(cfg.mapping or source)
        parts.append(f"{source}|{cfg.url}|{mapping.name}")
        try:
            with engine_for(cfg.url).connect() as conn:
                absent = _absent_person_entities(conn, mapping)
                absent -= {k.entity for k in mapping.identity if not k.person}  # an account key's table must be there
                for ent_name in dict.fromkeys(k.entity for k in mapping.identity if k.entity not in absent):
                    for p in mapping.entity(ent_name).parts:
                        upd = func.max(p.col("updated_at")) if "updated_at" in p.fields else func.count()
                        stmt = select(func.count(), upd).select_from(p.from_clause)
                        parts.append(f"{ent_name}:{tuple(conn.execute(stmt).one())}")
        except SQLAlchemyError:
            down.append(source)
    digest = hashlib.sha1("\n".join(parts).encode()).hexdigest()
    return f"{UNAVAILABLE}{','.join(down)}:{digest}" if down else digest


def ensure_index(settings: Settings, progress: Callable[[str, int, int], None] | None = None) -> bool:
    """Build the index when it is missing or its sources changed. True if it was rebuilt."""
    eng = engine_for(settings.state_db_url)
    create_state(eng)
    with eng.connect() as conn:
        stored = conn.execute(select(identity_meta.c.value).where(identity_meta.c.key == "fingerprint")).scalar()
    current = source_fingerprint(settings)
    if stored == current:
        return False
    if stored and current.startswith(UNAVAILABLE):
        return False  # keep the last good index while a source is down
    build_index(settings, progress, fingerprint=current)
    return True
