"""The benchmark's reference query (``evals.bench.sql``) computes exactly the customer,
billing, usage and support sections the product assembles, for every customer of the
fixture warehouse — values and types — on SQLite and PostgreSQL, touching base tables only
through their indexes."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from typing import Any

import psycopg
from sqlalchemy import select
from sqlalchemy.engine import make_url

from agent.bootstrap import Ready, ready
from evals.bench.reads import floor_part
from evals.bench.sql import REFERENCE_SQL, query_params, reference_row
from tools.context.assembly import assemble_context
from tools.context.scope import ReadScope
from tools.context.view import reference_view
from tools.identity import _ref as identity_ref
from tools.identity import identity_customer
from tools.sources.base import CustomerRef
from tools.sources.registry import engine_for

from .conftest import settings_for

SLICES = ["crm.account", "crm.contacts", "billing.status", "product.usage", "support.summary"]
SECTIONS = ("customer", "billing", "usage", "support")


def _customers(r: Ready) -> list[CustomerRef]:
    with engine_for(r.settings.state_db_url).connect() as conn:
        return [identity_ref(row._mapping) for row in conn.execute(select(identity_customer))]


def _typed(v: Any) -> Any:
    """``v`` with every leaf tagged by its type: 15000 and 15000.0 are not the same answer."""
    if isinstance(v, dict):
        return {k: _typed(x) for k, x in v.items()}
    return (type(v).__name__, v)


def _assert_matches_product(r: Ready, conn: Any) -> None:
    customers = _customers(r)
    assert len(customers) > 50
    present = dict.fromkeys(SECTIONS, 0)
    for c in customers:
        view = reference_view(assemble_context(ReadScope.build(r.settings, r.clock), c, SLICES), include_slices=False)
        mine = reference_row(conn, c, r.clock.as_of, r.settings.thresholds)
        # the floor's fields of each section (the view may carry more: a mapping's custom fields)
        expected = floor_part({k: view[k] for k in SECTIONS}, mine)
        assert _typed(mine) == _typed(expected), c.name
        for k in SECTIONS:
            present[k] += mine[k] is not None
    # Every section is exercised, and so is its absence (a customer some source lacks).
    assert all(0 < n < len(customers) for k, n in present.items() if k != "customer"), present


def test_reference_query_equals_the_assembled_view_for_every_customer(sqlite_ready):
    path = make_url(sqlite_ready.settings.source("crm").url).database
    with closing(sqlite3.connect(path)) as conn:
        _assert_matches_product(sqlite_ready, conn)


def test_reference_query_reads_base_tables_only_through_indexes(sqlite_ready):
    path = make_url(sqlite_ready.settings.source("crm").url).database
    customer = sqlite_ready.index.resolve("acme.com")[0]
    params = query_params(customer, sqlite_ready.clock.as_of, sqlite_ready.settings.thresholds)
    with closing(sqlite3.connect(path)) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + REFERENCE_SQL, params)]
    # SCAN lines name CTEs (one customer's rows) or the constant row; a base table is searched.
    scanned = {line.split()[1] for line in plan if line.startswith("SCAN ")}
    assert not scanned & tables, plan
    assert sum(line.startswith("SEARCH ") for line in plan) >= 12, plan


def test_reference_query_runs_on_postgresql(postgres_warehouse, tmp_path):
    r = ready(settings_for(postgres_warehouse, tmp_path))
    url = make_url(postgres_warehouse)
    with psycopg.connect(host=url.host, port=url.port, user=url.username, dbname=url.database) as conn:
        _assert_matches_product(r, conn)
