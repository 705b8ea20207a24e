"""The HTTP API end to end: `custctx serve api` as a real subprocess on a free port, called with
httpx over loopback (keys, status codes, the same context as the CLI and MCP, 200 concurrent
requests)."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import subprocess
from collections import defaultdict
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from .test_mcp import assert_acme, custctx_cmd, free_port, server_env, stop, wait_until_up

ADMIN, AGENT, PLAIN, DANA = "k-admin-7f3c", "k-agent-91ab", "dev-plain-key", "k-dana-55e0"
REFERENCE_FIELDS = ("customer_id", "customer", "billing", "usage", "support", "risk_indicators", "health",
                    "conflicts")
REFRESH_MISSING = importlib.util.find_spec("tools.refresh.jobs") is None
needs_refresh = pytest.mark.xfail(REFRESH_MISSING, strict=True,
                                  reason="tools/refresh/jobs.py (refresh_event, the refresh helper's work) is not there "
                                         "yet: POST /v1/events answers 501 until it is")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("api-home")
    keys = {
        hashlib.sha256(ADMIN.encode()).hexdigest(): {"user": "ops", "role": "admin"},
        "sha256:" + hashlib.sha256(AGENT.encode()).hexdigest(): {"user": "alice", "role": "support_agent"},
        PLAIN: {"user": "dev", "role": "admin"},  # a plain key: accepted, hashed on load
        hashlib.sha256(DANA.encode()).hexdigest(): {"user": "dana.scully", "role": "account_exec"},
    }
    (home / "keys.yaml").write_text(json.dumps(keys), encoding="utf-8")
    return home


def env_of(home) -> dict[str, str]:
    return {**server_env(home), "CUSTCTX_API_KEYS_FILE": str(home / "keys.yaml")}


@pytest.fixture(scope="module")
def base_url(home):
    port = free_port()
    proc = subprocess.Popen(custctx_cmd("serve", "api", "--port", str(port)), env=env_of(home),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_up(proc, f"http://127.0.0.1:{port}/healthz")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def api(base_url):
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def anonymous(base_url):
    with httpx.Client(base_url=base_url, timeout=120) as client:
        yield client


def assert_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["error"] == code and body["message"] and "Traceback" not in resp.text
    return body


# ------------------------------------------------------------------ keys
def test_healthz_needs_no_key_and_shows_no_data(anonymous):
    resp = anonymous.get("/healthz")
    assert resp.status_code == 200 and resp.json()["status"] == "ok"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"},
                                     {"Authorization": f"Basic {ADMIN}"}])
def test_no_key_or_a_bad_key_is_401_and_no_data(anonymous, headers):
    for path in ("/v1/customers/acme.com/context", "/v1/sources"):
        resp = anonymous.get(path, headers=headers)
        assert_error(resp, 401, "unauthorized")
        assert resp.headers.get("www-authenticate") == "Bearer" and "Acme" not in resp.text
    assert_error(anonymous.post("/v1/triage", json={"ticket_id": "1001"}, headers=headers), 401, "unauthorized")


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {AGENT}"}, {"X-API-Key": AGENT},
                                     {"X-API-Key": PLAIN}])
def test_bearer_and_x_api_key_both_work(anonymous, headers):
    resp = anonymous.get("/v1/customers/globex.com/context", headers=headers, params={"slices": "billing.status"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["billing"]["status"] == "current"


@pytest.mark.skipif(importlib.util.find_spec("tools.access.gate") is None, reason="the access policy (issue 6) is not there")
def test_the_keys_principal_is_what_the_policy_sees(anonymous):
    dana = {"X-API-Key": DANA}
    assert anonymous.get("/v1/customers/acme.com/context", headers=dana).status_code == 200  # her account
    assert_error(anonymous.get("/v1/customers/massivedynamic.com/context", headers=dana), 404, "customer_not_found")
    assert anonymous.get("/v1/customers/massivedynamic.com/context", headers={"X-API-Key": AGENT}).status_code == 200


# ------------------------------------------------------------------ context
def test_context_of_acme_has_the_reference_shape_and_facts(api):
    resp = api.get("/v1/customers/acme.com/context")
    assert resp.status_code == 200, resp.text
    assert_acme(resp.json())


def test_context_is_the_same_as_the_cli_and_mcp(api, home):
    view = api.get("/v1/customers/acme.com/context").json()
    cli = subprocess.run(custctx_cmd("context", "acme.com", "--format", "json"), env=env_of(home),
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert cli.returncode == 0, cli.stderr
    from_cli = json.loads(cli.stdout)

    async def from_mcp() -> dict[str, Any]:
        params = StdioServerParameters(command=custctx_cmd()[0], args=[*custctx_cmd()[1:], "serve", "mcp"],
                                       env={**env_of(home), "CUSTCTX_MCP__ROLE": "admin"})
        async with Client(params, read_timeout_seconds=120) as client:
            result = await client.call_tool("get_customer_context", {"customer_id": "acme.com"})
            assert not result.is_error
            return result.structured_content

    mcp_view = anyio.run(from_mcp)
    for field in REFERENCE_FIELDS:
        assert view[field] == from_cli[field] == mcp_view[field], field


def test_slices_parameter_limits_the_context(api):
    view = api.get("/v1/customers/globex.com/context", params={"slices": "billing.status"}).json()
    assert list(view["provenance"]) == ["billing.status"] and view["usage"] is None
    both = api.get("/v1/customers/globex.com/context", params=[("slices", "billing.status"), ("slices", "support")])
    assert set(both.json()["provenance"]) == {"billing.status", "support.summary", "support.tickets"}


def test_system_ids_and_emails_resolve_to_the_same_customer(api):
    ids = {api.get(f"/v1/customers/{ref}/context", params={"slices": "crm.account"}).json()["customer_id"]
           for ref in ("acme.com", "crm:1001", "wile.coyote@acme.com")}
    assert len(ids) == 1


def test_unknown_customer_is_404(api):
    body = assert_error(api.get("/v1/customers/nobody@nowhere.test/context"), 404, "customer_not_found")
    assert "nobody@nowhere.test" in body["message"]


def test_ambiguous_customer_is_409_with_the_candidates(api):
    body = assert_error(api.get("/v1/customers/acme/context"), 409, "ambiguous_customer")
    assert {c["name"] for c in body["candidates"]} == {"Acme Corp", "Acme Logistics"}
    assert all(c["customer_id"].startswith("c_") for c in body["candidates"])


def test_bad_slice_and_bad_reference_are_422(api):
    body = assert_error(api.get("/v1/customers/acme.com/context", params={"slices": "billing.nope"}), 422,
                        "unknown_slice")
    assert "billing.nope" in body["message"]
    assert_error(api.get("/v1/customers/bad@@email/context"), 422, "bad_reference")


# ------------------------------------------------------------------ workflows
def test_triage_by_ticket_id_and_by_body(api):
    by_id = api.post("/v1/triage", json={"ticket_id": "1001"})
    assert by_id.status_code == 200, by_id.text
    body = api.post("/v1/triage", json={"ticket": {"subject": "Card declined", "description": "Our card was "
                                                   "declined again", "requester_email": "wile.coyote@acme.com"}})
    assert body.status_code == 200, body.text
    for d in (by_id.json(), body.json()):
        assert d["category"] == "billing" and d["priority"] == "P1" and d["customer"]["name"] == "Acme Corp"
        assert d["sla_hours"] == 1 and d["evidence"]


def test_triage_errors(api):
    assert_error(api.post("/v1/triage", json={"ticket_id": "999999"}), 404, "ticket_not_found")
    assert_error(api.post("/v1/triage", json={}), 422, "invalid_request")
    assert_error(api.post("/v1/triage", json={"ticket": {"subject": "hi", "requester_email": "x@nowhere.test"}}),
                 422, "customer_unresolved")
    assert_error(api.post("/v1/triage", json={"ticket": {"subject": "hi"}, "customer": "acme"}), 409,
                 "ambiguous_customer")
    assert_error(api.post("/v1/triage", content=b"not json", headers={"content-type": "application/json"}), 422,
                 "invalid_request")


def test_review_returns_markdown_and_json(api):
    resp = api.post("/v1/reviews", json={"customer": "acme.com"})
    assert resp.status_code == 200, resp.text
    d = resp.json()
    assert "### Relationship Snapshot" in d["markdown"] and d["name"] == "Acme Corp"
    assert d["review"]["billing"]["status"] == "past_due" and d["slices_used"]
    assert_error(api.post("/v1/reviews", json={"customer": "nobody@nowhere.test"}), 404, "customer_not_found")


def test_event_for_an_unknown_customer_is_404(api):
    assert_error(api.post("/v1/events", json={"kind": "ticket.created", "customer": "nobody@nowhere.test"}), 404,
                 "customer_not_found")


@needs_refresh
def test_event_refreshes_the_customer(api):
    resp = api.post("/v1/events", json={"kind": "ticket.created", "customer": "acme.com"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["customer_id"] == api.get("/v1/customers/acme.com/context",
                                                 params={"slices": "crm.account"}).json()["customer_id"]


@needs_refresh
def test_unknown_event_kind_is_422(api):
    assert_error(api.post("/v1/events", json={"kind": "nonsense.happened", "customer": "acme.com"}), 422,
                 "invalid_request")


def test_sources_lists_every_source(api):
    resp = api.get("/v1/sources")
    assert resp.status_code == 200, resp.text
    assert [s["source"] for s in resp.json()][:4] == ["crm", "billing", "product", "support"]
    status = {s["source"]: s["status"] for s in resp.json()}
    assert status.pop("commerce") == "not_connected"  # an optional source without a URL
    assert set(status.values()) == {"ok"}


def test_openapi_lists_the_endpoints(anonymous):
    doc = anonymous.get("/openapi.json").json()
    assert set(doc["paths"]) >= {"/v1/customers/{ref}/context", "/v1/triage", "/v1/reviews", "/v1/events",
                                 "/v1/sources", "/healthz"}
    assert {"HTTPBearer", "APIKeyHeader"} <= set(doc["components"]["securitySchemes"])


def test_unknown_route_is_json_404(anonymous):
    assert_error(anonymous.get("/v2/nothing"), 404, "not_found")


# ------------------------------------------------------------------ concurrency
CUSTOMERS = {"acme": ["acme.com", "crm:1001", "wile.coyote@acme.com"], "globex": ["globex.com"],
             "umbrella": ["umbrella-health.com"], "hooli": ["hooli.xyz"], "initech": ["initech.io"]}
FACTS = ("customer_id", "customer", "billing", "usage", "support", "risk_indicators", "health")


def test_200_concurrent_requests_all_succeed_with_consistent_results(base_url):
    refs = [ref for refs in CUSTOMERS.values() for ref in refs]
    plan = [refs[i % len(refs)] for i in range(200)]

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        async with httpx.AsyncClient(base_url=base_url, headers={"X-API-Key": ADMIN}, limits=limits,
                                     timeout=300) as client:
            return await asyncio.gather(*(client.get(f"/v1/customers/{ref}/context") for ref in plan))

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 200, next(r.text for r in responses if r.status_code != 200)
    seen: dict[str, set[str]] = defaultdict(set)
    for r in responses:
        view = r.json()
        facts = {f: view[f] for f in FACTS} | {"gaps": sorted((g["slice"], g["kind"]) for g in view["gaps"])}
        # Admission control keeps the queue out of the source guard: no read timed out into a stale snapshot.
        assert not [n for n, p in view["provenance"].items() if p["stale"]], view["sources"]
        seen[view["customer_id"]].add(json.dumps(facts, sort_keys=True))
    assert len(seen) == len(CUSTOMERS)
    assert all(len(variants) == 1 for variants in seen.values()), {k: len(v) for k, v in seen.items()}
