"""The evaluators are pure functions; the gate fails when a fact, a slice rule or a
policy is broken on purpose."""

from __future__ import annotations

import json

import pytest

from agent.offline import answers, planning
from evals import evaluators as ev
from evals import runner as eval_runner
from evals.runner import CaseResult, EvalReport, run_eval, write_report

from .conftest import settings_for
from .test_cli import custctx


def test_fact_accuracy_and_gap_reporting():
    assert ev.fact_accuracy("past_due since 2025-12-01", ["past_due", "2025-12-01"])["score"] == 1.0
    r = ev.fact_accuracy("past_due", ["past_due", "visa •4242"])
    assert r["score"] == 0.5 and "visa •4242" in r["comment"]
    assert ev.gap_reporting(["crm.account:not_found"], ["crm.account:not_found"], "crm.account (not_found)")["score"] == 1
    assert ev.gap_reporting([], ["crm.account:not_found"])["score"] == 0


def test_unsupported_claims_counts_numbers_and_dates_no_slice_contains():
    context = {"slices": {"billing.status": {"balance_due": 15000.0, "last_payment_date": "2025-12-01",
                                             "fetched_at": "2026-01-14T09:00:00"}, "product.usage": {"feature_adoption": 0.8}}}
    ok = "Balance due $15,000.00 [billing.status], paid 2025-12-01, seen 2026-01-14, adoption 80%, 1 day ago."
    assert ev.unsupported_claims(ok, context)["score"] == 0
    bad = ev.unsupported_claims("Balance due $16,000.00, paid 2025-12-02, churn risk 45/100", context)
    assert bad["score"] == 3 and "16,000.00" in bad["comment"] and "2025-12-02" in bad["comment"]
    assert "100" not in bad["comment"].split(", ")  # the scale of a score is not a claim


def test_slice_precision_recall_and_forbidden():
    p, r, f = ev.slice_precision_recall({"billing.status", "calls.highlights"}, {"billing.status", "billing.invoices"},
                                        {"calls.highlights"})
    assert (p["score"], r["score"], f["score"]) == (0.5, 0.5, 1.0)


def test_triage_metrics_and_pass_hat_k():
    assert ev.triage_field("priority", ["P1", "P2"], ["P1", "P3"])["score"] == 0.5
    assert ev.macro_f1(["billing", "bug"], ["billing", "bug"])["score"] == 1.0
    assert ev.macro_f1(["billing", "billing"], ["billing", "bug"])["score"] == pytest.approx((2 / 3 + 0) / 2)
    assert ev.pass_hat_k(3, 3, 3) == 1.0 and ev.pass_hat_k(2, 3, 2) == pytest.approx(1 / 3)
    assert ev.pass_hat_k(0, 3, 1) == 0.0


def test_review_completeness_and_leaks():
    md = "### Summary\nx\n### Missing Context\n- billing.status (not_found)"
    assert ev.review_completeness(md, ["Summary", "Missing Context"], ["x"], ["billing.status:not_found"])["score"] == 1
    assert ev.review_completeness(md, ["Summary", "Key Contacts"])["score"] == 0.5
    assert ev.leak_count({"answer": "Acme Corp card visa •4242"}, ["4242", "Globex"])["score"] == 1


def _report(*scores):
    return EvalReport("r", "offline", 1, ["assistant"], [CaseResult("assistant", "c", 1, True, list(scores), 1, 0)])


def test_gate_fails_on_each_threshold():
    good = [ev.result("fact_accuracy", 1.0), ev.result("unsupported_claims", 0.0), ev.result("leaks", 0.0),
            ev.result("slice_recall", 1.0), ev.result("slice_precision", 1.0)]
    assert _report(*good).gate_passed
    for i, bad in enumerate([0.9, 1.0, 1.0, 0.5, 0.5]):
        broken = [dict(s) for s in good]
        broken[i]["score"] = bad if i not in (1, 2) else 1.0
        assert not _report(*broken).gate_passed, broken[i]["key"]


@pytest.fixture
def one_case(monkeypatch):
    """The assistant suite reduced to Acme's billing and overview questions."""
    data = eval_runner.load("assistant")
    data["cases"] = [c for c in data["cases"] if c["id"] == "acme"]
    real = eval_runner.load
    monkeypatch.setattr(eval_runner, "load", lambda name: data if name == "assistant" else real(name))


def test_the_gate_passes_on_the_real_workflow(sqlite_warehouse, tmp_path, one_case):
    report = run_eval(settings_for(sqlite_warehouse, tmp_path), ["assistant"])
    assert report.gate_passed and len(report.results) == 4
    md, js = write_report(report, tmp_path / "out")
    assert "| assistant | 4 | 4 |" in md.read_text()
    data = json.loads(js.read_text())
    assert data["gate_passed"] and data["settings"]["as_of"].startswith("2026-01-15")


def test_breaking_a_slice_rule_fails_the_gate(sqlite_warehouse, tmp_path, one_case, monkeypatch):
    billing = planning.INTENTS_BY_NAME["billing"]
    monkeypatch.setitem(planning.INTENTS_BY_NAME, "billing",
                        planning.Intent("billing", billing.patterns, ("billing.status", "calls.highlights")))
    report = run_eval(settings_for(sqlite_warehouse, tmp_path), ["assistant"])
    assert not report.gate_passed
    failing = {key for key, *_, ok in report.gate() if not ok}
    assert {"slice_recall", "slice_precision"} <= failing


def test_breaking_a_fact_fails_the_gate(sqlite_warehouse, tmp_path, one_case, monkeypatch):
    real = answers.billing_lines
    monkeypatch.setitem(answers.SECTIONS, "billing", lambda s: [x.replace("past_due", "current") for x in real(s)])
    report = run_eval(settings_for(sqlite_warehouse, tmp_path), ["assistant"])
    assert not report.gate_passed
    assert [k for k, *_, ok in report.gate() if not ok] == ["fact_accuracy"]


def test_custctx_eval_writes_the_report_and_gates(tmp_path):
    proc = custctx(tmp_path / "home", "eval", "--suite", "injection", "--out", str(tmp_path / "out"), "--gate")
    assert proc.returncode == 0, proc.stderr
    assert "| injection | 18 | 18 |" in proc.stdout
    assert (tmp_path / "out" / "results.json").exists()
    bad = custctx(tmp_path / "home", "eval", "--suite", "nope", "--out", str(tmp_path / "out"))
    assert bad.returncode == 2 and "unknown suite" in bad.stderr


def test_breaking_the_policy_fails_the_gate(sqlite_warehouse, tmp_path):
    """A support agent allowed to see payment methods: the access suite finds the leak."""
    from importlib import resources

    policy = resources.files("tools.access").joinpath("policies/default.yaml").read_text(encoding="utf-8")
    broken = policy.replace("      crm.account: [contract_value]\n      billing.status: [payment_method]\n",
                            "      crm.account: [contract_value]\n", 1)
    assert broken != policy
    (tmp_path / "policy.yaml").write_text(broken, encoding="utf-8")
    good = run_eval(settings_for(sqlite_warehouse, tmp_path / "a"), ["access"], entry_points=())
    assert good.gate_passed and len(good.results) == 339  # context 7×13 + tickets, threads, events, timing
    bad = run_eval(settings_for(sqlite_warehouse, tmp_path / "b", policy=tmp_path / "policy.yaml"), ["access"],
                   entry_points=())
    failing = {key for key, *_, ok in bad.gate() if not ok}
    assert {"leaks", "access_policy"} <= failing
    assert any("support_agent" in r.case and "acme.com" in r.case and not r.passed for r in bad.results)
