"""The MCP server end to end: `custctx serve mcp` as a real subprocess, driven by the official
MCP Python client over stdio and over streamable HTTP."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

TOOLS = {"get_customer_context", "get_customer_slices", "triage_ticket", "generate_account_review"}
HISTORY = {"support.tickets", "crm.activities", "email.threads", "calendar.meetings", "chat.mentions",
           "calls.highlights"}


def server_env(home) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTCTX_")}
    env.update(CUSTCTX_HOME=str(home), CUSTCTX_SEED_CUSTOMERS="20")
    return env


def custctx_cmd(*args: str) -> list[str]:
    exe = shutil.which("custctx")
    return [exe, *args] if exe else [sys.executable, "-m", "agent.interfaces.cli.app", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(proc: subprocess.Popen, url: str, timeout_s: float = 180) -> None:
    """Poll the server's health route until it answers (or the process dies)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"server not up within {timeout_s} s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def summarize(result: Any) -> dict[str, Any]:
    return {"is_error": bool(result.is_error), "data": result.structured_content,
            "text": "\n".join(getattr(c, "text", "") for c in result.content)}


CALLS: dict[str, tuple[str, dict[str, Any]]] = {
    "by_email": ("get_customer_context", {"customer_email": "wile.coyote@acme.com"}),
    "by_crm_id": ("get_customer_context", {"customer_id": "crm:1001"}),
    "by_domain_quick": ("get_customer_context", {"customer_id": "acme.com", "include_history": False}),
    "unknown": ("get_customer_context", {"customer_email": "nobody@nowhere.test"}),
    "ambiguous": ("get_customer_context", {"customer_id": "acme"}),
    "no_customer": ("get_customer_context", {}),
    "slices": ("get_customer_slices", {"customer": "globex.com", "slices": ["billing.status", "product.usage"]}),
    "bad_slice": ("get_customer_slices", {"customer": "globex.com", "slices": ["billing.nope"]}),
    "triage_id": ("triage_ticket", {"ticket_id": "1001"}),
    "triage_body": ("triage_ticket", {"subject": "Card declined", "description": "Our card was declined, help!",
                                      "requester_email": "wile.coyote@acme.com"}),
    "review": ("generate_account_review", {"customer": "acme.com"}),
}


MCP_KEY = "k-mcp-agent-3c1d"  # the HTTP transport's bearer key (support_agent, as the stdio server's default)


def write_keys(home) -> str:
    path = home / "mcp-keys.json"
    path.write_text(json.dumps({MCP_KEY: {"user": "mcp-http", "role": "support_agent"}}), encoding="utf-8")
    return str(path)


def authorized(url: str, key: str = MCP_KEY) -> Any:
    """A streamable-HTTP transport to ``url`` sending ``Authorization: Bearer <key>``."""
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    @asynccontextmanager
    async def transport():  # noqa: ANN202
        async with create_mcp_http_client(headers={"Authorization": f"Bearer {key}"}) as http, \
                streamable_http_client(url, http_client=http) as streams:
            yield streams

    return transport()


async def conversation(target: Any) -> dict[str, Any]:
    """One client session: list the tools, make every call in CALLS, and one by canonical id."""
    if isinstance(target, str):
        target = authorized(target)
    async with Client(target, read_timeout_seconds=120) as client:
        listed = await client.list_tools()
        out: dict[str, Any] = {"tools": {t.name: t for t in listed.tools}}
        for key, (name, args) in CALLS.items():
            out[key] = summarize(await client.call_tool(name, args))
        canonical = out["by_email"]["data"]["customer_id"]
        out["by_canonical_id"] = summarize(await client.call_tool("get_customer_context",
                                                                  {"customer_id": canonical}))
    return out


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("mcp-home")


@pytest.fixture(scope="module")
def stdio_session(home):
    params = StdioServerParameters(command=custctx_cmd()[0], args=[*custctx_cmd()[1:], "serve", "mcp"],
                                   env=server_env(home))
    return anyio.run(conversation, params)


@pytest.fixture(scope="module")
def http_server(home):
    port = free_port()
    env = {**server_env(home), "CUSTCTX_API_KEYS_FILE": write_keys(home)}
    proc = subprocess.Popen(custctx_cmd("serve", "mcp", "--transport", "http", "--port", str(port)),
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until_up(proc, f"http://127.0.0.1:{port}/healthz")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def http_session(http_server):
    return anyio.run(conversation, http_server)


@pytest.fixture(scope="module", params=["stdio", "http"])
def session(request):
    return request.getfixturevalue(f"{request.param}_session")


# ----------------------------------------------------------------- the tools
def test_lists_the_four_tools_with_model_facing_descriptions(session):
    assert set(session["tools"]) >= TOOLS
    for tool in session["tools"].values():
        assert len(tool.description) > 150 and not tool.description.startswith(" "), tool.name


def test_get_customer_context_has_the_reference_input_schema(session):
    schema = session["tools"]["get_customer_context"].input_schema
    props = schema["properties"]
    assert set(props) == {"customer_email", "customer_id", "include_history"}
    assert props["customer_email"]["type"] == "string" and props["customer_id"]["type"] == "string"
    assert props["include_history"] == {**props["include_history"], "type": "boolean", "default": True}
    assert not schema.get("required")  # one of the two, checked by the tool with a clear message


def test_per_slice_tool_enumerates_the_slice_names(session):
    items = session["tools"]["get_customer_slices"].input_schema["properties"]["slices"]["items"]
    assert "billing.status" in items["enum"] and "support.tickets" in items["enum"] and len(items["enum"]) == 19
    assert "commerce.orders" in items["enum"]  # an optional source's slices: a gap says when it is not connected


# ---------------------------------------------------------------- Acme's context
def assert_acme(view: dict[str, Any]) -> None:
    assert set(view) >= {"customer_id", "customer", "billing", "usage", "support", "risk_indicators",
                         "context_updated", "gaps", "conflicts", "provenance"}
    assert set(view["customer"]) >= {"name", "email", "tier", "mrr", "plan"}
    assert set(view["billing"]) >= {"status", "last_payment", "method"}
    assert set(view["usage"]) >= {"active_users", "last_login", "trend"}
    assert set(view["support"]) >= {"open_tickets", "total_tickets", "avg_resolution_time", "satisfaction_score"}
    assert view["customer"]["name"] == "Acme Corp" and view["customer"]["tier"] == "enterprise"
    assert view["customer"]["mrr"] == 15000 and view["customer"]["plan"] == "Enterprise Pro"
    assert view["billing"]["status"] == "past_due" and view["billing"]["last_payment"] == "2025-12-01"
    assert view["usage"]["active_users"] == 250 and view["usage"]["trend"] == "declining"
    assert view["support"]["open_tickets"] == 3 and view["support"]["total_tickets"] == 15
    assert {"billing_issue", "declining_usage"} <= set(view["risk_indicators"])
    assert view["context_updated"]


@pytest.mark.parametrize("call", ["by_email", "by_crm_id", "by_canonical_id", "by_domain_quick"])
def test_get_customer_context_returns_acme(session, call):
    result = session[call]
    assert not result["is_error"], result["text"]
    assert_acme(result["data"])
    assert result["data"]["customer_id"] == session["by_email"]["data"]["customer_id"]
    assert '"past_due"' in result["text"]  # the JSON is in the text content too, for clients without structure


def test_include_history_false_leaves_out_the_history_slices(session):
    full, quick = session["by_email"]["data"], session["by_domain_quick"]["data"]
    assert HISTORY <= set(full["provenance"]) | {g["slice"] for g in full["gaps"]}
    assert not HISTORY & (set(quick["provenance"]) | {g["slice"] for g in quick["gaps"]})
    assert "support.summary" in quick["provenance"] and quick["support"]["open_tickets"] == 3


def test_unknown_customer_is_a_tool_error_naming_the_problem(session):
    result = session["unknown"]
    assert result["is_error"] and "No customer matches 'nobody@nowhere.test'" in result["text"]


def test_ambiguous_name_is_a_tool_error_with_the_candidates(session):
    result = session["ambiguous"]
    assert result["is_error"]
    assert "Acme Corp" in result["text"] and "Acme Logistics" in result["text"] and "customer_id c_" in result["text"]


def test_neither_email_nor_id_is_a_tool_error(session):
    assert session["no_customer"]["is_error"] and "customer_email or customer_id" in session["no_customer"]["text"]


# ---------------------------------------------------------------- the other tools
def test_get_customer_slices_reads_only_those(session):
    result = session["slices"]
    assert not result["is_error"], result["text"]
    assert set(result["data"]["provenance"]) == {"billing.status", "product.usage"}
    assert result["data"]["name"] == "Globex" and result["data"]["slices"]["billing.status"]["status"] == "current"
    assert session["bad_slice"]["is_error"]


def test_triage_ticket_by_id_and_by_body(session):
    for call in ("triage_id", "triage_body"):
        result = session[call]
        assert not result["is_error"], result["text"]
        d = result["data"]
        assert d["category"] == "billing" and d["priority"] == "P1" and d["customer"]["name"] == "Acme Corp"
        assert d["team"] and d["sla_hours"] == 1 and d["evidence"]


def test_generate_account_review_returns_markdown_and_json(session):
    result = session["review"]
    assert not result["is_error"], result["text"]
    assert "### Relationship Snapshot" in result["text"] and "Acme Corp" in result["text"]
    assert result["data"]["review"]["billing"]["status"] == "past_due" and result["data"]["markdown"] == result["text"]


@pytest.mark.skipif(importlib.util.find_spec("tools.access.gate") is None, reason="the access policy (issue 6) is not there")
def test_the_configured_principal_is_what_the_policy_sees(home):
    """CUSTCTX_MCP__ROLE / __USER: an account executive sees her accounts and not another owner's."""
    env = {**server_env(home), "CUSTCTX_MCP__ROLE": "account_exec", "CUSTCTX_MCP__USER": "dana.scully"}
    params = StdioServerParameters(command=custctx_cmd()[0], args=[*custctx_cmd()[1:], "serve", "mcp"], env=env)

    async def calls() -> tuple[Any, Any]:
        async with Client(params, read_timeout_seconds=120) as client:
            return (await client.call_tool("get_customer_context", {"customer_id": "acme.com"}),
                    await client.call_tool("get_customer_context", {"customer_id": "massivedynamic.com"}))

    own, other = anyio.run(calls)
    assert not own.is_error and own.structured_content["customer"]["name"] == "Acme Corp"
    assert other.is_error and "No customer matches" in other.content[0].text
