"""Typed graph interfaces: every graph publishes its own input, output and context schema —
through its own methods and through `langgraph dev`, which LangGraph Studio and clients use —
and a graph served by LangGraph's server reads as the caller its API key names (the auth
`langgraph.json` declares: agent/interfaces/langgraph_auth.py)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.graphs import assistant, review, triage
from agent.run_context import RunContext, served_principal
from tools.access.audit import audit_log
from tools.access.principal import BadPrincipal, Principal
from tools.settings import Settings

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


# ------------------------------------------------------------------ langgraph dev, with the auth of langgraph.json
AGENT_KEY = "lg-test-agent-key-5d1f0c"
ADMIN_KEY = "lg-test-admin-key-9b27e4"
AGENT_TENANT = "tenant-a"  # from the key file: the key names the tenant, not the server
BILLING = {"messages": [{"role": "human", "content": "What's their billing status?"}], "customer": "acme.com"}
MASKED = "masked (role support_agent)"


@dataclass
class Served:
    """A `langgraph dev` subprocess: its URL and data home."""

    base: str
    home: Path

    def call(self, method: str, path: str, key: str | None = None, body: Any = None,
             headers: dict[str, str] | None = None) -> httpx.Response:
        sent = {**({"x-api-key": key} if key else {}), **(headers or {})}
        return httpx.request(method, self.base + path, json=body, headers=sent, timeout=120)

    def run(self, key: str, graph: str = "assistant", inp: dict[str, Any] | None = None,
            **extra: Any) -> httpx.Response:
        return self.call("POST", "/runs/wait", key, {"assistant_id": graph, "input": inp or BILLING, **extra})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_keys(path: Path) -> Path:
    """A key file with a support agent of tenant-a and an admin of the server's tenant."""
    keys = {hashlib.sha256(AGENT_KEY.encode()).hexdigest(): {"user": "alice", "role": "support_agent",
                                                               "tenant": AGENT_TENANT},
            "sha256:" + hashlib.sha256(ADMIN_KEY.encode()).hexdigest(): {"user": "ops", "role": "admin"}}
    path.write_text(json.dumps(keys), encoding="utf-8")
    return path


@contextmanager
def langgraph_dev(home: Path, keys_file: Path | None) -> Iterator[Served]:
    """Start `langgraph dev` on langgraph.json (auth on) and wait for its `/ok`."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTCTX_")}
    env.update(CUSTCTX_HOME=str(home), CUSTCTX_SEED_CUSTOMERS="20", LANGGRAPH_CLI_NO_ANALYTICS="1",
               LANGSMITH_TRACING="false")
    if keys_file is not None:
        env["CUSTCTX_API_KEYS_FILE"] = str(keys_file)
    langgraph = shutil.which("langgraph")
    assert langgraph, "langgraph-cli[inmem] is part of the test extra: pip install -e '.[test]'"
    proc = subprocess.Popen([langgraph, "dev", "--no-browser", "--no-reload", "--port", str(port),
                             "--config", str(ROOT / "langgraph.json")], cwd=home.parent, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    served = Served(f"http://127.0.0.1:{port}", home)
    try:
        deadline = time.monotonic() + 90
        while True:  # poll the server's readiness endpoint (no sleep-based synchronisation of results)
            try:
                if httpx.get(f"{served.base}/ok", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop(proc)
                raise AssertionError(f"langgraph dev did not start: {proc.stderr.read().decode()[-2000:]}"
                                     if proc.stderr else "langgraph dev did not start")
            time.sleep(0.2)
        yield served
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("langgraph-dev")
    with langgraph_dev(root / "home", write_keys(root / "keys.json")) as s:
        yield s


def test_langgraph_dev_lists_the_three_graphs_with_their_schemas_and_runs_one(served):
    found = served.call("POST", "/assistants/search", AGENT_KEY, {}).json()
    assert isinstance(found, list)
    by_graph = {a["graph_id"]: a["assistant_id"] for a in found}
    assert set(by_graph) == set(GRAPHS)
    for name, assistant_id in by_graph.items():
        schemas = served.call("GET", f"/assistants/{assistant_id}/schemas", AGENT_KEY).json()
        assert isinstance(schemas, dict)
        for key in ("input_schema", "output_schema", "context_schema"):
            assert schemas[key] is not None, (name, key)
        assert set(schemas["input_schema"]["properties"]) == INPUTS[name]
        assert set(schemas["context_schema"]["properties"]) == CONTEXT
    # a run on the server: no application bound its services, the graph builds them for the key's principal
    out = served.run(AGENT_KEY).json()
    assert isinstance(out, dict) and out["error"] is None
    assert out["result"]["slices_used"] == ["billing.status", "billing.invoices"]


def test_langgraph_dev_refuses_a_request_without_a_known_key(served):
    assert served.call("GET", "/ok").status_code == 200  # readiness needs no key and shows no data
    for path, body in (("/assistants/search", {}), ("/runs/wait", {"assistant_id": "assistant", "input": BILLING}),
                       ("/threads/search", {})):
        missing = served.call("POST", path, body=body)
        assert missing.status_code == 401, missing.text
        assert "X-API-Key" in missing.json()["detail"] and "Acme" not in missing.text
        unknown = served.call("POST", path, "not-a-key", body)
        assert unknown.status_code == 401 and unknown.json()["detail"] == "unknown API key"
        # LangSmith Studio's scheme carries no credential here: studio auth is off in langgraph.json
        studio = served.call("POST", path, body=body, headers={"x-auth-scheme": "langsmith"})
        assert studio.status_code == 401, studio.text
    bearer = served.call("POST", "/assistants/search", body={}, headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert bearer.status_code == 200 and len(bearer.json()) == len(GRAPHS)


def test_a_served_run_reads_as_the_keys_principal_and_is_audited_as_it(served):
    agent = served.run(AGENT_KEY)
    assert agent.status_code == 200, agent.text
    assert MASKED in agent.json()["result"]["answer"] and "4242" not in agent.text
    admin = served.run(ADMIN_KEY)
    assert admin.status_code == 200, admin.text
    assert "4242" in admin.json()["result"]["answer"] and "masked (role" not in admin.text

    log = audit_log(Settings(home=served.home, state_url=None).state_db_url)
    agents, admins = log.query(AGENT_TENANT, limit=None), log.query("default", limit=None)
    assert agents and admins
    assert {(r.user_name, r.role, r.interface) for r in agents} == {("alice", "support_agent", "langgraph")}
    assert {(r.user_name, r.role, r.interface) for r in admins} == {("ops", "admin", "langgraph")}
    assert {r.slice for r in agents} >= {"billing.status", "billing.invoices"}
    assert any(r.slice == "billing.status" and r.decision == "masked" for r in agents)
    assert any(r.slice == "billing.status" and r.decision == "allowed" for r in admins)


@pytest.mark.parametrize("context", [
    {"settings": {"role": "admin", "user": "eve"}},
    {"principal": {"role": "admin", "user": "eve"}},
    {"role": "admin"}, {"user": "ops"}, {"tenant": "default"},
    {"model": "offline", "settings": {"role": "admin"}},
])
def test_a_run_context_that_says_who_asks_is_refused(served, context):
    resp = served.run(AGENT_KEY, context=context)
    assert resp.status_code == 403, resp.text
    detail = resp.json()["detail"]
    assert "run settings only" in detail and all(k in detail for k in context if k != "model")
    assert "4242" not in resp.text and "Acme" not in resp.text


def test_run_settings_pass_and_a_client_cannot_name_the_authenticated_user(served):
    configurable = served.run(AGENT_KEY, config={"configurable": {"role": "admin"}})
    assert configurable.status_code == 403 and "role" in configurable.json()["detail"]
    ok = served.run(AGENT_KEY, context={"model": "offline", "fresh": True, "max_plan_steps": 2})
    assert ok.status_code == 200 and MASKED in ok.json()["result"]["answer"]
    # LangGraph's server strips its own key from a client's context before any handler sees it,
    # and sets it from the authentication: the run reads as the key's principal, not as "eve"
    forged = served.run(AGENT_KEY, context={"langgraph_auth_user": {"identity": "eve", "role": "admin",
                                                                    "tenant": "default"}})
    assert forged.status_code in (200, 403), forged.text
    assert "4242" not in forged.text
    if forged.status_code == 200:
        assert MASKED in forged.json()["result"]["answer"]
    log = audit_log(Settings(home=served.home, state_url=None).state_db_url)
    assert "eve" not in {r.user_name for t in (AGENT_TENANT, "default") for r in log.query(t, limit=None)}


def test_a_thread_belongs_to_the_principal_that_created_it(served):
    created = served.call("POST", "/threads", AGENT_KEY, {"metadata": {"owner": "ops", "owner_role": "admin"}})
    assert created.status_code == 200, created.text
    thread = created.json()
    assert {k: thread["metadata"][k] for k in ("owner", "owner_tenant", "owner_role")} == {
        "owner": "alice", "owner_tenant": AGENT_TENANT, "owner_role": "support_agent"}  # not what the client said
    tid = thread["thread_id"]
    turn = served.call("POST", f"/threads/{tid}/runs/wait", AGENT_KEY, {"assistant_id": "assistant", "input": BILLING})
    assert turn.status_code == 200 and MASKED in turn.text
    assert served.call("GET", f"/threads/{tid}/state", AGENT_KEY).status_code == 200
    # another key — even an admin's — does not see it, its state, history or runs, nor continue it
    for method, path, body in (("GET", f"/threads/{tid}", None), ("GET", f"/threads/{tid}/state", None),
                               ("POST", f"/threads/{tid}/history", {}), ("GET", f"/threads/{tid}/runs", None),
                               ("POST", f"/threads/{tid}/runs/wait", {"assistant_id": "assistant", "input": BILLING}),
                               ("PATCH", f"/threads/{tid}", {"metadata": {"owner": "ops"}}),
                               ("DELETE", f"/threads/{tid}", None)):
        resp = served.call(method, path, ADMIN_KEY, body)
        assert resp.status_code in (403, 404), (method, path, resp.status_code, resp.text)
        assert "alice" not in resp.text and "billing" not in resp.text
    assert tid not in {t["thread_id"] for t in served.call("POST", "/threads/search", ADMIN_KEY, {}).json()}
    assert tid in {t["thread_id"] for t in served.call("POST", "/threads/search", AGENT_KEY, {}).json()}
    assert served.call("GET", f"/threads/{tid}", AGENT_KEY).json()["metadata"]["owner"] == "alice"


def test_the_store_crons_and_assistant_writes_are_refused(served):
    store = served.call("POST", "/store/items/search", ADMIN_KEY, {"namespace_prefix": ["customers"]})
    assert store.status_code == 403 and "long-term memory" in store.json()["detail"]
    cron = served.call("POST", "/runs/crons", ADMIN_KEY, {"assistant_id": "review", "schedule": "0 * * * *",
                                                          "input": {"customer": "acme.com"}})
    assert cron.status_code == 403 and "crons.create" in cron.json()["detail"]
    made = served.call("POST", "/assistants", ADMIN_KEY, {"graph_id": "assistant", "context": {"role": "admin"}})
    assert made.status_code == 403 and "assistants.create" in made.json()["detail"]


def test_without_a_key_file_every_request_is_refused(tmp_path):
    with langgraph_dev(tmp_path / "home", None) as bare:
        for key in (None, AGENT_KEY):
            resp = bare.run(key) if key else bare.call("POST", "/assistants/search", body={})
            assert resp.status_code == 401, resp.text
            assert "CUSTCTX_API_KEYS_FILE" in resp.json()["detail"]


# ------------------------------------------------------------------ the auth module, in-process
def test_the_authenticated_user_carries_the_principal_and_a_run_reads_as_it():
    from agent.interfaces.langgraph_auth import authenticated_user, caller_user
    from agent.interfaces.service import load_api_keys

    who = Principal(tenant="tenant-a", user="alice", role="support_agent", interface="langgraph")
    user = caller_user(who)
    assert (user["identity"], user["tenant"], user["role"]) == ("alice", "tenant-a", "support_agent")
    settings = Settings()
    assert served_principal(settings, user) == who
    assert served_principal(settings, None) == Principal(settings.tenant, "anonymous", "support_agent",
                                                         interface="langgraph")  # in-process, nothing bound
    with pytest.raises(BadPrincipal, match="no custctx tenant and role"):
        served_principal(settings, {"identity": "langgraph-studio-user", "permissions": []})

    from langgraph_sdk import Auth

    keys = load_api_keys(None, "default")
    with pytest.raises(Auth.exceptions.HTTPException, match="CUSTCTX_API_KEYS_FILE"):
        authenticated_user(None, {b"x-api-key": AGENT_KEY.encode()})
    with pytest.raises(Auth.exceptions.HTTPException, match="unknown API key"):
        authenticated_user(keys, {b"authorization": f"Bearer {AGENT_KEY}".encode()})


def test_a_run_is_stamped_with_its_owner_and_checked_for_run_settings():
    from langgraph_sdk import Auth

    from agent.interfaces.langgraph_auth import caller_user, on_run, refused_run_settings

    assert refused_run_settings({"context": {"model": "offline", "fresh": True}}) == []
    assert refused_run_settings({"context": {"settings": {}, "principal": {}}}) == ["principal", "settings"]
    assert refused_run_settings({"config": {"configurable": {"role": "admin", "x-request-id": "1"}}}) == ["role"]
    user = caller_user(Principal("tenant-a", "alice", "support_agent", interface="langgraph"))
    ctx = Auth.types.AuthContext(user=user, permissions=[], resource="threads", action="create_run")  # type: ignore[arg-type]
    value: Any = {"metadata": {"owner": "ops"}, "kwargs": {"context": {"model": "offline"}}}
    mine = {"owner": "alice", "owner_tenant": "tenant-a", "owner_role": "support_agent"}
    assert asyncio.run(on_run(ctx=ctx, value=value)) == mine
    assert value["metadata"] == mine
    with pytest.raises(Auth.exceptions.HTTPException, match="refused: role"):
        asyncio.run(on_run(ctx=ctx, value={"kwargs": {"context": {"role": "admin"}}}))


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
