"""Recompute only the customers a change of identity values touches, with the build's own rule.

Given the source records (*nodes*) whose identity values changed (new, changed or gone),
:func:`regroup` finds the customers they can affect, groups exactly their records again with
:func:`tools.identity_graph.group_records` and writes the difference — the customers a full
build would write differently, and no other row.

Which customers: those the changed records were part of or rode with, and those holding a
value the change gave or took (a value's holders decide whether it links or is refused as
shared, and whom a person rides with) — but for a domain that stays refused as shared and
no person holds. Their records are grouped together with **ghosts**: every other record
holding one of their values, carrying only those values, so that "held by several records
of one source" counts every holder, as a build does. If a ghost ends up in a group with
these records, or a person rides across the boundary, its customer is pulled in and the
grouping runs again; when none does, the groups found are exactly the build's (the ghosts'
own groups are left as they are).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, insert, select, tuple_
from sqlalchemy.engine import Connection

from tools.identity import identity_customer, identity_key
from tools.identity_graph import (
    LOOKUP_ONLY,
    PERSON,
    SHARED_REFUSED,
    Node,
    NodeId,
    Value,
    group_records,
)
from tools.identity_rows import (
    VALUE_LENGTH,
    Values,
    customer_rows,
    identity_member,
    identity_record,
    identity_value,
    node_of,
    record_row,
    riders_alone,
    value_rows,
)
from tools.mapping.engine import IN_CHUNK, IdentityKey

Holder = tuple[NodeId, bool]  # (node, exempt)


def _chunks(items: list[Any]) -> Iterable[list[Any]]:
    for i in range(0, len(items), IN_CHUNK):
        yield items[i:i + IN_CHUNK]


def linking(node: Node) -> set[Value]:
    return {kv for kv in node.keys if kv[0] not in LOOKUP_ONLY}


def holders_of(conn: Connection, values: Iterable[Value]) -> dict[Value, list[Holder]]:
    """Stored holders of these values (keys truncated as stored)."""
    by_kind: dict[str, set[str]] = defaultdict(set)
    for k, v in values:
        by_kind[k].add(v[:VALUE_LENGTH])
    c = identity_value.c
    out: dict[Value, list[Holder]] = defaultdict(list)
    for kind, vs in by_kind.items():
        for chunk in _chunks(sorted(vs)):
            for r in conn.execute(select(c.value, c.source, c.record, c.exempt)
                                  .where(c.kind == kind, c.value.in_(chunk))):
                out[kind, r.value].append(((r.source, r.record), bool(r.exempt)))
    return out


def _customers_of(conn: Connection, nodes: Iterable[NodeId]) -> set[str]:
    c = identity_member.c
    out: set[str] = set()
    for chunk in _chunks(sorted(set(nodes))):
        out.update(r[0] for r in conn.execute(select(c.customer_id).where(tuple_(c.source, c.record).in_(chunk))))
    return out


def _members_of(conn: Connection, customers: Iterable[str]) -> set[NodeId]:
    c = identity_member.c
    out: set[NodeId] = set()
    for chunk in _chunks(sorted(set(customers))):
        out.update((r.source, r.record) for r in conn.execute(select(c.source, c.record)
                                                              .where(c.customer_id.in_(chunk))))
    return out


def stored_values(conn: Connection, nodes: Iterable[NodeId]) -> dict[NodeId, Values]:
    """The values each of these nodes' rows gave at the last update (absent: no such record)."""
    c = identity_record.c
    out: dict[NodeId, Values] = {}
    for chunk in _chunks(sorted(set(nodes))):
        for r in conn.execute(select(c.source, c.record, c.vals).where(tuple_(c.source, c.record).in_(chunk))):
            out[r.source, r.record] = [(int(i), str(v)) for i, v in json.loads(r.vals)]
    return out


def _refused(kind: str, holders: Iterable[Holder]) -> bool:
    """Whether a value held by these records links none of them (held by several of one source)."""
    if kind not in SHARED_REFUSED:
        return False
    per_source: dict[str, int] = defaultdict(int)
    exempt = False
    for (source, _), ex in holders:
        per_source[source] += 1
        exempt = exempt or ex
    return bool(per_source) and max(per_source.values()) > 1 and not exempt


def _seed(conn: Connection, old: dict[NodeId, Node], new: dict[NodeId, Node]) -> set[str]:
    """The customers the change touches directly (see the module docstring)."""
    changed = set(old) | set(new)
    touched: set[NodeId] = set(changed)
    values = set().union(*(linking(n) for n in (*old.values(), *new.values())))
    stored = holders_of(conn, values)
    for kv in values:
        mine_before = {(n, kv in node.exempt) for n, node in old.items() if kv in node.keys}
        if mine_before == {(n, kv in node.exempt) for n, node in new.items() if kv in node.keys}:
            continue  # held as before: whom it links, refuses or carries is unchanged
        before = [h for h in stored.get((kv[0], kv[1][:VALUE_LENGTH]), []) if h[0] not in changed]
        before_all = before + [(n, kv in node.exempt) for n, node in old.items() if kv in node.keys]
        after_all = before + [(n, kv in node.exempt) for n, node in new.items() if kv in node.keys]
        people = any(h[0][1].startswith(PERSON) for h in (*before_all, *after_all))
        accounts = lambda hs: [h for h in hs if not h[0][1].startswith(PERSON)]  # noqa: E731
        if kv[0] == "domain" and not people and _refused("domain", accounts(before_all)) \
                and _refused("domain", accounts(after_all)):
            continue  # a shared domain stays shared: it links none of its other holders, before or after
        touched.update(h[0] for h in before)
    return _customers_of(conn, touched)


def _ghosts(nodes: dict[NodeId, Node], holders: dict[Value, list[Holder]]) -> dict[NodeId, Node]:
    """The other holders of these nodes' values, each with only those values."""
    full: dict[Value, set[str]] = defaultdict(set)  # stored (truncated) value → the full values
    for node in nodes.values():
        for k, v in linking(node):
            full[k, v[:VALUE_LENGTH]].add(v)
    ghosts: dict[NodeId, Node] = {}
    for (kind, tv), who in holders.items():
        if not full[kind, tv]:
            continue
        for nid, exempt in who:
            if nid in nodes:
                continue
            g = ghosts.get(nid)
            if g is None:
                g = ghosts[nid] = Node(person=nid[1].startswith(PERSON))
            for v in full[kind, tv]:
                g.keys.add((kind, v))
                if exempt:
                    g.exempt.add((kind, v))
    return ghosts


def regroup(conn: Connection, keys: dict[str, tuple[IdentityKey, ...]], changed: dict[NodeId, Values | None],
            ) -> int:
    """Apply a change of identity values (``changed``: node → its values now, None: gone) to the
    index, inside ``conn``'s transaction. Returns how many customers were written."""
    before = stored_values(conn, changed)
    old = {n: node_of(keys[n[0]], v) for n, v in before.items()}
    new = {n: node_of(keys[n[0]], v) for n, v in changed.items() if v}
    customers = _seed(conn, old, new)
    cache: dict[NodeId, Node] = dict(new)
    holders: dict[Value, list[Holder]] = {}
    while True:
        while True:  # every customer any of these records is part of or rides with
            members = (_members_of(conn, customers) - set(changed)) | set(new)
            more = _customers_of(conn, members - set(new)) - customers
            if not more:
                break
            customers |= more
        missing = [m for m in members if m not in cache]
        for nid, vals in stored_values(conn, missing).items():
            cache[nid] = node_of(keys[nid[0]], vals)
        nodes = {m: cache[m] for m in members if m in cache}
        wanted = {(k, v[:VALUE_LENGTH]) for node in nodes.values() for k, v in linking(node)} - set(holders)
        holders.update({kv: [] for kv in wanted})
        holders.update({kv: [h for h in hs if h[0] not in changed] for kv, hs in holders_of(conn, wanted).items()})
        ghosts = _ghosts(nodes, holders)
        groups = group_records({**nodes, **ghosts})
        crossing: set[NodeId] = set()
        for g in groups:
            inside = [m for m in (*g.members, *g.riders) if m in nodes]
            if inside and len(inside) < len(g.members) + len(g.riders):
                crossing.update(m for m in (*g.members, *g.riders) if m in ghosts)
        more = _customers_of(conn, crossing) - customers
        if not more:
            break
        customers |= more
    mine = [g for g in groups if g.members[0] in nodes]
    rows, key_rows, member_rows = customer_rows(mine, nodes, riders_alone(groups))
    written = _write(conn, customers, rows, key_rows)
    _write_nodes(conn, changed, old, new, customers, member_rows)
    return written


def _write(conn: Connection, customers: set[str], rows: list[dict], key_rows: set[tuple[str, str, str]]) -> int:
    """Replace the rows of ``customers`` by ``rows`` and ``key_rows``, writing only customers
    whose row or keys differ (an unchanged index writes nothing)."""
    c, k = identity_customer.c, identity_key.c
    old_rows: dict[str, dict] = {}
    old_keys: dict[str, set[tuple[str, str, str]]] = defaultdict(set)
    ids = sorted(customers | {r["customer_id"] for r in rows})
    for chunk in _chunks(ids):
        for r in conn.execute(select(identity_customer).where(c.customer_id.in_(chunk))):
            old_rows[r.customer_id] = dict(r._mapping)
        for r in conn.execute(select(k.kind, k.value, k.customer_id).where(k.customer_id.in_(chunk))):
            old_keys[r.customer_id].add((r.kind, r.value, r.customer_id))
    new_rows = {r["customer_id"]: r for r in rows}
    new_keys: dict[str, set[tuple[str, str, str]]] = defaultdict(set)
    for kr in key_rows:
        new_keys[kr[2]].add(kr)
    dirty = sorted(cid for cid in ids if old_rows.get(cid) != new_rows.get(cid) or old_keys[cid] != new_keys[cid])
    for chunk in _chunks(dirty):
        conn.execute(delete(identity_key).where(k.customer_id.in_(chunk)))
        conn.execute(delete(identity_customer).where(c.customer_id.in_(chunk)))
    fresh = [new_rows[cid] for cid in dirty if cid in new_rows]
    if fresh:
        conn.execute(insert(identity_customer), fresh)
    fresh_keys = [{"kind": a, "value": b, "customer_id": cid} for cid in dirty for a, b, cid in sorted(new_keys[cid])]
    for chunk in _chunks(fresh_keys):
        conn.execute(insert(identity_key), chunk)
    return len(dirty)


def _write_nodes(conn: Connection, changed: dict[NodeId, Values | None], old_nodes: dict[NodeId, Node],
                 new: dict[NodeId, Node], customers: set[str], member_rows: list[dict]) -> None:
    r, v, m = identity_record.c, identity_value.c, identity_member.c
    for chunk in _chunks(sorted(changed)):
        conn.execute(delete(identity_record).where(tuple_(r.source, r.record).in_(chunk)))
    stale = sorted({(x["kind"], x["value"], x["source"], x["record"])
                    for n, node in old_nodes.items() for x in value_rows(n, node)})
    for chunk in _chunks(stale):
        conn.execute(delete(identity_value).where(tuple_(v.kind, v.value, v.source, v.record).in_(chunk)))
    records = [record_row(n, vals) for n, vals in changed.items() if vals]
    values = [row for n, node in new.items() for row in value_rows(n, node)]
    for rows, table in ((records, identity_record), (values, identity_value)):
        for chunk in _chunks(rows):
            conn.execute(insert(table), chunk)
    old = {(x.source, x.record, x.customer_id) for chunk in _chunks(sorted(customers))
           for x in conn.execute(select(m.source, m.record, m.customer_id).where(m.customer_id.in_(chunk)))}
    fresh = {(x["source"], x["record"], x["customer_id"]) for x in member_rows}
    gone = sorted(old - fresh)
    for chunk in _chunks(gone):
        conn.execute(delete(identity_member).where(tuple_(m.source, m.record, m.customer_id).in_(chunk)))
    added = [{"source": s, "record": rec, "customer_id": cid} for s, rec, cid in sorted(fresh - old)]
    for chunk in _chunks(added):
        conn.execute(insert(identity_member), chunk)
