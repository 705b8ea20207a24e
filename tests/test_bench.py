"""``custctx bench`` runs end to end from the CLI on a small warehouse and reports every
measure with its baseline; no test here asserts a speed (figures are the benchmark's job)."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing

import pytest

from evals.bench.large import large_customer_for
from evals.bench.run import percentile
from tools.embedded.large import LargeCustomer

from .test_cli import custctx


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99 and percentile(values, 100) == 100
    assert percentile([3.0], 99) == 3.0 and percentile([], 50) == 0.0


@pytest.mark.slow  # seeds, refreshes, starts servers and processes: minutes on the 2-core CI machine
def test_bench_runs_from_the_cli_and_reports_every_measure(tmp_path):
    out = tmp_path / "bench"
    proc = custctx(tmp_path / "home", "bench", "--customers", "20", "--reviews", "5,12", "--out", str(out),
                   "--api", "--api-requests", "200")
    assert proc.returncode == 0, proc.stderr
    for words in ("Full refresh", "Incremental refresh", "Warm context lookup", "Served context read",
                  "API warm context", "Cold assembly", "Tokens per", "large customer", "Graph overhead",
                  "Batch reviews"):
        assert words in (out / "bench.md").read_text()
    assert "custctx bench: 34 customers" in proc.stdout and "Cold" in proc.stdout  # the table, printed
    report = json.loads((out / "bench.json").read_text())
    rows = {r["measure"].split(" (")[0]: r for r in report["rows"]}
    assert report["machine"]["cores"] >= 1 and report["customers"] == 20 + 13 + 1  # story, background, large
    full = rows["Full refresh"]["figures"]
    assert full["customers"] == report["active"] > 0 and full["failures"] == 0 and full["slices"] > full["customers"]
    incr = rows["Incremental refresh, 1% changed"]["figures"]
    assert incr["changed"] >= 1 and 1 <= incr["customers"] <= incr["changed"] + 1 and incr["failures"] == 0
    warm = rows["Warm context lookup"]["figures"]
    assert warm["samples"] > 100 and warm["slices_per_customer"] > 1 and warm["floor_p50_ms"] > 0
    served = rows["Served context read, cached customer"]
    assert served["figures"]["samples"] > 100 and served["figures"]["floor_p50_ms"] > 0 and served["ratio"] > 0
    assert served["figures"]["audit_records"] == served["figures"]["audit_expected"] > 0  # none missing
    api = rows["API warm context, concurrency 50"]
    assert api["figures"]["errors"] == 0 and api["figures"]["floor_errors"] == 0 and api["ratio"] > 0
    assert api["figures"]["requests"] == 200 and api["figures"]["audit_records"] == api["figures"]["audit_expected"]
    cold = rows["Cold assembly"]["figures"]
    assert cold["samples"] > 100 and cold["floor_p50_ms"] > 0 and rows["Cold assembly"]["ratio"] > 0
    for measure in ("Tokens per assistant question", "Tokens per question, large customer"):
        row = rows[measure]
        assert 0 < row["ratio"] <= 1 and row["met"] in (True, False), measure
        assert 0 < row["figures"]["shown_total"] < row["figures"]["full_total"], measure
        assert row["figures"]["problems"] == [], measure  # every answer stated its facts and cited its slices
    tokens = rows["Tokens per assistant question"]["figures"]
    assert tokens["questions"] == tokens["asked"] >= 40
    # every kind asked (the held-out questions are "other"); no commerce question — the bench's
    # warehouse has no store, so those customers are not in it (they were 5 failures)
    assert {"billing", "usage", "support", "overview"} <= set(tokens["by_kind"]) <= {
        "billing", "usage", "support", "overview", "other"}
    large = rows["Tokens per question, large customer"]["figures"]
    spec = large_customer_for(20)
    assert large["sizes"]["tickets"] == spec.tickets == 100 and large["customer"] == spec.domain
    assert set(large["by_kind"]) == {"billing", "usage", "support", "overview", "contacts"}
    assert large["dump_tokens_by_slice"]["support.tickets"] > 0
    with closing(sqlite3.connect(out / "warehouse.sqlite")) as con:  # the large customer is in the bench's warehouse
        assert dict(con.execute("SELECT key, value FROM _custctx_meta"))["large_customer"] == spec.key()
        assert con.execute("SELECT count(*) FROM ticket JOIN organization o ON o.id = organization_id "
                           "WHERE o.name = ?", (spec.name,)).fetchone()[0] == spec.tickets
    reviews = rows["Batch reviews"]["figures"]
    assert {k: v["accounts"] for k, v in reviews.items()} == {"5": 5, "12": 12}
    assert all(v["failed"] == 0 for v in reviews.values())
    # a second run reuses the warehouse and starts from an empty state
    again = custctx(tmp_path / "home", "bench", "--customers", "20", "--reviews", "5", "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "bench.json").read_text())["seed_seconds"] is None


def test_large_customer_scales_every_count_but_stays_one_customer():
    full, small = LargeCustomer(), LargeCustomer().scaled(0.25)
    assert (full.tickets, full.email_threads, full.calls, full.activities, full.meetings) == (400, 300, 200, 300, 100)
    assert (small.tickets, small.email_threads, small.calls, small.open_tickets) == (100, 75, 50, 2)
    assert (small.name, small.domain, small.mrr, small.seed) == (full.name, full.domain, full.mrr, full.seed)
    assert small.key() != full.key() and large_customer_for(1_000) == full and large_customer_for(20) == small


def test_bench_refuses_a_url_that_is_not_postgresql(tmp_path):
    for url, words in (("sqlite:///x.db", "must be a PostgreSQL URL"), ("not a url", "is not a database URL")):
        proc = custctx(tmp_path, "bench", "--url", url, "--out", str(tmp_path / "b"))
        assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "b").exists()  # refused before anything is seeded


def test_bench_rejects_bad_review_sizes(tmp_path):
    proc = custctx(tmp_path, "bench", "--reviews", "many", "--out", str(tmp_path / "b"))
    assert proc.returncode == 2 and "--reviews" in proc.stderr and "Traceback" not in proc.stderr


def test_the_load_generator_counts_answers_and_errors_against_a_real_server(tmp_path):
    """``custctx bench --api``'s load generator and floor app, over loopback: every request sent
    once, with the concurrency bound, a non-200 counted as an error (never a latency)."""
    import threading

    import uvicorn

    from evals.bench.api import LoadResult, free_port, load
    from evals.bench.api_floor import floor_app

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(floor_app({"c_1": {"customer_id": "c_1"}}), host="127.0.0.1", port=port,
                                        log_level="warning"))
    started = threading.Event()
    thread = threading.Thread(target=lambda: srv.run(), daemon=True)
    original = srv.startup

    async def startup(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        await original(*args, **kwargs)
        started.set()

    srv.startup = startup  # type: ignore[method-assign]
    thread.start()
    assert started.wait(30)
    try:
        result = LoadResult()
        load(f"http://127.0.0.1:{port}", ["/v1/customers/c_1/context"] * 30 + ["/v1/customers/nobody/context"] * 3,
             5, result)
    finally:
        srv.should_exit = True
        thread.join(30)
    assert result.ok == 30 and result.errors == 3 and "HTTP 404" in (result.first_error or "")
    assert result.seconds > 0 and result.throughput > 0 and all(ms > 0 for ms in result.latencies_ms)


@pytest.mark.slow  # seeds a warehouse on PostgreSQL
def test_the_served_read_measures_on_postgresql(pg_server, tmp_path):
    """``--url``: the benchmark's own two databases on the server, the served read beside the raw
    psycopg read, every audit record counted."""
    import random

    from agent.bootstrap import ready
    from evals.bench.served import measure_served, visible_ids
    from evals.bench.warehouse import PG_STATE, PG_WAREHOUSE, prepare
    from tools.identity import identity_customer
    from tools.sources.registry import dispose_engines, engine_for

    settings, seeded = prepare(tmp_path, 20, None, url=pg_server.url("postgres"))
    try:
        assert seeded is not None and PG_WAREHOUSE in settings.source("crm").url
        assert PG_STATE in settings.state_db_url
        ready(settings)
        with engine_for(settings.state_db_url).connect() as conn:
            ids = [row.customer_id for row in conn.execute(identity_customer.select())]
        hot = visible_ids(settings, ids[:15])
        row = measure_served(settings, [random.Random(1).choice(hot) for _ in range(60)])
        assert row.figures["audit_records"] == row.figures["audit_expected"] > 0
        assert row.figures["floor_p50_ms"] > 0 and row.ratio and row.ratio > 0 and row.figures["samples"] == 60
    finally:
        dispose_engines()


def test_the_token_rows_ask_only_about_customers_the_bench_warehouse_has(sqlite_ready):
    from evals.bench.turns import bench_cases
    from evals.runner import load
    from tools.identity import CustomerNotFound

    data = load("assistant")
    cases = bench_cases(data)
    assert len(cases) >= 40 and not any(c.get("store") for c in cases)
    assert {c["id"] for c in data["cases"] if c.get("store")}.isdisjoint(c["id"] for c in cases)
    for case in cases:  # the bench's warehouse is the fixtures' plus background customers: each one resolves
        sqlite_ready.index.resolve(case["customer"])
    with pytest.raises(CustomerNotFound):  # what the commerce cases failed with
        sqlite_ready.index.resolve("mia.lund@example.com")


def test_the_warehouse_is_prepared_in_a_fresh_directory(tmp_path):
    """Settings refuse a SQLite source whose file does not exist (a typo must not create one): the
    benchmark seeds its warehouse before it builds its settings, so every source is connected."""
    from evals.bench.warehouse import prepare
    from tools.settings import EMBEDDED_SOURCES

    out = tmp_path / "never-made"
    settings, seconds = prepare(out, 10, None)
    assert seconds is not None and (out / "warehouse.sqlite").exists()
    for source in EMBEDDED_SOURCES:
        cfg = settings.source(source)
        assert cfg.url is not None and cfg.problem is None, source
