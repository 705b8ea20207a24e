"""Typed graph interfaces: every graph publishes its own input, output and context schema —
through its own methods and through `langgraph dev`, which LangGraph Studio and clients use."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import fields
from pathlib import Path

import pytest

from agent.graphs import assistant, review, triage
from agent.run_context import RunContext

ROOT = Path(__file__).parents[1]
GRAPHS = {"assistant": assistant.graph, "triage": triage.graph, "review": review.graph}
INPUTS = {"assistant": {"messages", "customer"}, "triage": {"ticket", "customer"}, "review": {"customer"}}
OUTPUTS = {"customer_id", "customer_name", "result", "error"}
CONTEXT = {"model", "max_plan_steps", "fresh"}  # nothing that says who asks or which settings apply


@pytest.mark.parametrize("name", list(GRAPHS))
def test_each_graph_has_its_own_input_output_and_context_schema(name):
    g = GRAPHS[name]
    inp, out, ctx = g.get_input_jsonschema(), g.get_output_jsonschema(), g.get_context_jsonschema()
    assert set(inp["properties"]) == INPUTS[name]
    assert set(out["properties"]) == OUTPUTS
    assert set(ctx["properties"]) == CONTEXT
    result = out["$defs"][{"assistant": "AnswerResult", "triage": "TriageResult", "review": "ReviewResult"}[name]]
    assert {"assistant": "answer", "triage": "priority", "review": "markdown"}[name] in result["properties"]
    json.dumps([inp, out, ctx])  # plain JSON


def test_the_run_context_is_plain_and_frozen():
    rc = RunContext(model="offline")
    with pytest.raises(AttributeError):
        rc.model = "gpt-4o"  # type: ignore[misc]
    assert {f.name for f in fields(RunContext)} == CONTEXT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, body: dict | None = None) -> object:
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_langgraph_dev_lists_the_three_graphs_with_their_schemas_and_runs_one(tmp_path):
    port = _free_port()
    env = {**os.environ, "CUSTCTX_HOME": str(tmp_path / "home"), "LANGGRAPH_CLI_NO_ANALYTICS": "1",
           "LANGSMITH_TRACING": "false"}
    langgraph = shutil.which("langgraph")
    assert langgraph, "langgraph-cli[inmem] is part of the test extra: pip install -e '.[test]'"
    proc = subprocess.Popen([langgraph, "dev", "--no-browser", "--no-reload",
                             "--port", str(port), "--config", str(ROOT / "langgraph.json")], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:  # poll the server's readiness endpoint (no sleep-based synchronisation of results)
            try:
                _get(f"{base}/ok")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"langgraph dev did not start: {proc.stderr.read().decode()[-2000:]}"
                                         if proc.stderr else "langgraph dev did not start") from None
                time.sleep(0.2)
        found = _get(f"{base}/assistants/search", {})
        assert isinstance(found, list)
        by_graph = {a["graph_id"]: a["assistant_id"] for a in found}
        assert set(by_graph) == set(GRAPHS)
        for name, assistant_id in by_graph.items():
            schemas = _get(f"{base}/assistants/{assistant_id}/schemas")
            assert isinstance(schemas, dict)
            for key in ("input_schema", "output_schema", "context_schema"):
                assert schemas[key] is not None, (name, key)
            assert set(schemas["input_schema"]["properties"]) == INPUTS[name]
            assert set(schemas["context_schema"]["properties"]) == CONTEXT
        # a run on the server: no application bound its services, the graph builds them itself
        out = _get(f"{base}/runs/wait", {"assistant_id": "assistant", "input": {
            "messages": [{"role": "human", "content": "What's their billing status?"}], "customer": "acme.com"}})
        assert isinstance(out, dict) and out["error"] is None
        assert out["result"]["slices_used"] == ["billing.status", "billing.invoices"]
        assert "masked (role support_agent)" in out["result"]["answer"]  # served graphs default to support_agent
        # the run context cannot say who asks: a client's settings/principal are not run settings
        escalate = _get(f"{base}/runs/wait", {"assistant_id": "assistant", "context": {
            "settings": {"role": "admin", "user": "eve"}, "principal": {"role": "admin", "user": "eve"}},
            "input": {"messages": [{"role": "human", "content": "What's their billing status?"}],
                      "customer": "acme.com"}})
        assert isinstance(escalate, dict)
        assert "4242" not in json.dumps(escalate) and "masked (role support_agent)" in json.dumps(escalate)
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """End the server and its workers (its own process group)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=20)
            return
        except ProcessLookupError:  # already gone
            proc.wait()
            return
        except subprocess.TimeoutExpired:
            continue

