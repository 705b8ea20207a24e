"""Refresh in proportion to the change, reads set-based.

* The identity index is maintained from the changed rows (``tools.refresh.index``): a
  non-identity column (MRR) never rebuilds it, and what is read follows the changed
  records, not the book; a change of identity values rebuilds it to exactly what a fresh
  build gives — on SQLite and PostgreSQL.
* A bulk read runs each slice's method once per chain of dependent lookups (not once per
  lookup), matches chat mentions in the database (one statement per chunk, not customers ×
  messages in Python) and keeps no traceback in a not-found result.

That the set-based bulk reads give exactly the single reads' slices, for every customer
and slice on both databases, is ``tests/test_bulk_reads.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import create_engine, func, select, text

from agent.bootstrap import ready
from tools.embedded.generate import seed
from tools.identity import build_index, ensure_index
from tools.memory import ContextMemory, open_store
from tools.refresh.index import index_rows, maintain_index
from tools.refresh.jobs import refresh_full, refresh_incremental
from tools.slices import SLICE_MODELS, SLICE_NAMES
from tools.sources.base import SliceNotFound
from tools.sources.batch import RowBatch
from tools.sources.billing import BillingReader
from tools.sources.registry import dispose_engines, reader

from .conftest import settings_for, statements_on

IDENTITY_WRITES = ("INSERT INTO identity_customer", "INSERT INTO identity_key", "DELETE FROM identity_customer",
                   "DELETE FROM identity_key", "UPDATE identity_customer", "UPDATE identity_key")


@pytest.fixture
def warehouse(tmp_path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'warehouse.sqlite'}"
    seed(url, customers=40)
    yield url
    dispose_engines()


def _bump(url: str, ids: list[int], **sets: str) -> None:
    """Change CRM accounts the way a sync lands a change: new values, a newer sync stamp."""
    eng = create_engine(url)
    try:
        with eng.begin() as conn:
            newest = conn.execute(text("SELECT max(_fivetran_synced) FROM company")).scalar()
            later = datetime.fromisoformat(str(newest)) + timedelta(minutes=1)
            assignments = ", ".join([*(f"{k} = {v}" for k, v in sets.items()), "_fivetran_synced = :t"])
            marks = ",".join(str(int(i)) for i in ids)
            conn.execute(text(f"UPDATE company SET {assignments} WHERE id IN ({marks})"), {"t": later})  # noqa: S608
    finally:
        eng.dispose()


def _account_ids(url: str, n: int) -> list[int]:
    eng = create_engine(url)
    try:
        with eng.connect() as conn:
            return [r[0] for r in conn.execute(text(
                "SELECT id FROM company WHERE NOT is_deleted AND property_customer_status = 'active' "
                "ORDER BY id LIMIT :n"), {"n": n})]
    finally:
        eng.dispose()


def _fresh_build(url: str, tmp_path, name: str, **overrides):
    """The index a build from scratch gives today, in a state database of its own."""
    other = settings_for(url, tmp_path / name, **overrides)
    (tmp_path / name).mkdir()
    build_index(other)
    return index_rows(other)


def test_an_mrr_change_moves_only_watermarks_and_reads_only_the_changed_records(warehouse, tmp_path):
    r = ready(settings_for(warehouse, tmp_path))
    assert maintain_index(r.settings).mode == "unchanged"  # first run: its watermarks, no build
    before = index_rows(r.settings)
    one, three = _account_ids(warehouse, 1), _account_ids(warehouse, 4)[1:]

    _bump(warehouse, one, property_mrr="coalesce(property_mrr, 0) + 1")
    with statements_on(warehouse) as source_few, statements_on(r.settings.state_db_url) as state_few:
        update = maintain_index(r.settings)
    assert update.mode == "incremental" and update.changed_nodes == 1
    assert not [s for s in state_few if s.lstrip().startswith(IDENTITY_WRITES)]  # no index row written
    assert index_rows(r.settings) == before
    assert ensure_index(r.settings) is False  # the stored fingerprint is the sources' again

    _bump(warehouse, three, property_mrr="coalesce(property_mrr, 0) + 1")
    with statements_on(warehouse) as source_more:
        update = maintain_index(r.settings)
    assert update.mode == "incremental" and update.changed_nodes == 3
    # the same statements for 1 or 3 changed records: set-based, never a scan per record or of the book
    assert len(source_more) == len(source_few)
    assert not [s for s in source_few if "identity" in s]
    assert maintain_index(r.settings).mode == "unchanged"


def test_a_changed_identity_value_gives_what_a_fresh_build_gives_without_a_rebuild(warehouse, tmp_path):
    r = ready(settings_for(warehouse, tmp_path / "state"))
    maintain_index(r.settings)
    acme = r.index.resolve("acme.com")[0]
    crm_id = int(acme.anchors["crm"])
    _bump(warehouse, [crm_id], property_domain="'acme-new.example'")
    with statements_on(warehouse) as source:
        update = maintain_index(r.settings)
    # only Acme is recomputed (tools.refresh.regroup), from the stored records: no source scanned
    assert update.mode == "incremental" and update.moved_nodes == 1 and update.customers == 1
    assert not [s for s in source if "WHERE" not in s and "count(*)" not in s]  # counts and stamps only
    assert index_rows(r.settings) == _fresh_build(warehouse, tmp_path, "fresh")
    assert r.index.resolve("acme-new.example")[0].customer_id == acme.customer_id

    _bump(warehouse, [crm_id], is_deleted="1")  # soft-deleted: seen although the entity filters it out
    assert maintain_index(r.settings).mode == "incremental"
    assert index_rows(r.settings) == _fresh_build(warehouse, tmp_path, "fresh2")


def test_an_incremental_refresh_after_a_1pct_change_touches_only_those_customers(warehouse, tmp_path):
    r = ready(settings_for(warehouse, tmp_path))
    with open_store(r.settings.state_db_url) as store:
        memory = ContextMemory.of(store, r.settings)
        refresh_full(r.settings, memory, workers=1)
        changed = _account_ids(warehouse, 1)  # 1 of ~50 accounts
        _bump(warehouse, changed, property_mrr="coalesce(property_mrr, 0) + 1")
        with statements_on(r.settings.state_db_url) as state:
            report = refresh_incremental(r.settings, memory, workers=1)
    assert report.customers == 1 and report.slices_written == 1 and report.failures == 0
    assert report.changed_by_source == {"crm": 1}
    assert not [s for s in state if s.lstrip().startswith(IDENTITY_WRITES)]  # the index was not rebuilt


def test_the_index_is_maintained_incrementally_on_postgresql(pg_server, tmp_path):
    url, state = pg_server.create_database(), pg_server.create_database()
    seed(url, customers=0)
    r = ready(settings_for(url, tmp_path, state_url=state))
    maintain_index(r.settings)
    before = index_rows(r.settings)
    eng = create_engine(url)
    try:
        with eng.begin() as conn:
            conn.execute(text("UPDATE company SET property_mrr = coalesce(property_mrr, 0) + 1, _fivetran_synced = "
                              "(SELECT max(_fivetran_synced) FROM company) + interval '1 minute' "
                              "WHERE id = (SELECT min(id) FROM company)"))
    finally:
        eng.dispose()
    update = maintain_index(r.settings)
    assert update.mode == "incremental" and update.changed_nodes == 1
    assert index_rows(r.settings) == before
    dispose_engines()


# ------------------------------------------------------------------ bulk reads
def _customers(r):
    from tools.identity import _ref, identity_customer
    from tools.sources.registry import engine_for

    with engine_for(r.settings.state_db_url).connect() as conn:
        return [_ref(row._mapping) for row in conn.execute(select(identity_customer))]


def test_a_slice_method_runs_once_per_chain_of_lookups_not_once_per_lookup(sqlite_ready, monkeypatch):
    customers = [c for c in _customers(sqlite_ready) if "billing" in c.anchors]
    runs = {"n": 0}
    inner = BillingReader.read_status

    def counting(self, *args):  # noqa: ANN001, ANN202
        runs["n"] += 1
        return inner(self, *args)

    monkeypatch.setattr(BillingReader, "read_status", counting)
    rdr = reader(sqlite_ready.settings, "billing")
    out = rdr.read_many({"billing.status": customers}, sqlite_ready.clock)
    assert len(out) == len(customers) > 20
    # five independent lookups: noted in one run, loaded at once, then the real run (was 6 runs)
    assert runs["n"] == 2 * len(customers)


def test_chat_mentions_are_matched_by_the_database_in_one_statement(sqlite_ready):
    customers = _customers(sqlite_ready)
    rdr = reader(sqlite_ready.settings, "chat")
    url = sqlite_ready.settings.source("chat").url
    with statements_on(url) as seen:
        out = rdr.read_many({"chat.mentions": customers}, sqlite_ready.clock, RowBatch())
    assert len([s for s in seen if "LIKE" in s.upper()]) == 1 and len(seen) == 1
    assert sum(len(v.mentions) for v in out.values() if not isinstance(v, Exception)) > 0


def test_not_found_results_keep_no_traceback(sqlite_ready):
    customers = _customers(sqlite_ready)
    names = [n for n in SLICE_NAMES if SLICE_MODELS[n].source == "billing"]
    out = reader(sqlite_ready.settings, "billing").read_many({n: customers for n in names}, sqlite_ready.clock)
    missing = [v for v in out.values() if isinstance(v, SliceNotFound)]
    assert missing  # prospects have no billing record
    assert all(v.__traceback__ is None and v.__context__ is None for v in missing)


def test_set_based_lookups_push_limits_and_columns_down(sqlite_ready):
    customers = [c for c in _customers(sqlite_ready) if "support" in c.anchors]
    url = sqlite_ready.settings.source("support").url
    with statements_on(url) as seen:
        reader(sqlite_ready.settings, "support").read_many({"support.summary": customers}, sqlite_ready.clock)
    tickets = [s for s in seen if "FROM ticket " in s or "FROM ticket AS" in s]
    assert tickets and all("body" not in s for s in tickets)  # the summary never reads ticket bodies
    with statements_on(url) as seen:
        reader(sqlite_ready.settings, "support").read_many({"support.tickets": customers}, sqlite_ready.clock)
    assert any("row_number() OVER (PARTITION BY" in s for s in seen)  # newest 20 per customer, ranked by the DB


def test_the_benchmark_floor_writes_the_books_slices_in_one_transaction(sqlite_ready):
    from evals.bench.refresh_floor import floor_audit, floor_refresh, floor_slice
    from tools.book import list_accounts
    from tools.sources.registry import engine_for

    book = [a.customer_id for a in list_accounts(sqlite_ready.settings)]
    with statements_on(sqlite_ready.settings.state_db_url) as state:
        got = floor_refresh(sqlite_ready.settings, book, sqlite_ready.clock.as_of)
    assert got["customers"] == len(book) and got["statements"] <= 25  # a few statements for the whole book
    assert len([s for s in state if s.startswith("INSERT INTO bench_floor_slice")]) == 1  # one batch
    with engine_for(sqlite_ready.settings.state_db_url).connect() as conn:
        rows = conn.execute(select(floor_slice.c.customer_id, floor_slice.c.slice)).all()
        audits = conn.execute(select(func.count()).select_from(floor_audit)).scalar()
    assert {cid for cid, _ in rows} == set(book) and len(rows) == got["slices"] > 5 * len(book)
    assert audits >= 1
    one = floor_refresh(sqlite_ready.settings, book[:2], sqlite_ready.clock.as_of, restrict=True)
    assert one["customers"] == 2 and 0 < one["slices"] <= 2 * 15


def test_chat_mentions_of_more_names_than_a_compound_select_may_hold(sqlite_ready):
    """SQLite refuses a compound SELECT of over 500 terms (the names' derived table): the names
    are matched in chunks, and every name still gets what its single read gets."""
    from math import ceil

    from tools.sources.chat import NAMES_PER_STATEMENT, MentionLookup
    from tools.sources.registry import engine_for

    clock = sqlite_ready.clock
    rdr = reader(sqlite_ready.settings, "chat")
    customers = {c.name.lower(): c for c in _customers(sqlite_ready)}
    names = sorted({*customers, *(f"nobody-{i:04d}" for i in range(600))})
    assert len(names) > 500 >= NAMES_PER_STATEMENT
    since = clock.as_of - timedelta(days=rdr.mapping.settings.get("window_days", 30))
    lookup = MentionLookup(rdr.mapping.entity("message"), since, clock.as_of)
    url = sqlite_ready.settings.source("chat").url
    with engine_for(url).connect() as conn:
        with statements_on(url) as seen:
            got = lookup(conn, names)
        assert len(seen) == ceil(len(names) / NAMES_PER_STATEMENT)
        assert set(got) == set(names) and not any(got[n].rows for n in names if n.startswith("nobody-"))
        found = 0
        for name, customer in customers.items():
            single = rdr.read_mentions(conn, customer, clock)
            assert sorted(r["id"] for r in got[name].rows) == sorted(m.id for m in single.mentions), name
            found += len(single.mentions)
    assert found > 0


def test_the_benchmark_floor_runs_on_postgresql(pg_server, tmp_path):
    """PostgreSQL has no ``max(boolean)`` (the ``delinquent`` aggregate is ``max(CASE ...)``) and
    compares no ``bigint`` key with a text one (the incremental floor's ``IN`` lists take each key
    column's own type): the full floor and the restricted one both run, and agree on SQLite's."""
    from evals.bench.refresh_floor import floor_refresh, floor_slice
    from tools.book import list_accounts
    from tools.sources.registry import engine_for

    url, state = pg_server.create_database(), pg_server.create_database()
    seed(url, customers=0)
    r = ready(settings_for(url, tmp_path, state_url=state))
    try:
        book = sorted(a.customer_id for a in list_accounts(r.settings))
        full = floor_refresh(r.settings, book, r.clock.as_of)
        assert full["customers"] == len(book) and full["slices"] > 5 * len(book)
        with engine_for(state).connect() as conn:
            status = {cid: json.loads(v) for cid, v in conn.execute(
                select(floor_slice.c.customer_id, floor_slice.c.value).where(floor_slice.c.slice == "billing.status"))}
        flags = [s["customer"]["delinquent"] for s in status.values() if "customer" in s]
        assert flags and set(flags) <= {0, 1}
        some = book[:3]
        part = floor_refresh(r.settings, some, r.clock.as_of, restrict=True)
        assert part["customers"] == 3 and 0 < part["slices"] <= 3 * 15
    finally:
        dispose_engines()
