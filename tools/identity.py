"""Identity resolution: every known key of every source → one canonical customer.

The index is built from the identity keys each mapping declares (CRM company id,
billing customer id and ``crm_company_id`` link, support organization id, product
group id, contact and billing emails, domains, names; and for people: application
user ids, anonymous ids, support user ids, name + postcode). Which records are one
customer is :mod:`tools.identity_graph`'s rule: records that share an identifying
value are one (full-outer semantics: a customer known to one system only still
resolves); a value shared by several records of one source links none; a person
rides with the one customer their keys point to, or is a customer of their own.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

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
    or_,
    select,
)
from sqlalchemy.engine import Connection, Engine, RowMapping
from sqlalchemy.exc import SQLAlchemyError

from tools.guard import misconfiguration
from tools.identity_graph import (
    FREEMAIL,
    PERSON,
    Group,
    Node,
    NodeId,
    group_records,
    name_postcode,
    normalize_email,
    normalize_name,
)
from tools.mapping.engine import Mapping
from tools.mapping.loader import load_mapping
from tools.settings import Settings
from tools.sources.base import CustomerRef, is_email
from tools.sources.registry import engine_for

#: Sources whose records are customers; their priority decides the canonical record.
ANCHORED_SOURCES: tuple[str, ...] = ("crm", "billing", "support", "product", "commerce")
log = logging.getLogger(__name__)
ID_KINDS = {"crm": "crm_id", "billing": "billing_id", "support": "support_id", "product": "product_id",
            "commerce": "commerce_id"}
#: Explicit reference prefixes of people's keys (``user:<app user id>``, ...) → key kind.
PERSON_PREFIXES = {"user": "user_id", "anon": "anonymous_id", "support_user": "support_user_id",
                   "zendesk_user": "support_user_id"}
#: Key kinds a bare reference (no prefix) is looked up as, besides the record ids.
BARE_KINDS = ("user_id", "anonymous_id")
NAME_POSTCODE = "name+postcode:"
__all__ = ["FREEMAIL", "normalize_email", "normalize_name"]  # re-exported from tools.identity_graph
_DOMAIN = re.compile(r"^(?:[a-z][a-z0-9+.-]*://)?(?:www\.)?([a-z0-9-]+(?:\.[a-z0-9-]+)+)/?$", re.IGNORECASE)
_BATCH = 20_000

MAX_REFERENCE_LENGTH = 320
"""Longest customer reference accepted (characters, after trimming): an email address has at
most 254, a domain 253, an id or a company name far fewer. Longer ones are refused before
any query (a name search with a huge LIKE pattern fails inside SQLite)."""
_NOT_TEXT = re.compile("[\x00\ud800-\udfff]")

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


# ------------------------------------------------------------------- errors
class ReferenceError_(ValueError):
    """Base of lookup failures; the message is one line meant for a person."""


class BadReference(ReferenceError_):
    """The reference is malformed (e.g. an invalid email address)."""


class CustomerNotFound(ReferenceError_):
    def __init__(self, query: str, suggestions: list[str]):
        self.query, self.suggestions = query, suggestions
        hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"No customer matches {query!r}.{hint}")


@dataclass(frozen=True)
class Candidate:
    customer_id: str
    name: str
    domain: str | None
    matched_by: str


class AmbiguousCustomer(ReferenceError_):
    def __init__(self, query: str, candidates: list[Candidate]):
        self.query, self.candidates = query, candidates
        names = "; ".join(f"{c.name} ({c.domain or c.customer_id})" for c in candidates)
        super().__init__(f"{query!r} matches {len(candidates)} customers: {names}. Use a domain, email or id.")


def check_reference(text: str, what: str = "a customer reference") -> str:
    """``text`` trimmed, if it can be a reference; else a one-line :class:`BadReference` (too
    long, or not text: NUL characters or invalid UTF-8 a database cannot take).

    Raises:
        BadReference: the message names the limit, never echoes a huge value.
    """
    q = text.strip()
    if len(q) > MAX_REFERENCE_LENGTH:
        raise BadReference(f"{what} has {len(q):,} characters; at most {MAX_REFERENCE_LENGTH} are accepted "
                           "(give an email, a domain, an id or a name)")
    if _NOT_TEXT.search(q):
        raise BadReference(f"{what} holds a NUL character or invalid UTF-8: {q[:40]!r}")
    return q


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


# ---------------------------------------------------------------- resolving
class IdentityIndex:
    """Lookups against a built index."""

    def __init__(self, engine: Engine):
        self.engine = engine

    @classmethod
    def for_settings(cls, settings: Settings) -> IdentityIndex:
        return cls(engine_for(settings.state_db_url))

    def get(self, customer_id: str) -> CustomerRef | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(identity_customer).where(identity_customer.c.customer_id == customer_id)).first()
        return _ref(row._mapping) if row else None

    def _by_key(self, pairs: Iterable[tuple[str, str]]) -> list[str]:
        conds = [(identity_key.c.kind == k) & (identity_key.c.value == v) for k, v in pairs]
        if not conds:
            return []
        with self.engine.connect() as conn:
            return sorted({r[0] for r in conn.execute(select(identity_key.c.customer_id).where(or_(*conds)))})

    def _candidates(self, ids: list[str], matched_by: str) -> list[Candidate]:
        refs = [self.get(i) for i in ids]
        return [Candidate(r.customer_id, r.name, r.primary_domain, matched_by) for r in refs if r]

    def _one(self, query: str, ids: list[str], matched_by: str) -> tuple[CustomerRef, str] | None:
        if not ids:
            return None
        if len(ids) > 1:
            raise AmbiguousCustomer(query, self._candidates(ids, matched_by))
        ref = self.get(ids[0])
        return (ref, matched_by) if ref else None

    def resolve(self, query: str) -> tuple[CustomerRef, str]:
        """Resolve an email, id (``crm:1001`` or bare), domain or name; or a person by
        ``user:<app user id>``, ``anon:<anonymous id>``, ``support_user:<id>`` (``zendesk_user:``)
        or ``name+postcode:<name>, <postcode>``.

        Returns the customer and what matched (``email``, ``domain``, ``crm_id``, ``user_id``, ``name``, ...).
        Raises BadReference, AmbiguousCustomer or CustomerNotFound with a one-line message.
        """
        q = check_reference(query)
        if not q:
            raise BadReference("Give a customer: an email, a domain, an id or a name.")
        if q.lower().startswith(NAME_POSTCODE):
            return self._resolve_name_postcode(q)
        source, sep, rid = q.partition(":")
        kind = ID_KINDS.get(source.lower()) or PERSON_PREFIXES.get(source.lower())
        if sep and kind:
            if not rid.strip():
                raise BadReference(f"{q!r} names no id after {source.lower()}:.")
            found = self._one(q, self._by_key([(kind, rid.strip())]), kind)
            if found:
                return found
            raise CustomerNotFound(q, [])
        if "@" in q:
            return self._resolve_email(q)
        if re.fullmatch(r"c_[0-9a-f]{12}", q) and (ref := self.get(q)):
            return ref, "customer_id"
        found = self._one(q, self._by_key((kind, q) for kind in (*ID_KINDS.values(), *BARE_KINDS)), "id")
        if found:
            return found
        if (m := _DOMAIN.match(q)) and " " not in q:
            found = self._one(q, self._by_key([("domain", m.group(1).lower())]), "domain")
            if found:
                return found
        return self._resolve_name(q)

    def _resolve_email(self, q: str) -> tuple[CustomerRef, str]:
        if not is_email(q):
            raise BadReference(f"{q!r} is not a valid email address.")
        email = q.lower()
        found = self._one(q, self._by_key([("email", email), ("email", normalize_email(email))]), "email")
        if found:
            return found
        domain = email.rsplit("@", 1)[1]
        if domain not in FREEMAIL:
            found = self._one(q, self._by_key([("domain", domain)]), "email domain")
            if found:
                return found
        raise CustomerNotFound(q, [])

    def _resolve_name_postcode(self, q: str) -> tuple[CustomerRef, str]:
        name, sep, postcode = q[len(NAME_POSTCODE):].rpartition(",")
        value = name_postcode(name, postcode) if sep else ""
        if not value:
            raise BadReference(f"{q!r}: write a person as name+postcode:<name>, <postcode>.")
        found = self._one(q, self._by_key([("name_postcode", value)]), "name+postcode")
        if found:
            return found
        raise CustomerNotFound(q, [])

    def _resolve_name(self, q: str) -> tuple[CustomerRef, str]:
        norm = normalize_name(q)
        if not norm:
            raise BadReference(f"{q!r} is not a customer reference.")
        found = self._one(q, self._by_key([("name", norm)]), "name")
        if found:
            return found
        c = identity_key.c
        with self.engine.connect() as conn:
            ids = sorted({r[0] for r in conn.execute(
                select(c.customer_id).where(c.kind == "name", or_(c.value.like(f"{norm} %"), c.value.like(f"% {norm} %"),
                                                                  c.value.like(f"% {norm}")))
                .limit(25))})
        found = self._one(q, ids, "name")
        if found:
            return found
        raise CustomerNotFound(q, self.closest_names(norm))

    def closest_names(self, norm: str, n: int = 3) -> list[str]:
        c = identity_customer.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(c.name, c.name_norm).where(c.name_norm.like(f"{norm[:1]}%"))).all()
        by_norm = {r.name_norm: r.name for r in rows}
        return [by_norm[m] for m in difflib.get_close_matches(norm, list(by_norm), n=n, cutoff=0.5)]


def _ref(row: RowMapping) -> CustomerRef:
    return CustomerRef(
        customer_id=row["customer_id"], name=row["name"], anchors=json.loads(row["anchors"]),
        domains=tuple(json.loads(row["domains"])), emails=tuple(json.loads(row["emails"])),
        person_ids={k: tuple(v) for k, v in json.loads(row.get("persons") or "{}").items()},
    )
