"""Identity resolution: every known key of every source → one canonical customer.

The index is built from the identity keys each mapping declares (CRM company id,
billing customer id and ``crm_company_id`` link, support organization id, product
group id, contact and billing emails, domains, names). Source records that share a
linkable key (anything but a name) are the same customer: full-outer semantics, so
a customer known to one system only still resolves.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy import Column, MetaData, String, Table, Text, delete, func, insert, or_, select
from sqlalchemy.engine import Engine, RowMapping
from sqlalchemy.exc import SQLAlchemyError

from tools.mapping.engine import Mapping
from tools.mapping.loader import load_mapping
from tools.settings import Settings
from tools.sources.base import CustomerRef, is_email
from tools.sources.registry import engine_for

#: Sources whose records are customers; their priority decides the canonical record.
ANCHORED_SOURCES: tuple[str, ...] = ("crm", "billing", "support", "product")
ID_KINDS = {"crm": "crm_id", "billing": "billing_id", "support": "support_id", "product": "product_id"}
FREEMAIL = frozenset({
    "gmail.com", "googlemail.com", "yahoo.com", "hotmail.com", "outlook.com", "live.com", "icloud.com",
    "me.com", "aol.com", "proton.me", "protonmail.com", "gmx.com", "gmx.de", "mail.com", "yandex.ru",
    "qq.com", "163.com",
})
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


# ---------------------------------------------------------------- normalising
def normalize_name(name: str) -> str:
    """Case-, accent- and punctuation-insensitive form of a company name."""
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().casefold()
    return " ".join(re.sub(r"[^a-z0-9]+", " ", folded).split())


def normalize_email(email: str) -> str:
    """Lower-case, with plus-addressing removed: rachael+support@tyrell.fr → rachael@tyrell.fr."""
    local, _, domain = email.strip().lower().partition("@")
    return f"{local.split('+', 1)[0]}@{domain}"


def _key_values(kind: str, value: str, derive_domain: bool) -> Iterable[tuple[str, str]]:
    if kind == "email":
        v = value.strip().lower()
        if not is_email(v):
            return
        yield "email", v
        yield "email", normalize_email(v)
        dom = v.rsplit("@", 1)[1]
        if derive_domain and dom not in FREEMAIL:
            yield "domain", dom
    elif kind == "name":
        n = normalize_name(value)
        if n:
            yield "name", n
    elif kind == "domain":
        v = value.strip().lower()
        if v and v not in FREEMAIL:
            yield "domain", v
    else:
        yield kind, value.strip()


# ---------------------------------------------------------------- building
@dataclass
class _Node:
    keys: set[tuple[str, str]] = field(default_factory=set)
    names: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)


def _collect(settings: Settings) -> dict[tuple[str, str], _Node]:
    nodes: dict[tuple[str, str], _Node] = defaultdict(_Node)
    for source in ANCHORED_SOURCES:
        cfg = settings.source(source)
        if not cfg.url:
            continue
        try:
            _collect_source(source, cfg.url, load_mapping(cfg.mapping or source), nodes)
        except SQLAlchemyError:
            continue  # an unreachable source adds no keys; its customers resolve through the others
    return nodes


def _collect_source(source: str, url: str, mapping: Mapping, nodes: dict[tuple[str, str], _Node]) -> None:
    with engine_for(url).connect() as conn:
        for key in mapping.identity:
            fetched = mapping.entity(key.entity).rows(conn, fields=list(dict.fromkeys([key.anchor, key.field])))
            for r in fetched.rows:
                anchor, value = r.get(key.anchor), r.get(key.field)
                if anchor is None or value is None or value == "":
                    continue
                node = nodes[(source, str(anchor))]
                if key.kind == "name":
                    node.names.append(str(value))
                for kv in _key_values(key.kind, str(value), key.derive_domain):
                    node.keys.add(kv)
                    if kv[0] == "domain":
                        node.domains.append(kv[1])


def _components(nodes: dict[tuple[str, str], _Node]) -> list[list[tuple[str, str]]]:
    parent = {n: n for n in nodes}

    def find(n: tuple[str, str]) -> tuple[str, str]:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    owner: dict[tuple[str, str], tuple[str, str]] = {}
    for n, node in nodes.items():
        for kv in node.keys:
            if kv[0] == "name":
                continue  # names never link records: two companies may share one
            other = owner.setdefault(kv, n)
            ra, rb = find(n), find(other)
            if ra != rb:
                parent[rb] = ra
    groups: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for n in nodes:
        groups[find(n)].append(n)
    return list(groups.values())


def customer_id_for(source: str, record_id: str) -> str:
    return "c_" + hashlib.sha1(f"{source}:{record_id}".encode()).hexdigest()[:12]


def _customer_row(members: list[tuple[str, str]], nodes: dict[tuple[str, str], _Node]) -> dict:
    order = {s: i for i, s in enumerate(ANCHORED_SOURCES)}
    members = sorted(members, key=lambda n: (order[n[0]], n[1]))
    anchors: dict[str, str] = {}
    for source, rid in members:
        anchors.setdefault(source, rid)
    name = next((nodes[m].names[0] for m in members if nodes[m].names), members[0][1])
    domains = list(dict.fromkeys(d for m in members for d in nodes[m].domains))
    emails = sorted({v for m in members for k, v in nodes[m].keys if k == "email"})
    return {
        "customer_id": customer_id_for(*members[0]),
        "name": name,
        "name_norm": normalize_name(name),
        "primary_domain": domains[0] if domains else None,
        "anchors": json.dumps(anchors),
        "domains": json.dumps(domains),
        "emails": json.dumps(emails[:100]),
    }


def build_index(settings: Settings, progress: Callable[[str, int, int], None] | None = None,
                fingerprint: str | None = None) -> int:
    """(Re)build the identity index from every connected source. Returns the customer count."""
    nodes = _collect(settings)
    comps = _components(nodes)
    customers: list[dict] = []
    keys: set[tuple[str, str, str]] = set()
    for comp in comps:
        row = _customer_row(comp, nodes)
        customers.append(row)
        for m in comp:
            keys.update((k, v, row["customer_id"]) for k, v in nodes[m].keys)
    eng = engine_for(settings.state_db_url)
    state.create_all(eng)
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
                for ent_name in dict.fromkeys(k.entity for k in mapping.identity):
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
    state.create_all(eng)
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
        """Resolve an email, id (``crm:1001`` or bare), domain or name.

        Returns the customer and what matched (``email``, ``domain``, ``crm_id``, ``name``, ...).
        Raises BadReference, AmbiguousCustomer or CustomerNotFound with a one-line message.
        """
        q = check_reference(query)
        if not q:
            raise BadReference("Give a customer: an email, a domain, an id or a name.")
        if "@" in q:
            return self._resolve_email(q)
        source, sep, rid = q.partition(":")
        if sep and source.lower() in ID_KINDS:
            found = self._one(q, self._by_key([(ID_KINDS[source.lower()], rid.strip())]), ID_KINDS[source.lower()])
            if found:
                return found
            raise CustomerNotFound(q, [])
        if re.fullmatch(r"c_[0-9a-f]{12}", q) and (ref := self.get(q)):
            return ref, "customer_id"
        found = self._one(q, self._by_key((kind, q) for kind in ID_KINDS.values()), "id")
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
    )
