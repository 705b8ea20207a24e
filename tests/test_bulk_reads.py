"""Bulk reads (``SourceReader.read_many``, what a refresh uses) give exactly the slices that
reading each customer alone gives, for every customer and slice of the fixture warehouse,
on SQLite and PostgreSQL — and in a few queries per chunk, not a few per customer."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import select

from tools.identity import _ref as identity_ref
from tools.identity import identity_customer
from tools.settings import EMBEDDED_SOURCES
from tools.slices import SLICE_MODELS, SLICE_NAMES
from tools.sources.base import SliceNotFound
from tools.sources.batch import RowBatch
from tools.sources.registry import engine_for, reader

from .conftest import statements_on


def _customers(ready):
    with engine_for(ready.settings.state_db_url).connect() as conn:
        return [identity_ref(r._mapping) for r in conn.execute(select(identity_customer))]


def _plain(result):
    if isinstance(result, Exception):
        return (type(result).__name__, str(result))
    data = result.model_dump(mode="json")
    data["provenance"].pop("fetched_at")
    return data


def _single(rdr, name, customer, ctx):
    try:
        return rdr.read(name, customer, ctx)
    except SliceNotFound as exc:
        return exc


def test_bulk_reads_equal_single_reads_for_every_customer_and_slice(backend):
    customers = _customers(backend)
    assert len(customers) > 50
    seen = defaultdict(int)
    for source in EMBEDDED_SOURCES:
        rdr = reader(backend.settings, source)
        names = [n for n in SLICE_NAMES if SLICE_MODELS[n].source == source]
        batch = RowBatch()
        bulk = {}
        for i in range(0, len(customers), 25):  # several chunks through one kept batch
            bulk.update(rdr.read_many({n: customers[i:i + 25] for n in names}, backend.clock, batch))
        for name in names:
            for c in customers:
                single = _single(rdr, name, c, backend.clock)
                assert _plain(bulk[c.customer_id, name]) == _plain(single), (name, c.name)
                seen[type(single).__name__] += 1
    assert seen["SliceNotFound"] and sum(v for k, v in seen.items() if k != "SliceNotFound") > 500


def test_a_bulk_read_costs_queries_per_chunk_not_per_customer(sqlite_ready):
    customers = _customers(sqlite_ready)
    names = [n for n in SLICE_NAMES if SLICE_MODELS[n].source == "billing"]
    rdr = reader(sqlite_ready.settings, "billing")
    url = sqlite_ready.settings.source("billing").url
    with statements_on(url) as few:
        rdr.read_many({n: customers[:10] for n in names}, sqlite_ready.clock)
    with statements_on(url) as more:
        out = rdr.read_many({n: customers for n in names}, sqlite_ready.clock)
    assert len(out) == len(customers) * len(names)
    assert len(more) == len(few) <= 12  # one query per kind of lookup, however many customers
