"""``custctx bench`` runs end to end from the CLI on a small warehouse and reports every
measure with its baseline; no test here asserts a speed (figures are the benchmark's job)."""

from __future__ import annotations

import json

from evals.bench.run import percentile

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
                  "Graph overhead", "Batch reviews"):
        assert words in (out / "bench.md").read_text()
    assert "custctx bench: 33 customers" in proc.stdout and "Cold" in proc.stdout  # the table, printed
    report = json.loads((out / "bench.json").read_text())
    rows = {r["measure"].split(" (")[0]: r for r in report["rows"]}
    assert report["machine"]["cores"] >= 1 and report["customers"] == 20 + 13
    full = rows["Full refresh"]["figures"]
    assert full["customers"] == report["active"] > 0 and full["failures"] == 0 and full["slices"] > full["customers"]
    incr = rows["Incremental refresh, 1% changed"]["figures"]
    assert incr["changed"] >= 1 and 1 <= incr["customers"] <= incr["changed"] + 1 and incr["failures"] == 0
    warm = rows["Warm context lookup"]["figures"]
    assert warm["samples"] > 100 and warm["slices_per_customer"] > 1 and warm["floor_p50_ms"] > 0
    cold = rows["Cold assembly"]["figures"]
    assert cold["samples"] > 100 and cold["floor_p50_ms"] > 0 and rows["Cold assembly"]["ratio"] > 0
    tokens = rows["Tokens per assistant question"]["figures"]
    assert tokens["questions"] >= 40 and 0 < tokens["shown_total"] < tokens["full_total"]
    reviews = rows["Batch reviews"]["figures"]
    assert {k: v["accounts"] for k, v in reviews.items()} == {"5": 5, "12": 12}
    assert all(v["failed"] == 0 for v in reviews.values())
    # a second run reuses the warehouse and starts from an empty state
    again = custctx(tmp_path / "home", "bench", "--customers", "20", "--reviews", "5", "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "bench.json").read_text())["seed_seconds"] is None


def test_bench_rejects_bad_review_sizes(tmp_path):
    proc = custctx(tmp_path, "bench", "--reviews", "many", "--out", str(tmp_path / "b"))
    assert proc.returncode == 2 and "--reviews" in proc.stderr and "Traceback" not in proc.stderr
