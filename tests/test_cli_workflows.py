"""``custctx ask | chat | triage | review`` as a user runs them: the real command in a
subprocess, on the embedded default (fixture warehouse seeded on first use)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
from langgraph.graph.state import CompiledStateGraph

from agent.run_context import RunContext

from .test_cli import custctx

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("cli-workflows")


def run_json(home, *args, check=True):
    proc = custctx(home, *args, "--format", "json", check=check)
    return json.loads(proc.stdout), proc


def test_ask_answers_with_citations_and_continues_a_thread(home):
    res, proc = run_json(home, "ask", "What's their billing status?", "--customer", "acme.com")
    assert res["slices_used"] == ["billing.status", "billing.invoices"]
    assert "past_due" in res["answer"] and "card_declined" in res["answer"]
    assert {c["slice"] for c in res["citations"]} == {"billing.status", "billing.invoices"}
    assert res["gaps"] == [] and res["model"] == "offline-deterministic"
    thread = res["thread_id"]
    assert f"--thread {thread}" in proc.stderr
    follow, _ = run_json(home, "ask", "and their usage?", "--thread", thread)  # a new process
    assert follow["customer"]["name"] == "Acme Corp" and follow["slices_used"] == ["product.usage"]
    assert "250 active users" in follow["answer"] and follow["turn"] == 2


def test_ask_markdown_and_user_errors(home):
    proc = custctx(home, "ask", "What's going on with them?", "--customer", "cyberdyne.ai", check=True)
    assert "Cyberdyne platform" in proc.stdout and "**Missing context**" in proc.stdout
    assert "_Slices used:" in proc.stdout
    amb = custctx(home, "ask", "billing?", "--customer", "acme")
    assert amb.returncode == 3 and "Acme Logistics" in amb.stderr and "Traceback" not in amb.stderr
    none = custctx(home, "ask", "billing?")
    assert none.returncode == 2 and "--customer" in none.stderr
    # an unknown company: not found, and the assistant asks who the customer is (one line)
    unknown = custctx(home, "ask", "billing?", "--customer", "nobody-we-know.example")
    assert unknown.returncode == 1 and len(unknown.stderr.strip().splitlines()) == 1
    assert "No customer matches" in unknown.stderr and "Who is the customer you are talking to?" in unknown.stderr
    bad_thread = custctx(home, "ask", "billing?", "--thread", "t-does-not-exist")
    assert bad_thread.returncode == 2
    nokey = custctx(home, "ask", "billing?", "--customer", "acme.com", "--model", "gpt-4o-mini")
    assert nokey.returncode == 2 and "OPENAI_API_KEY" in nokey.stderr and "Traceback" not in nokey.stderr


def test_chat_reads_questions_from_stdin_and_persists_the_thread(home):
    exe = custctx.__globals__["shutil"].which("custctx")
    env = {**custctx.__globals__["os"].environ, "CUSTCTX_HOME": str(home), "CUSTCTX_SEED_CUSTOMERS": "20"}
    proc = subprocess.run([exe, "chat", "--customer", "umbrella-health.com", "--thread", "t-chat"],
                          input="Any open support tickets?\nand their usage?\n/exit\n", capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "CSAT 2.9" in proc.stdout and "stable" in proc.stdout
    assert "Chatting about Umbrella Health (thread t-chat)" in proc.stderr
    again, _ = run_json(home, "ask", "What's their billing status?", "--thread", "t-chat")
    assert again["customer"]["name"] == "Umbrella Health" and again["turn"] == 3


def test_triage_a_fixture_ticket_a_file_and_the_open_queue(home, tmp_path):
    d, _ = run_json(home, "triage", "--ticket", "1001")
    assert (d["category"], d["priority"], d["team"]) == ("billing", "P1", "billing")
    assert d["customer"]["name"] == "Acme Corp" and d["sla_hours"] > 0
    assert set(d["slices_used"]) <= {"crm.account", "billing.status", "support.summary", "product.usage"}
    assert any(e["slice"] == "billing.status" for e in d["evidence"])
    same_text = tmp_path / "ticket.json"
    same_text.write_text(json.dumps({"subject": "Card declined", "requester_email": "ops@acmelogistics.com",
                                     "description": "Hi, we just got an email saying our card was declined. "
                                                    "What do we need to do to keep our account running?"}))
    other, _ = run_json(home, "triage", "--file", str(same_text))
    assert other["customer"]["name"] == "Acme Logistics" and other["priority"] == "P3"

    wayne, _ = run_json(home, "triage", "--ticket", "1010")
    assert wayne["suspected_injection"] is True and wayne["category"] == "security"
    text = json.dumps(wayne)
    for other_customer in ("Acme", "Globex", "Umbrella", "4242", "Stark", "Massive"):
        assert other_customer not in text

    queue, _ = run_json(home, "triage", "--open", "--limit", "5")
    assert len(queue) == 5 and all(q.get("priority") in ("P1", "P2", "P3", "P4") for q in queue)
    md = custctx(home, "triage", "--ticket", "1010", check=True)
    assert "Suspected prompt injection" in md.stdout

    missing = custctx(home, "triage", "--ticket", "999999")
    assert missing.returncode == 1 and "999999" in missing.stderr and "Traceback" not in missing.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    broken = custctx(home, "triage", "--file", str(bad))
    assert broken.returncode == 1 and "bad.json" in broken.stderr and "Traceback" not in broken.stderr
    assert custctx(home, "triage").returncode == 2


def test_review_the_whole_book_resumably(home, tmp_path):
    out = tmp_path / "reviews"
    first = custctx(home, "review", "--all", "--out", str(out), "--concurrency", "3", check=True)
    files = sorted(p.name for p in out.glob("*.md") if p.name != "index.md")
    assert any(f.startswith("acme-corp--") for f in files)
    assert not any("soylent" in f for f in files), "churned accounts are left out by default"
    acme = next(out.glob("acme-corp--*.md")).read_text()
    for heading in ("### Summary", "### Relationship Snapshot", "### Key Contacts", "### Commercial Summary",
                    "### Recent Activity", "### Open Items", "### Context from", "### Missing Context"):
        assert heading in acme
    data = json.loads(next(out.glob("acme-corp--*.json")).read_text())
    assert data["review"]["billing"]["status"] == "past_due" and len(data["plan"]) == 4
    assert "written" in first.stdout
    again = custctx(home, "review", "--all", "--out", str(out), check=True)
    assert "0 reviews written" in again.stdout
    churned = custctx(home, "review", "--customer", "soylent.com", "--out", str(out), check=True)
    assert "1 reviews written" in churned.stdout or "1 review written" in churned.stdout
    custctx(home, "review", "--owner", "dana.scully", "--out", str(tmp_path / "dana"), check=True)
    names = {p.name.split("--")[0] for p in (tmp_path / "dana").glob("*.md")}
    assert {"acme-corp", "umbrella-health"} <= names and "massive-dynamic" not in names
    assert custctx(home, "review", "--out", str(out)).returncode == 2


def test_langgraph_json_exposes_the_three_graphs():
    config = json.loads((ROOT / "langgraph.json").read_text())
    assert set(config["graphs"]) == {"assistant", "triage", "review"}
    for target in config["graphs"].values():
        module_name, attr = target.split(":")  # graphs named by module: langgraph dev runs from any directory
        graph = getattr(importlib.import_module(module_name), attr)
        assert isinstance(graph, CompiledStateGraph)
        assert graph.builder.context_schema is RunContext
        assert "resolve_customer" in graph.nodes
        if graph.name == "assistant":  # the model ↔ tools loop
            assert {"agent", "tools", "finish"} <= set(graph.nodes)
        else:  # fixed steps
            assert {"plan", "fetch_slice", "respond"} <= set(graph.nodes)
