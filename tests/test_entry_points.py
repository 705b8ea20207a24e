"""One row check for every entry point (issue 15): triage by ticket id, by file and the open queue,
threads continued by another principal, hidden vs missing references, provenance of slices a role
may not read, MCP over HTTP with API keys, and the refresh permission. One test per measured defect.

Timings are not asserted here (the `access` eval suite measures them); the tests check that a hidden
and a missing reference do the same work (the same memory reads and audit appends)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from agent.interfaces.service import ContextService, load_api_keys
from agent.runs import Runner
from tools.access.audit import audit_log_for
from tools.access.principal import Principal
from tools.context.read import resolve
from tools.context.scope import ReadScope
from tools.identity import CustomerNotFound
from tools.memory import ContextMemory
from tools.sources.base import utcnow
from tools.sources.tickets import TicketNotFound, get_ticket, open_tickets

from .conftest import settings_for
from .test_cli import custctx

DANA, WALTER, SAM, LEE, ROOT, FIN = "k-dana", "k-walter", "k-sam", "k-lee", "k-root", "k-fin"
KEYS = {DANA: ("dana.scully", "account_exec"), WALTER: ("walter.bishop", "account_exec"),
        SAM: ("sam.lee", "support_agent"), LEE: ("lee.jordan", "support_lead"), ROOT: ("root", "admin"),
        FIN: ("fin.ops", "finance")}
HIDDEN_TICKETS = ("1012", "1010")  # Massive Dynamic (owner walter.bishop), Wayne Enterprises (fox.mulder)
MISSING_TICKET = "99999999"


@pytest.fixture(scope="module")
def env(sqlite_warehouse, tmp_path_factory):
    """Settings on the story warehouse with an API key per principal, an admin runner and its service."""
    home = tmp_path_factory.mktemp("entry-points")
    (home / "keys.json").write_text(json.dumps({k: {"user": u, "role": r} for k, (u, r) in KEYS.items()}),
                                    encoding="utf-8")
    settings = settings_for(sqlite_warehouse, home, api_keys_file=home / "keys.json")
    runner = Runner(settings, principal=Principal(settings.tenant, "root", "admin", interface="runner"))
    yield settings, runner, ContextService(runner=runner)
    runner.close()


@pytest.fixture(scope="module")
def http(env):
    from fastapi.testclient import TestClient

    from agent.interfaces.http import create_app

    settings, _, service = env
    with TestClient(create_app(settings, service)) as client:
        yield client


def key(k: str) -> dict[str, str]:
    return {"X-API-Key": k}


def principal(settings, k: str, interface: str = "runner") -> Principal:
    user, role = KEYS[k]
    return Principal(settings.tenant, user, role, interface=interface)


def same_shape(a: str, b: str, ref_a: str, ref_b: str) -> bool:
    return a.replace(ref_a, "X") == b.replace(ref_b, "X")


@pytest.fixture(scope="module")
def cli(env, sqlite_warehouse):
    """`custctx` in a home of its own on the session's story warehouse."""
    _, _, _ = env
    home = Path(env[0].home) / "cli"
    home.mkdir(exist_ok=True)

    def run(*args: str, stdin: str | None = None):  # noqa: ANN202
        if stdin is None:
            return custctx(home, *args, env_extra={"CUSTCTX_WAREHOUSE_URL": sqlite_warehouse})
        import os
        import shutil
        import subprocess
        import sys

        exe = shutil.which("custctx")
        cmd = [exe, *args] if exe else [sys.executable, "-m", "agent.interfaces.cli.app", *args]
        e = {k: v for k, v in os.environ.items() if not k.startswith("CUSTCTX_")}
        e.update(CUSTCTX_HOME=str(home), CUSTCTX_SEED_CUSTOMERS="20", CUSTCTX_WAREHOUSE_URL=sqlite_warehouse)
        return subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=e, timeout=300)
    return run


# ------------------------------------------------------------------ triage crosses the row filter
def test_triage_by_id_never_crosses_the_row_filter(env, http, cli):
    """Dana's ticket lookup by id with her own customer named: another owner's ticket is not found — over
    HTTP, MCP and the CLI — and nothing of it (subject, customer) is shown or audited as read."""
    pytest.importorskip("mcp")
    from mcp import Client

    from agent.interfaces.mcp import build_server

    settings, runner, _ = env
    subjects = {t: get_ticket(settings, t).subject for t in HIDDEN_TICKETS}
    missing = http.post("/v1/triage", json={"ticket_id": MISSING_TICKET, "customer": "acme.com"}, headers=key(DANA))
    assert missing.status_code == 404 and missing.json()["error"] == "ticket_not_found"
    since = utcnow()
    for ticket in HIDDEN_TICKETS:
        resp = http.post("/v1/triage", json={"ticket_id": ticket, "customer": "acme.com"}, headers=key(DANA))
        assert (resp.status_code, resp.json()["error"]) == (404, "ticket_not_found"), resp.text
        assert same_shape(resp.json()["message"], missing.json()["message"], ticket, MISSING_TICKET)
        assert subjects[ticket] not in resp.text
    acme = runner.resolve("acme.com")[0].customer_id
    triaged = [x for x in audit_log_for(settings).query(settings.tenant, acme, since, limit=None)
               if x.user_name == "dana.scully" and not (x.detail or "").startswith("row check")]
    assert triaged == []  # no Acme slices read for another customer's ticket

    dana_settings = settings.model_copy(update={"mcp": settings.mcp.model_copy(
        update={"role": "account_exec", "user": "dana.scully"})})

    async def mcp_calls() -> list[str]:
        svc = ContextService(runner=Runner(dana_settings, store=runner.store, checkpointer=runner.checkpointer))
        async with Client(build_server(svc)) as client:
            out = []
            for ticket in (*HIDDEN_TICKETS, MISSING_TICKET):
                result = await client.call_tool("triage_ticket", {"ticket_id": ticket, "customer": "acme.com"})
                assert result.is_error, ticket
                out.append(result.content[0].text)
            return out

    *hidden_texts, missing_text = asyncio.run(mcp_calls())
    for ticket, text in zip(HIDDEN_TICKETS, hidden_texts, strict=True):
        assert same_shape(text, missing_text, ticket, MISSING_TICKET) and subjects[ticket] not in text

    gone = cli("triage", "--ticket", MISSING_TICKET, "--customer", "acme.com", "--as", "account_exec:dana.scully")
    hidden = cli("triage", "--ticket", "1012", "--customer", "acme.com", "--as", "account_exec:dana.scully")
    assert hidden.returncode == gone.returncode == 1
    assert same_shape(hidden.stdout + hidden.stderr, gone.stdout + gone.stderr, "1012", MISSING_TICKET)


# ------------------------------------------------------------------ existence leaks
def test_a_hidden_ticket_reads_exactly_like_a_missing_one(env, http):
    """No customer named: a hidden ticket is 404 ticket_not_found like a missing ticket (it was 422
    naming the hidden customer's support organization)."""
    missing = http.post("/v1/triage", json={"ticket_id": MISSING_TICKET}, headers=key(DANA))
    for ticket in HIDDEN_TICKETS:
        hidden = http.post("/v1/triage", json={"ticket_id": ticket}, headers=key(DANA))
        assert (hidden.status_code, hidden.json()["error"]) == (missing.status_code, missing.json()["error"]) \
            == (404, "ticket_not_found"), hidden.text
        assert same_shape(hidden.json()["message"], missing.json()["message"], ticket, MISSING_TICKET)
        assert "support:" not in hidden.text
    own = http.post("/v1/triage", json={"ticket_id": "1001"}, headers=key(DANA))
    assert own.status_code == 200 and own.json()["customer"]["name"] == "Acme Corp"


def test_the_open_queue_lists_only_tickets_the_principal_may_see(env, cli):
    """`triage --open` as an account executive: her accounts' tickets only, no error rows naming
    hidden customers' support organizations."""
    settings, runner, _ = env

    def owner(ticket) -> tuple[str | None, str | None]:  # the requester's customer and its CRM owner (admin)
        for ref in (ticket.requester_email, f"support:{ticket.organization_id}"):
            try:
                customer = runner.resolve(ref)[0]
            except (CustomerNotFound, ValueError):
                continue
            account = runner.customer_context(customer.customer_id, ["crm.account"]).slices.get("crm.account")
            return customer.name, getattr(account, "owner", None)
        return None, None

    everyone = {t.id: owner(t) for t in open_tickets(settings)}
    expected = [tid for tid, (_, crm_owner) in everyone.items() if crm_owner == "dana.scully"]
    assert 0 < len(expected) < len(everyone)
    proc = cli("triage", "--open", "--format", "json", "--as", "account_exec:dana.scully")
    assert proc.returncode == 0, proc.stderr
    queue = json.loads(proc.stdout)
    assert [d["ticket_id"] for d in queue] == expected
    assert all(not d.get("error") for d in queue)
    assert {d["customer"]["name"] for d in queue} == {everyone[t][0] for t in expected} >= {"Acme Corp"}
    assert "support:" not in proc.stdout + proc.stderr
    limited = json.loads(cli("triage", "--open", "--limit", "2", "--format", "json", "--as",
                             "account_exec:dana.scully").stdout)
    assert [d["ticket_id"] for d in limited] == expected[:2]


def test_a_thread_continued_by_another_principal_never_names_its_customer(env, cli):
    """Walter's conversation about Massive Dynamic, continued by Dana: exactly what a thread that does not
    exist gives her — the CLI's "Chatting about …" line and every error — and no Massive Dynamic data."""
    thread, nothing = f"t-{uuid.uuid4().hex[:10]}", f"t-{uuid.uuid4().hex[:10]}"
    first = cli("ask", "What's their billing status?", "--customer", "massivedynamic.com", "--thread", thread,
                "--as", "account_exec:walter.bishop")
    assert first.returncode == 0, first.stderr
    for args in (("ask", "and their usage?"), ("chat",)):
        hidden = cli(*args, "--thread", thread, "--as", "account_exec:dana.scully", stdin="")
        missing = cli(*args, "--thread", nothing, "--as", "account_exec:dana.scully", stdin="")
        assert hidden.returncode == missing.returncode, (args, hidden.stderr)
        assert same_shape(hidden.stdout + hidden.stderr, missing.stdout + missing.stderr, thread, nothing), args
        assert "Massive" not in hidden.stdout + hidden.stderr and "massivedynamic" not in hidden.stderr
    switched = cli("ask", "What's their billing status?", "--customer", "acme.com", "--thread", thread,
                   "--as", "account_exec:dana.scully")
    assert switched.returncode == 1 and "Massive" not in switched.stdout + switched.stderr
    assert "massivedynamic" not in switched.stdout + switched.stderr


def test_hidden_and_missing_references_do_the_same_work(env):
    """A hidden customer and one that does not exist: the same not-found error, the same long-term memory
    reads and the same audit appends (a missing reference pays the row check a hidden one pays) — by
    domain, by billing id, and a ticket by id. The medians are measured by `custctx eval --suite access`."""
    settings, runner, _ = env
    massive = runner.resolve("massivedynamic.com")[0]
    pairs = [("massivedynamic.com", "nosuchcompany.com"),
             (f"billing:{massive.anchors['billing']}", "billing:cus_nosuchcustomer")]

    class CountingMemory(ContextMemory):
        reads = 0

        def get(self, customer_id, name):  # noqa: ANN001, ANN201
            CountingMemory.reads += 1
            return super().get(customer_id, name)

    def work(ref: str) -> tuple[str, int, int]:
        tenant = f"t-{uuid.uuid4().hex[:8]}"  # a gate of its own: no verdict remembered
        memory = CountingMemory(runner.store, tenant, settings.ttls)
        scope = ReadScope.build(settings, runner.clock, principal=Principal(tenant, "dana.scully", "account_exec"),
                                memory=memory, index=runner.index)
        CountingMemory.reads = 0
        with pytest.raises((CustomerNotFound, TicketNotFound)) as exc:
            if ref.startswith("ticket:"):
                runner.ticket(ref.partition(":")[2], scope=scope)
            else:
                resolve(scope, ref)
        appended = len(audit_log_for(settings).query(tenant, limit=None))
        return str(exc.value).replace(ref.removeprefix("ticket:"), "X"), CountingMemory.reads, appended

    for hidden, missing in [*pairs, ("ticket:1012", f"ticket:{MISSING_TICKET}")]:
        work(hidden)  # warm: the hidden customer's account is in memory, as it is for a repeated probe
        assert work(hidden) == work(missing), (hidden, missing)


def test_provenance_names_no_records_of_slices_the_role_may_not_read(env, http):
    """billing.status is built from the open invoices and the last charge: a role denied billing.invoices
    does not see their ids; support.summary is built from the tickets: finance (denied support.tickets)
    does not see their ids."""
    settings, runner, _ = env
    admin = runner.customer_context("acme.com", ["billing.status", "support.summary"])
    ids = admin.slices["billing.status"].provenance.record_ids
    invoice_ids = [i for i in ids if i.startswith(("in_", "ch_"))]
    assert invoice_ids and admin.slices["support.summary"].provenance.record_ids
    dana = http.get("/v1/customers/acme.com/context?slices=billing.status", headers=key(DANA)).json()
    assert not set(invoice_ids) & set(dana["provenance"]["billing.status"]["record_ids"])
    assert not any(i in json.dumps(dana) for i in invoice_ids)
    assert dana["provenance"]["billing.status"]["record_ids"]  # the customer, subscription and card stay
    fin = http.get("/v1/customers/acme.com/context?slices=support.summary", headers=key(FIN)).json()
    assert fin["provenance"]["support.summary"]["record_ids"] == []
    lee = http.get("/v1/customers/acme.com/context?slices=billing.status", headers=key(LEE)).json()
    assert set(invoice_ids) <= set(lee["provenance"]["billing.status"]["record_ids"])


# ------------------------------------------------------------------ MCP over HTTP, refresh
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mcp_over_http_reads_as_the_principal_of_each_requests_key(env):
    """Bearer keys from the HTTP API's key file: no key or an unknown key is 401; each request reads as its
    key's principal (not one role per server), audited with interface mcp."""
    pytest.importorskip("mcp")
    import httpx
    import uvicorn
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    from agent.interfaces.mcp import build_server

    settings, runner, service = env
    keys = load_api_keys(settings.api_keys_file, settings.tenant, interface="mcp")
    port = free_port()
    app = build_server(service, keys=keys, url=f"http://127.0.0.1:{port}").streamable_http_app()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/mcp"
        for headers in ({}, {"Authorization": "Bearer not-a-key"}):
            resp = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                              headers={**headers, "accept": "application/json, text/event-stream"})
            assert resp.status_code == 401 and resp.headers["www-authenticate"].startswith("Bearer")

        async def calls(k: str) -> dict[str, tuple[bool, str]]:
            async with create_mcp_http_client(headers={"Authorization": f"Bearer {k}"}) as client, \
                    Client(streamable_http_client(url, http_client=client)) as mcp:
                out = {}
                for ref in ("acme.com", "massivedynamic.com"):
                    r = await mcp.call_tool("get_customer_context", {"customer_id": ref})
                    out[ref] = (bool(r.is_error), (r.structured_content or {}).get("customer", {}).get("name")
                                or r.content[0].text)
                return out

        since = utcnow()
        dana, sam = asyncio.run(calls(DANA)), asyncio.run(calls(SAM))
        assert dana["acme.com"] == (False, "Acme Corp") and dana["massivedynamic.com"][0]
        assert "No customer matches" in dana["massivedynamic.com"][1]
        assert sam["massivedynamic.com"] == (False, "Massive Dynamic")
        who = {(x.interface, x.role, x.user_name) for x in audit_log_for(settings).query(settings.tenant, since=since,
                                                                                          limit=None)}
        assert who == {("mcp", "account_exec", "dana.scully"), ("mcp", "support_agent", "sam.lee")}
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_mcp_over_http_does_not_start_without_api_keys(tmp_path):
    """No key file, no server (it used to serve every caller as its one configured role)."""
    import os
    import subprocess

    from .test_mcp import custctx_cmd

    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTCTX_")}
    proc = subprocess.run(custctx_cmd("serve", "mcp", "--transport", "http", "--port", str(free_port())),
                          env={**env, "CUSTCTX_HOME": str(tmp_path)}, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and "CUSTCTX_API_KEYS_FILE" in proc.stderr, proc.stderr


def test_a_refresh_needs_the_refresh_permission_and_is_audited_as_its_caller(env, http, cli):
    """POST /v1/events and `custctx event`: refused (403 / exit 1) for roles without `refresh`; the refresh
    a permitted caller triggers is recorded under the caller's user, role and interface, not as admin."""
    settings, runner, _ = env
    body = {"kind": "ticket.created", "customer": "acme.com"}
    for k in (DANA, SAM, FIN):
        resp = http.post("/v1/events", json=body, headers=key(k))
        assert (resp.status_code, resp.json()["error"]) == (403, "forbidden"), resp.text
        assert "refresh" in resp.json()["message"]
    since = utcnow()
    ok = http.post("/v1/events", json=body, headers=key(LEE))
    assert ok.status_code == 200 and ok.json()["slices_written"] > 0, ok.text
    acme = runner.resolve("acme.com")[0].customer_id
    recs = audit_log_for(settings).query(settings.tenant, acme, since, limit=None)
    assert recs and {(x.interface, x.role, x.user_name) for x in recs} == {("http", "support_lead", "lee.jordan")}
    refused = cli("event", "ticket.created", "--customer", "acme.com", "--as", "account_exec:dana.scully")
    assert refused.returncode == 1 and "refresh" in refused.stderr
    assert cli("refresh", "--customer", "acme.com", "--as", "support_agent:sam.lee").returncode == 1
