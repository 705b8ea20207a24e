"""The refresh's write path: a chunk's snapshots written in one batch straight into the SQLite and
PostgreSQL stores' own table (read back exactly as the store's own put path writes them), one clock
reading per chunk, and the book table made from the slices a chunk just wrote — memory read only
for what the chunk did not write (a failed read, a slice the refresh did not read)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from langgraph.store.memory import InMemoryStore
from sqlalchemy import create_engine, select, text

import tools.refresh.runner as runner
from agent.bootstrap import ready
from tools.booktable import book_risk, book_traits, materialise
from tools.embedded.generate import seed
from tools.memory import ContextMemory, open_store
from tools.memory_batch import direct_kind, write_snapshots
from tools.refresh.bulk import _WriteBuffer
from tools.refresh.jobs import refresh_full, refresh_incremental
from tools.slices import SLICE_MODELS, Slice
from tools.sources.base import SliceNotFound
from tools.sources.registry import dispose_engines, engine_for, reader

from .conftest import settings_for
from .test_refresh import QUICK_GUARD, change, stored

FIXED = datetime(2026, 1, 15, 12, 0, 0)


def _slices(ready_, customers: int = 6) -> list[tuple[str, Slice]]:
    """(customer id, slice) of every slice of a few fixture customers, read by the readers."""
    from tools.identity import _ref as identity_ref
    from tools.identity import identity_customer

    with engine_for(ready_.settings.state_db_url).connect() as conn:
        refs = [identity_ref(r._mapping) for r in conn.execute(select(identity_customer).limit(customers))]
    out = []
    for name, model in SLICE_MODELS.items():
        rdr = reader(ready_.settings, model.source)
        if rdr is None:  # not connected (commerce)
            continue
        for ref in refs:
            try:
                out.append((ref.customer_id, rdr.read(name, ref, ready_.clock)))
            except SliceNotFound:
                pass
    assert len(out) > 40
    return out


def _rows(store, kind: str) -> list[tuple]:
    """Every row of the store's table but its timestamps (the current time of each write)."""
    if kind == "sqlite":
        return store.conn.execute("SELECT prefix, key, value, typeof(value), expires_at, ttl_minutes, "
                                  "created_at IS NOT NULL AND updated_at IS NOT NULL FROM store "
                                  "ORDER BY prefix, key").fetchall()
    with store.conn.cursor() as cur:
        cur.execute("SELECT prefix, key, value::text, expires_at, ttl_minutes, created_at IS NOT NULL "
                    "FROM store ORDER BY prefix, key")
        return [tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in cur.fetchall()]


def _read_back(memory: ContextMemory, items) -> dict:
    return {(cid, n): c.slice.model_dump(mode="json") for cid in dict.fromkeys(cid for cid, _ in items)
            for n, c in memory.get_many(cid, list(SLICE_MODELS)).items()}


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_batch_reads_back_exactly_as_the_stores_own_put(kind, sqlite_ready, tmp_path, request):
    """``put_many`` (one executemany into the store's table) leaves the same rows as
    ``ContextMemory.put`` through LangGraph's ``PutOp`` path, new and overwritten, and every
    snapshot reads back identical and intact; a removal goes too."""
    items = _slices(sqlite_ready)
    urls = ([f"sqlite:///{tmp_path}/{w}.sqlite" for w in ("langgraph", "batch")] if kind == "sqlite" else
            [request.getfixturevalue("pg_server").create_database() for _ in range(2)])
    with open_store(urls[0]) as lg_store, open_store(urls[1]) as batch_store:
        assert direct_kind(lg_store) == kind and direct_kind(batch_store) == kind
        now = [FIXED]
        lg = ContextMemory.of(lg_store, sqlite_ready.settings, clock=lambda: now[0])
        batch = ContextMemory.of(batch_store, sqlite_ready.settings, clock=lambda: now[0])
        assert all(batch.snapshot(cid, s)["slice"] == s.model_dump(mode="json") for cid, s in items)
        for round_ in range(2):  # new rows, then every row overwritten (the upsert)
            now[0] = FIXED + timedelta(hours=round_)
            for cid, s in items:
                lg.put(cid, s)
            batch.put_many(items)
            assert _rows(batch_store, kind) == _rows(lg_store, kind)
            back = _read_back(batch, items)
            assert back == _read_back(lg, items) and len(back) == len(items)
            assert batch.rejected == 0 and batch.other_config == 0
        cid, s = items[0]
        write_snapshots(batch_store, [], [(batch.namespace(cid), s.name)])
        lg_store.delete(lg.namespace(cid), s.name)
        assert _rows(batch_store, kind) == _rows(lg_store, kind)
        assert batch.get(cid, s.name) is None


def test_other_stores_keep_langgraphs_put_path(sqlite_ready, tmp_path):
    """InMemoryStore, and a SQLite store with TTLs, are written through their own ``batch``."""
    from langgraph.store.sqlite import SqliteStore

    items = _slices(sqlite_ready)[:20]
    store = InMemoryStore()
    assert direct_kind(store) is None
    memory = ContextMemory.of(store, sqlite_ready.settings, clock=lambda: FIXED)
    memory.put_many(items)
    assert len(_read_back(memory, items)) == len(items)
    import sqlite3

    conn = sqlite3.connect(tmp_path / "ttl.sqlite", check_same_thread=False, isolation_level=None)
    ttl_store = SqliteStore(conn, ttl={"default_ttl": 60})
    ttl_store.setup()
    assert direct_kind(ttl_store) is None
    ContextMemory.of(ttl_store, sqlite_ready.settings, clock=lambda: FIXED).put_many(items)
    assert conn.execute("SELECT count(*) FROM store WHERE ttl_minutes = 60").fetchone()[0] == len(items)
    conn.close()


def test_the_write_buffer_keeps_the_last_write_and_the_slices_it_wrote(sqlite_ready, tmp_path):
    items = _slices(sqlite_ready)[:10]
    with open_store(f"sqlite:///{tmp_path}/state.sqlite") as store:
        buf = _WriteBuffer(store)
        memory = ContextMemory.of(buf, sqlite_ready.settings, clock=lambda: FIXED)
        memory.put_many(items)
        cid, s = items[0]
        buf.forget(memory.namespace(cid), s.name)
        written = buf.flush()
        assert set(written) == {(memory.namespace(c), x.name) for c, x in items[1:]}
        assert store.get(memory.namespace(cid), s.name) is None
        assert len(store.search(memory.namespace(items[1][0]), limit=100)) > 0
        assert buf.flush() == {}  # nothing kept beyond the chunk


# ------------------------------------------------------------------ a refresh
@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> Iterator[str]:
    url = f"sqlite:///{tmp_path_factory.mktemp('write-path-warehouse') / 'warehouse.sqlite'}"
    seed(url, customers=40)
    yield url
    dispose_engines()


def _book(settings) -> tuple[dict, set]:
    eng = create_engine(settings.state_db_url)
    with eng.connect() as conn:
        rows = {r.customer_id: {k: v for k, v in r._mapping.items()} for r in conn.execute(select(book_traits))}
        risks = {tuple(r) for r in conn.execute(select(book_risk))}
    eng.dispose()
    return rows, risks


def _without_stamp(rows: dict) -> dict:
    """Book rows without when they were written (and when their CRM account was read)."""
    def account(value: str | None) -> dict | None:
        data = json.loads(value) if value else None
        if data:
            data["provenance"].pop("fetched_at")
        return data

    return {cid: {k: account(v) if k == "account" else v for k, v in row.items() if k != "updated_at"}
            for cid, row in rows.items()}


def test_one_clock_reading_per_chunk(warehouse, tmp_path, monkeypatch):
    """Every slice of a chunk carries the chunk's one reading of the clock (``fetched_at`` and
    ``stored_at``); the next chunk reads the clock again."""
    r = ready(settings_for(warehouse, tmp_path, guard=QUICK_GUARD))
    ticks = itertools.count()
    readings: list[datetime] = []

    def clock() -> datetime:
        readings.append(FIXED + timedelta(seconds=next(ticks)))
        return readings[-1]

    monkeypatch.setattr(runner, "CHUNK", 10)
    with open_store(r.settings.state_db_url) as store:
        memory = ContextMemory.of(store, r.settings, clock=clock)
        report = refresh_full(r.settings, memory)
        chunks = -(-report.customers // 10)
        assert report.failures == 0 and report.slices_written > 10 * chunks
        assert len(readings) <= chunks + 2  # one per chunk (and the runner's first)
        stamps: dict[str, set] = {}
        for cid in stored(store, r.settings.tenant):
            for item in store.search(memory.namespace(cid), limit=100):
                fetched = item.value["slice"]["provenance"]["fetched_at"]
                assert datetime.fromisoformat(item.value["stored_at"]) == datetime.fromisoformat(fetched)
                stamps.setdefault(fetched, set()).add(cid)
        assert len(stamps) == chunks and all(len(c) <= 10 for c in stamps.values())


def test_the_book_is_made_from_the_chunk_not_read_back(warehouse, tmp_path, monkeypatch):
    """A full refresh makes every book row from the slices it wrote — memory is not read — and the
    rows are those memory gives (``materialise``)."""
    r = ready(settings_for(warehouse, tmp_path, guard=QUICK_GUARD))
    reads = []
    real = ContextMemory.get_many
    monkeypatch.setattr(ContextMemory, "get_many", lambda self, *a, **k: reads.append(a) or real(self, *a, **k))
    with open_store(r.settings.state_db_url) as store:
        memory = ContextMemory.of(store, r.settings)
        report = refresh_full(r.settings, memory)
        assert report.failures == 0 and reads == []
        chunked, chunked_risks = _book(r.settings)
        assert len(chunked) == report.customers and chunked_risks
        materialise(r.settings, memory, list(chunked))  # the same rows, from memory
        from_memory, memory_risks = _book(r.settings)
        assert _without_stamp(chunked) == _without_stamp(from_memory) and chunked_risks == memory_risks


def test_a_failed_read_keeps_its_last_snapshot_in_the_book(warehouse, tmp_path):
    """Billing down during a refresh: its snapshots stay in memory, and the book rows are made with
    them (read back for those customers), not without billing."""
    r = ready(settings_for(warehouse, tmp_path, guard=QUICK_GUARD))
    with open_store(r.settings.state_db_url) as store:
        memory = ContextMemory.of(store, r.settings)
        assert refresh_full(r.settings, memory).failures == 0
        before, before_risks = _book(r.settings)
        assert any(risk[2] == "billing_issue" for risk in before_risks)
        down = r.settings.model_copy(update={"faults": "billing=down"})
        report = refresh_full(down, ContextMemory.of(store, down))
        assert report.failures and {"billing"} == {SLICE_MODELS[n].source for _, n in report.failed}
        after, after_risks = _book(r.settings)
        assert _without_stamp(after) == _without_stamp(before) and after_risks == before_risks
        assert all(after[c]["updated_at"] >= before[c]["updated_at"] for c in before)


def test_an_incremental_refresh_updates_only_the_changed_customers_rows(warehouse, tmp_path):
    r = ready(settings_for(warehouse, tmp_path, guard=QUICK_GUARD))
    with open_store(r.settings.state_db_url) as store:
        memory = ContextMemory.of(store, r.settings)
        refresh_full(r.settings, memory)
        refresh_incremental(r.settings, memory)  # the watermarks
        before, _ = _book(r.settings)
        acme = r.index.resolve("acme.com")[0]
        eng = create_engine(warehouse)
        with eng.connect() as conn:
            mrr = conn.execute(text("SELECT property_mrr FROM company WHERE id = :i"),
                               {"i": int(acme.anchors["crm"])}).scalar()
        eng.dispose()
        change(warehouse, "company", "id", int(acme.anchors["crm"]), property_mrr=(mrr or 0) + 1000)
        report = refresh_incremental(r.settings, memory)
        assert report.refreshed == [acme.customer_id]
        after, _ = _book(r.settings)
        assert after[acme.customer_id]["mrr"] == pytest.approx((mrr or 0) + 1000)
        assert after[acme.customer_id]["updated_at"] > before[acme.customer_id]["updated_at"]
        others = set(before) - {acme.customer_id}
        assert {c: after[c] for c in others} == {c: before[c] for c in others}  # untouched, stamp and all
        # the rest of Acme's row comes from its other snapshots, read from memory
        assert after[acme.customer_id]["last_touch"] == before[acme.customer_id]["last_touch"] is not None
        assert after[acme.customer_id]["churn_score"] == before[acme.customer_id]["churn_score"]
