"""Long-term memory: fresh snapshots spare the sources, stale ones stand in for a
failing source with their age, TTL 0 is always live, tenants never see each other."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from tools.context.assembly import assemble_context
from tools.context.scope import ReadScope
from tools.guard import SourceGuard
from tools.memory import ContextMemory, open_store
from tools.sources.base import ReadClock

from .conftest import statements_on
from .test_guard import FakeClock

T0 = datetime(2026, 11, 21, 9, 0, 0)


class WallClock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        return self.now


@pytest.fixture
def store(tmp_path):
    with open_store(f"sqlite:///{tmp_path / 'memory.sqlite'}") as s:
        yield s


@pytest.fixture
def counted(sqlite_warehouse):
    """Statements run against the warehouse."""
    with statements_on(sqlite_warehouse) as seen:
        yield seen


def setup(sqlite_ready, store, tenant="acme-support", faults=None):
    wall = WallClock()
    settings = sqlite_ready.settings.model_copy(update={"faults": faults})
    ctx = ReadClock(as_of=sqlite_ready.clock.as_of, settings=settings, now=wall)
    return settings, ctx, ContextMemory(store, tenant, settings.ttls, clock=wall), wall


def test_fresh_snapshots_are_served_without_touching_the_source(sqlite_ready, store, counted):
    settings, ctx, memory, wall = setup(sqlite_ready, store)
    acme, _ = sqlite_ready.index.resolve("acme.com")
    first = assemble_context(ReadScope.build(settings, ctx, memory=memory), acme, ["billing", "crm.account"])
    assert counted and all(s.provenance.served_from == "source" for s in first.slices.values())
    counted.clear()
    wall.now += timedelta(minutes=10)
    second = assemble_context(ReadScope.build(settings, ctx, memory=memory), acme, ["billing", "crm.account"])
    assert counted == []  # nothing read from the warehouse
    assert {n: s.provenance.served_from for n, s in second.slices.items()} == {
        "crm.account": "memory", "billing.status": "memory", "billing.invoices": "memory"}
    assert second.get("billing.status").provenance.age_seconds == 600
    assert second.get("billing.status").status == "past_due"
    assert {r.source: r.status for r in second.sources} == {"crm": "cached", "billing": "cached"}


def test_expired_snapshots_are_read_again(sqlite_ready, store, counted):
    settings, ctx, memory, wall = setup(sqlite_ready, store)
    acme, _ = sqlite_ready.index.resolve("acme.com")
    assemble_context(ReadScope.build(settings, ctx, memory=memory), acme, ["crm.account"])
    wall.now += timedelta(seconds=settings.ttls["crm.account"] + 1)
    counted.clear()
    c = assemble_context(ReadScope.build(settings, ctx, memory=memory), acme, ["crm.account"])
    assert counted and c.get("crm.account").provenance.served_from == "source"


def test_ttl_zero_slices_are_always_live(sqlite_ready, store, counted):
    settings, ctx, memory, _ = setup(sqlite_ready, store)
    acme, _ = sqlite_ready.index.resolve("acme.com")
    assemble_context(ReadScope.build(settings, ctx, memory=memory), acme, ["support.summary"])
    counted.clear()
    c = assemble_context(ReadScope.build(settings, ctx, memory=memory), acme, ["support.summary"])
    assert counted and c.get("support.summary").provenance.served_from == "source"


def test_failing_source_is_answered_with_the_stale_snapshot_and_its_age(sqlite_ready, store):
    settings, ctx, memory, wall = setup(sqlite_ready, store)
    acme, _ = sqlite_ready.index.resolve("acme.com")
    assemble_context(ReadScope.build(settings, ctx, memory=memory), acme, ["billing"])
    wall.now += timedelta(days=2)  # past the 24 h TTL
    down, dctx, dmemory, _ = setup(sqlite_ready, store, faults="billing=down")
    dmemory.clock = wall
    dctx = ReadClock(as_of=dctx.as_of, settings=down, now=wall)
    c = assemble_context(ReadScope.build(down, dctx, guard=SourceGuard(down.guard, FakeClock()), memory=dmemory), acme, ["billing"])
    assert c.gaps == []
    status = c.get("billing.status")
    assert status.status == "past_due" and status.provenance.stale
    assert status.provenance.age_seconds == 2 * 86400
    report = {r.source: r for r in c.sources}["billing"]
    assert report.status == "stale" and "is down" in report.error


def test_without_a_snapshot_a_failing_source_is_a_gap(sqlite_ready, store):
    settings, ctx, memory, _ = setup(sqlite_ready, store, faults="billing=down")
    globex, _ = sqlite_ready.index.resolve("globex.com")
    c = assemble_context(ReadScope.build(settings, ctx, guard=SourceGuard(settings.guard, FakeClock()), memory=memory), globex, ["billing.status"])
    assert [(g.slice, g.kind) for g in c.gaps] == [("billing.status", "unavailable")]


def test_tenants_never_read_each_others_snapshots(sqlite_ready, store):
    settings, ctx, mem_a, _ = setup(sqlite_ready, store, tenant="tenant-a")
    mem_b = ContextMemory(store, "tenant-b", settings.ttls, clock=mem_a.clock)
    acme, _ = sqlite_ready.index.resolve("acme.com")
    assemble_context(ReadScope.build(settings, ctx, memory=mem_a), acme, ["billing.status"])
    assert mem_a.get(acme.customer_id, "billing.status") is not None
    assert mem_b.get(acme.customer_id, "billing.status") is None
    assert mem_a.namespace(acme.customer_id) == ("customers", "tenant-a", acme.customer_id)
    with pytest.raises(ValueError):
        ContextMemory(store, "", settings.ttls)


def test_postgres_store(sqlite_ready, pg_url):
    settings, ctx, _, wall = setup(sqlite_ready, None)
    acme, _ = sqlite_ready.index.resolve("acme.com")
    with open_store(pg_url) as pg:
        memory = ContextMemory(pg, "t", settings.ttls, clock=wall)
        assemble_context(ReadScope.build(settings, ctx, memory=memory), acme, ["crm.account"])
        cached = memory.get(acme.customer_id, "crm.account")
        assert cached.fresh and cached.slice.company_name == "Acme Corp"


def test_get_many_reads_what_get_reads_in_one_query(sqlite_ready, store):
    """A warm read of every slice: the SQLite fast path, the generic store API and per-slice
    gets agree; other tenants' and other customers' snapshots stay out."""
    from langgraph.store.memory import InMemoryStore

    from tools.slices import SLICE_NAMES

    clock = WallClock()
    acme, globex = (sqlite_ready.index.resolve(d)[0] for d in ("acme.com", "globex.com"))
    memories = [ContextMemory(s, "t1", sqlite_ready.settings.ttls, clock) for s in (store, InMemoryStore())]
    for mem in memories:
        for who in (acme, globex):
            ctx = ReadClock(as_of=sqlite_ready.clock.as_of, settings=sqlite_ready.settings, now=clock)
            assemble_context(ReadScope.build(sqlite_ready.settings, ctx, guard=SourceGuard(
                sqlite_ready.settings.guard, FakeClock()), memory=mem), who)
        ContextMemory(mem.store, "t2", mem.ttls, clock).put(acme.customer_id, mem.get(globex.customer_id,
                                                                                     "crm.account").slice)
    fast, generic = (m.get_many(acme.customer_id, SLICE_NAMES) for m in memories)
    one_by_one = {n: c for n in SLICE_NAMES if (c := memories[0].get(acme.customer_id, n))}
    assert set(fast) == set(generic) == set(one_by_one) and len(fast) >= 10
    for n in fast:
        assert fast[n].slice == generic[n].slice == one_by_one[n].slice
        assert fast[n].fresh == generic[n].fresh == one_by_one[n].fresh
    assert fast["crm.account"].slice.company_name == "Acme Corp"
    assert set(memories[0].get_many(acme.customer_id, ["crm.account", "nope.x"])) == {"crm.account"}


def test_a_lazily_opened_sqlite_memory_reads_without_opening_the_store(sqlite_ready, tmp_path):
    """The CLI's memory: reads go straight to the SQLite file; LangGraph's store is opened
    only for the first write (and a missing table is not an error)."""
    from tools.slices import SLICE_NAMES

    path = tmp_path / "state.sqlite"
    opened: list[int] = []

    def opener():
        opened.append(1)
        return stack.enter_context(open_store(f"sqlite:///{path}"))

    from contextlib import ExitStack

    with ExitStack() as stack:
        clock = WallClock()
        lazy = ContextMemory(None, "t1", sqlite_ready.settings.ttls, clock, opener=opener, sqlite_path=str(path))
        acme, _ = sqlite_ready.index.resolve("acme.com")
        assert lazy.get_many(acme.customer_id, SLICE_NAMES) == {}  # no file yet: the store creates it
        ctx = ReadClock(as_of=sqlite_ready.clock.as_of, settings=sqlite_ready.settings, now=clock)
        assemble_context(ReadScope.build(sqlite_ready.settings, ctx, memory=lazy), acme, ["crm.account"])
        assert opened == [1]  # opened once, by the first read of a missing file

        again = ContextMemory(None, "t1", sqlite_ready.settings.ttls, clock, opener=opener, sqlite_path=str(path))
        got = again.get_many(acme.customer_id, ["crm.account", "billing.status"])
        assert list(got) == ["crm.account"] and got["crm.account"].fresh
        assert opened == [1]  # a warm read: no store opened
