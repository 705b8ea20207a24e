"""The README's commands, run as a user runs them: the installed `custctx` script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("custctx-home")


def custctx(home, *args, check=False, env_extra=None):
    exe = shutil.which("custctx")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "agent.interfaces.cli.app", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTCTX_")}
    env.update(CUSTCTX_HOME=str(home), CUSTCTX_SEED_CUSTOMERS="20", **(env_extra or {}))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_context_seeds_on_first_use_and_prints_acme(home):
    proc = custctx(home, "context", "acme.com", check=True)
    assert (home / "warehouse.sqlite").exists()
    text = proc.stdout
    for expected in ("## Customer Context: Acme Corp", "### Relationship Snapshot", "### Key Contacts",
                     "### Commercial Summary", "### Recent Activity", "### Open Items", "### Missing Context",
                     "dana.scully", "at risk", "billing_issue", "declining_usage", "Wile Coyote", "Rhoda Runner",
                     "Acme expansion 2026", "past_due", "visa •4242", "card_declined", "250 active users",
                     "CSAT 4.2", "Acme QBR", "2026-02-28"):
        assert expected in text, expected
    assert "Traceback" not in proc.stderr


def test_context_json_has_the_reference_shape(home):
    view = json.loads(custctx(home, "context", "acme.com", "--format", "json", check=True).stdout)
    assert set(view) >= {"customer_id", "customer", "billing", "usage", "support", "risk_indicators",
                         "context_updated", "health", "gaps", "conflicts", "provenance"}
    assert set(view["customer"]) >= {"name", "email", "tier", "mrr", "plan"}
    assert set(view["billing"]) >= {"status", "last_payment", "method"}
    assert set(view["usage"]) >= {"active_users", "last_login", "trend"}
    assert set(view["support"]) >= {"open_tickets", "total_tickets", "avg_resolution_time", "satisfaction_score"}
    assert view["customer"]["mrr"] == 15000 and view["billing"]["status"] == "past_due"


def test_slices_option_limits_the_context(home):
    view = json.loads(custctx(home, "context", "globex.com", "-f", "json", "--slices", "billing.status").stdout)
    assert list(view["provenance"]) == ["billing.status"] and view["usage"] is None


def test_ambiguous_name_lists_both_acmes(home):
    proc = custctx(home, "context", "acme")
    assert proc.returncode != 0
    assert "Acme Corp" in proc.stderr and "Acme Logistics" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("ref", ["nobody@nowhere.test", "bad@@email", "zzzqqq"])
def test_unknown_or_malformed_reference_is_one_line(home, ref):
    proc = custctx(home, "context", ref)
    assert proc.returncode != 0 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_unknown_slice_is_one_line(home):
    proc = custctx(home, "context", "acme.com", "--slices", "billing.nope")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


# A support warehouse of its own that cannot be reached; the embedded fixtures are asked for
# explicitly (with any source URL of its own they are left out by default).
DEAD_SUPPORT = {"CUSTCTX_SOURCES__SUPPORT__URL": "postgresql+psycopg://nobody@127.0.0.1:1/none",
                "CUSTCTX_EMBEDDED": "true"}
SUPPORT_DOWN = {"CUSTCTX_FAULTS": "support=down", "CUSTCTX_GUARD__BACKOFF_INITIAL_S": "0.01"}


def test_unreachable_source_becomes_a_gap(tmp_path):
    proc = custctx(tmp_path, "context", "acme.com", "-f", "json", check=True, env_extra=DEAD_SUPPORT)
    view = json.loads(proc.stdout)
    assert {(g["slice"], g["kind"]) for g in view["gaps"]} == {("support.summary", "unavailable"),
                                                              ("support.tickets", "unavailable")}
    assert all("support source failed" in g["message"] for g in view["gaps"])
    assert view["billing"]["status"] == "past_due" and view["support"] is None
    assert {s["source"]: s["status"] for s in view["sources"]}["support"] == "failed"


def test_unreachable_source_is_answered_from_memory_when_it_can(home):
    custctx(home, "context", "acme.com", check=True)  # leaves snapshots in long-term memory
    # The same configuration with its support source down (a changed URL is another
    # configuration, whose snapshots are never served: tests/test_config_safety.py).
    view = json.loads(custctx(home, "context", "acme.com", "-f", "json", check=True, env_extra=SUPPORT_DOWN).stdout)
    assert view["gaps"] == [] and view["support"]["open_tickets"] == 3
    assert view["provenance"]["support.summary"]["stale"] is True
    assert {s["source"]: s["status"] for s in view["sources"]}["support"] == "stale"


def test_fault_injection_from_the_environment(tmp_path):
    proc = custctx(tmp_path, "context", "globex.com", "-f", "json", check=True,
                   env_extra={"CUSTCTX_FAULTS": "billing=down", "CUSTCTX_GUARD__BACKOFF_INITIAL_S": "0.01"})
    view = json.loads(proc.stdout)
    assert {g["slice"] for g in view["gaps"]} == {"billing.status", "billing.invoices"}
    assert view["usage"]["active_users"] == 80


def test_sources_command_reports_every_source(home):
    rows = json.loads(custctx(home, "sources", "-f", "json", check=True,
                              env_extra={"CUSTCTX_SOURCES__CHAT__ENABLED": "false"}).stdout)
    status = {r["source"]: r["status"] for r in rows}
    assert status.pop("chat") == status.pop("commerce") == "not_connected"  # commerce: optional, no URL
    assert set(status.values()) == {"ok"}
    assert all(r["rows"] > 0 and r["latency_ms"] is not None for r in rows if r["status"] == "ok")


def test_bad_fault_spec_is_one_line(home):
    proc = custctx(home, "context", "acme.com", env_extra={"CUSTCTX_FAULTS": "billing=sideways"})
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1 and "bad fault" in proc.stderr


def test_disconnected_source_names_its_remedy(home):
    proc = custctx(home, "context", "billing@hooli.xyz", "-f", "json", check=True,
                   env_extra={"CUSTCTX_SOURCES__CRM__ENABLED": "false"})
    view = json.loads(proc.stdout)
    crm = [g for g in view["gaps"] if g["source"] == "crm"]
    assert {g["kind"] for g in crm} == {"not_connected"} and len(crm) == 4
    assert crm[0]["remedy"].startswith("Connect a CRM source (HubSpot, Salesforce")
    assert view["customer"]["name"] == "Hooli" and view["billing"]["status"] == "current"
