"""Which source records are one customer: the values identity keys give, and how they link.

Two kinds of record carry identity keys. An *account* record is a source's customer record
(a CRM company, a billing customer, a support organization, a product group, a store's
customer); a *person* record is a person the source knows apart from that (an application
user in Segment, a support end user in Zendesk), declared by ``person: true`` on the key.

- Account records that share a linking value are one customer (union-find, full-outer: a
  customer known to one system only still resolves).
- A value held by several records *of one source* is not identifying there: a domain such as
  ``example.com`` that every shopper's email derives, an anonymous id two users' browser
  shared, a contact email filed under two companies. It links nothing (the mapping may mark a
  domain key ``account_domain: true``: then records sharing it are one account). A shared
  stated value still answers a lookup (with every customer holding it: ambiguous); a shared
  *derived* domain answers nothing.
- Names, postcodes and name + postcode never link; they only answer lookups.
- Person records link among themselves the same way, then ride with the one customer their
  keys point to (a Segment user with its group, a Zendesk user with its organization, anyone
  with the billing customer of their email). A person whose keys point to several customers
  is indexed under each (a lookup is ambiguous, nothing merges); one whose keys point to none
  is a customer of their own (a person-customer).
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from tools.mapping.check import (
    FREE_MAIL_DOMAINS as FREEMAIL,  # one list: mappings check uses it too
)
from tools.mapping.engine import IdentityKey

#: Kinds that only answer lookups and never link records.
LOOKUP_ONLY = frozenset({"name", "name_postcode"})
#: Kinds a value of which, held by several records of one source, links none of them.
SHARED_REFUSED = frozenset({"domain", "email", "user_id", "anonymous_id", "support_user_id"})
#: Record ids of person nodes start with this (they are never a source's customer record).
PERSON = "person:"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

NodeId = tuple[str, str]  # (source, record id); a person's record id starts with PERSON
Value = tuple[str, str]  # (kind, value)


def normalize_name(name: str) -> str:
    """Case-, accent- and punctuation-insensitive form of a company name."""
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().casefold()
    return " ".join(re.sub(r"[^a-z0-9]+", " ", folded).split())


def normalize_email(email: str) -> str:
    """Lower-case, with plus-addressing removed: rachael+support@tyrell.fr → rachael@tyrell.fr."""
    local, _, domain = email.strip().lower().partition("@")
    return f"{local.split('+', 1)[0]}@{domain}"


def normalize_postcode(code: str) -> str:
    """Upper-case letters and digits only: ``sw1a 1aa`` and ``SW1A-1AA`` are ``SW1A1AA``."""
    return re.sub(r"[^0-9A-Z]+", "", unicodedata.normalize("NFKC", code).upper())


def name_postcode(name: str, postcode: str) -> str:
    """The ``name_postcode`` key value of a person's name and postcode ('' when either is empty)."""
    n, p = normalize_name(name), normalize_postcode(postcode)
    return f"{n}|{p}" if n and p else ""


@dataclass
class Node:
    """One record's identity: its key values, names and domains as the sources state them."""

    person: bool = False
    keys: set[Value] = field(default_factory=set)
    names: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)
    postcodes: list[str] = field(default_factory=list)
    derived: set[Value] = field(default_factory=set)  # values derived (a domain from an email)
    exempt: set[Value] = field(default_factory=set)  # values of an ``account_domain`` key

    def add(self, key: IdentityKey, value: str) -> None:
        """Add the values one row gives for ``key``."""
        kind = key.kind
        if kind == "name":
            self.names.append(value)
            if not self.person:
                if n := normalize_name(value):
                    self.keys.add(("name", n))
            return
        if kind == "postcode":
            self.postcodes.append(value)
            return
        if kind == "email":
            v = value.strip().lower()
            if not _EMAIL.match(v):
                return
            self.keys.update({("email", v), ("email", normalize_email(v))})
            dom = v.rsplit("@", 1)[1]
            if key.derive_domain and not self.person and dom not in FREEMAIL:
                self._domain(dom, key, derived=True)
            return
        if kind == "domain":
            v = value.strip().lower()
            if v and v not in FREEMAIL:
                self._domain(v, key, derived=False)
            return
        if v := value.strip():
            self.keys.add((kind, v))

    def _domain(self, domain: str, key: IdentityKey, derived: bool) -> None:
        kv = ("domain", domain)
        if kv in self.keys and not derived:
            self.derived.discard(kv)  # stated as well as derived: a stated value
        elif derived and kv not in self.keys:
            self.derived.add(kv)
        self.keys.add(kv)
        self.domains.append(domain)
        if key.account_domain:
            self.exempt.add(kv)

    def lookup_values(self) -> set[Value]:
        """Name + postcode pairs of this record (lookups only)."""
        out = set()
        for n in self.names:
            for p in self.postcodes:
                if v := name_postcode(n, p):
                    out.add(("name_postcode", v))
        return out


@dataclass
class Group:
    """One customer: the records it is (``members``) and the persons riding with it (``riders``).

    ``refused``: values of its records that are indexed for no one (shared derived domains)."""

    members: list[NodeId]
    riders: list[NodeId] = field(default_factory=list)
    refused: set[Value] = field(default_factory=set)


class _UnionFind:
    def __init__(self, items: Iterable[NodeId]):
        self.parent = {n: n for n in items}

    def find(self, n: NodeId) -> NodeId:
        parent = self.parent
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    def union(self, a: NodeId, b: NodeId) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra

    def groups(self) -> dict[NodeId, list[NodeId]]:
        out: dict[NodeId, list[NodeId]] = defaultdict(list)
        for n in self.parent:
            out[self.find(n)].append(n)
        return out


def _holders(nodes: dict[NodeId, Node]) -> dict[Value, list[NodeId]]:
    holders: dict[Value, list[NodeId]] = defaultdict(list)
    for nid, node in nodes.items():
        for kv in node.keys:
            holders[kv].append(nid)
    return holders


def shared_values(nodes: dict[NodeId, Node], holders: dict[Value, list[NodeId]]) -> set[Value]:
    """Values that link nothing: held by several records of one source (and not an account domain)."""
    refused = set()
    for kv, who in holders.items():
        if kv[0] not in SHARED_REFUSED or len(who) < 2:
            continue
        per_source: dict[str, int] = defaultdict(int)
        for source, _ in who:
            per_source[source] += 1
        if max(per_source.values()) > 1 and not any(kv in nodes[n].exempt for n in who):
            refused.add(kv)
    return refused


def _link(nodes: dict[NodeId, Node]) -> tuple[_UnionFind, dict[Value, list[NodeId]], set[Value]]:
    holders = _holders(nodes)
    refused = shared_values(nodes, holders)
    uf = _UnionFind(nodes)
    for kv, who in holders.items():
        if kv[0] in LOOKUP_ONLY or kv in refused:
            continue
        for other in who[1:]:
            uf.union(who[0], other)
    return uf, holders, refused


def group_records(nodes: dict[NodeId, Node]) -> list[Group]:
    """The customers ``nodes`` make, in a stable order (each group's members sorted as given)."""
    accounts = {n: v for n, v in nodes.items() if not v.person}
    persons = {n: v for n, v in nodes.items() if v.person}
    uf, holders, refused = _link(accounts)
    by_root = uf.groups()
    groups = {root: Group(members=members) for root, members in by_root.items()}
    for g in groups.values():
        g.refused = {kv for m in g.members for kv in accounts[m].derived if kv in refused}
    puf, _, _ = _link(persons)
    for people in puf.groups().values():
        touched = sorted({uf.find(h) for p in people for kv in persons[p].keys
                          if kv[0] not in LOOKUP_ONLY and kv[0] != "domain" for h in holders.get(kv, ())})
        if not touched:
            groups[people[0]] = Group(members=people)
        for root in touched:
            groups[root].riders.extend(people)
    return list(groups.values())
