"""What the identity index stores for a set of customers, and what it keeps of every record so
that a change can be answered without reading the sources again.

* :func:`customer_rows`: the ``identity_customer`` and ``identity_key`` rows of groups
  (:func:`tools.identity_graph.group_records`), and which records each customer is made of
  or carries (``identity_member``) — the same function for a full build and for the
  customers an incremental update recomputes, so both give the same rows.
* ``identity_record``: per source record (*node*) the identity values its rows gave, as
  ``[key index, value]`` pairs in row order (the node is :func:`node_of` them);
  ``identity_value``: every linking value of every node (``kind``, ``value`` → holders), so
  the records sharing a value are found without reading the sources.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence

from sqlalchemy import Column, Index, Integer, MetaData, String, Table, Text

from tools.identity_graph import LOOKUP_ONLY, PERSON, Group, Node, NodeId, normalize_name
from tools.identity_marks import ANCHORED_SOURCES
from tools.mapping.engine import IdentityKey

Values = list[tuple[int, str]]  # [(index of the key in mapping.identity, value)] in row order
#: Longest value kept in the index's key columns.
VALUE_LENGTH = 255

node_state = MetaData()
identity_record = Table(
    "identity_record", node_state,
    Column("source", String(20), primary_key=True),
    Column("record", String(300), primary_key=True),  # record id; a person's: "person:<id>"
    Column("vals", Text, nullable=False),  # JSON [[key index, value], ...] in row order
    sqlite_with_rowid=False,  # one b-tree per table: a build writes every record's rows
)
identity_value = Table(
    "identity_value", node_state,
    Column("kind", String(20), primary_key=True),
    Column("value", String(VALUE_LENGTH), primary_key=True),
    Column("source", String(20), primary_key=True),
    Column("record", String(300), primary_key=True),
    Column("exempt", Integer, nullable=False),  # 1: an ``account_domain`` value (shared, it still links)
    sqlite_with_rowid=False,  # a record's rows are deleted by their keys (its stored values name them)
)
identity_member = Table(
    "identity_member", node_state,
    Column("source", String(20), primary_key=True),
    Column("record", String(300), primary_key=True),
    Column("customer_id", String(40), primary_key=True),  # a customer it is, or one it rides with
    Index("ix_identity_member_customer", "customer_id"),
    sqlite_with_rowid=False,
)


def customer_id_for(source: str, record_id: str) -> str:
    return "c_" + hashlib.sha1(f"{source}:{record_id}".encode()).hexdigest()[:12]


def node_of(keys: Sequence[IdentityKey], values: Values) -> Node:
    """The node a record's values make (as a build adds them, key by key in row order)."""
    node = Node(person=bool(values) and keys[values[0][0]].person)
    for i, v in values:
        node.add(keys[i], v)
    return node


def value_rows(nid: NodeId, node: Node) -> list[dict]:
    """The ``identity_value`` rows of one node: its linking values (names never link)."""
    source, record = nid
    return [{"kind": k, "value": v[:VALUE_LENGTH], "source": source, "record": record,
             "exempt": int((k, v) in node.exempt)} for k, v in sorted(node.keys) if k not in LOOKUP_ONLY]


def record_row(nid: NodeId, values: Values) -> dict:
    return {"source": nid[0], "record": nid[1], "vals": json.dumps(values, separators=(",", ":"))}


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


def _group_keys(group: Group, nodes: dict[NodeId, Node]) -> set[tuple[str, str]]:
    """What a customer answers to: its records' values (but shared derived domains), the values
    of the persons riding with it, name + postcode pairs, and a person-customer's names."""
    out: set[tuple[str, str]] = set()
    for m in (*group.members, *group.riders):
        out |= nodes[m].keys | nodes[m].lookup_values()
    if all(nodes[m].person for m in group.members):
        out |= {("name", n) for m in group.members for x in nodes[m].names if (n := normalize_name(x))}
    return out - group.refused


def riders_alone(groups: Iterable[Group]) -> set[NodeId]:
    """The persons riding with exactly one customer."""
    rides = Counter(r for g in groups for r in g.riders)
    return {r for r, n in rides.items() if n == 1}


def customer_rows(groups: Iterable[Group], nodes: dict[NodeId, Node], sole: set[NodeId]
                  ) -> tuple[list[dict], set[tuple[str, str, str]], list[dict]]:
    """The customer rows, key rows ``(kind, value, customer id)`` and member rows of ``groups``
    (``sole``: :func:`riders_alone` of every group, not only these)."""
    customers: list[dict] = []
    keys: set[tuple[str, str, str]] = set()
    members: list[dict] = []
    for group in groups:
        row = _customer_row(group, nodes, sole)
        cid = row["customer_id"]
        customers.append(row)
        keys.update((k, v[:VALUE_LENGTH], cid) for k, v in _group_keys(group, nodes))
        members.extend({"source": s, "record": r, "customer_id": cid}
                       for s, r in dict.fromkeys((*group.members, *group.riders)))
    return customers, keys, members
