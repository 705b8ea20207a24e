"""``custctx bench`` runs end to end from the CLI on a small warehouse and reports every
measure with its baseline; no test here asserts a speed (figures are the benchmark's job)."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing

from evals.bench.large import large_customer_for
from evals.bench.run import percentile
from tools.embedded.large import LargeCustomer

from .test_cli import custctx


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99 and percentile(values, 100) == 100
    assert percentile([3.0], 99) == 3.0 and percentile([], 50) == 0.0


def test_bench_runs_from_the_cli_and_reports_every_measure(tmp_path):
    out = tmp_path / "bench"
    proc = custctx(tmp_path / "home", "bench", "--customers", "20", "--reviews", "5,12", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    for words in ("Full refresh", "Incremental refresh", "Warm context lookup", "Cold assembly", "Tokens per",
                  "large customer", "Graph overhead", "Batch reviews"):
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
    cold = rows["Cold assembly"]["figures"]
    assert cold["samples"] > 100 and cold["floor_p50_ms"] > 0 and rows["Cold assembly"]["ratio"] > 0
    for measure in ("Tokens per assistant question", "Tokens per question, large customer"):
        row = rows[measure]
        assert 0 < row["ratio"] <= 1 and row["met"] in (True, False), measure
        assert 0 < row["figures"]["shown_total"] < row["figures"]["full_total"], measure
        assert row["figures"]["problems"] == [], measure  # every answer stated its facts and cited its slices
    tokens = rows["Tokens per assistant question"]["figures"]
    assert tokens["questions"] == tokens["asked"] >= 40
    assert set(tokens["by_kind"]) == {"billing", "usage", "support", "overview"}
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


def test_bench_rejects_bad_review_sizes(tmp_path):
    proc = custctx(tmp_path, "bench", "--reviews", "many", "--out", str(tmp_path / "b"))
    assert proc.returncode == 2 and "--reviews" in proc.stderr and "Traceback" not in proc.stderr
