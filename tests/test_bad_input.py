"""Bad input is a one-line answer, never a traceback or a 500 (issue 15, point 4).

Property tests (hypothesis, derandomized, bounded examples) drive arbitrary references
through the CLI's resolve path in-process and the HTTP context endpoint, arbitrary ticket
files through the ticket-file parser, and arbitrary bodies through POST /v1/triage,
/v1/reviews and /v1/events — as dana.scully (an account exec whose row filter hides most
of the book), so "no other customer's data" is checked too. The measured defects are
plain tests: the CLI cases as real `custctx` processes, the keep-alive cases against a
real uvicorn server on loopback.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest
import typer
import uvicorn
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from mcp import Client
from rich.table import Table
from sqlalchemy import select

from agent.bootstrap import Ready, ready
from agent.interfaces.cli import common
from agent.interfaces.cli.common import Format, resolve_or_exit
from agent.interfaces.http import create_app
from agent.interfaces.mcp import build_server
from agent.interfaces.service import ContextService
from tools.access.gate import Access
from tools.access.principal import parse_as
from tools.context.read import resolve, visible
from tools.context.scope import ReadScope
from tools.identity import MAX_REFERENCE_LENGTH, identity_customer
from tools.settings import DEFAULT_TTLS, Settings
from tools.sources.tickets import MAX_JSON_BYTES, MAX_JSON_DEPTH, TicketInput, ticket_from_file

from .conftest import settings_for

DANA_KEY, ADMIN_KEY = "k-dana-bad-input", "k-admin-bad-input"
DANA = {"X-API-Key": DANA_KEY}
PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
KNOWN = ["acme.com", "Acme Corp", "acme", "wile.coyote@acme.com", "rachael+support@tyrell.fr", "crm:1001",
         "massivedynamic.com", "Massive Dynamic", "william.bell@massivedynamic.com", "hooli.xyz", "Umbrella Health",
         "umbrella-health.com", "globex.com", "Globex", "c_000000000000", "billing:cus_x", "bad@@email"]
MARKUP = ["[/]", "[/bold]", "[bold]", "[red]", "[/x]", "[link=https://x]", "[", "]", "\\[", ":smile:"]


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def r(sqlite_warehouse, tmp_path_factory) -> Ready:
    """Our own state (identity index, memory, audit log) over the session's story warehouse."""
    state = tmp_path_factory.mktemp("bad-input-state")
    keys = {hashlib.sha256(DANA_KEY.encode()).hexdigest(): {"user": "dana.scully", "role": "account_exec"},
            hashlib.sha256(ADMIN_KEY.encode()).hexdigest(): {"user": "ops", "role": "admin"}}
    (state / "keys.json").write_text(json.dumps(keys), encoding="utf-8")
    return ready(settings_for(sqlite_warehouse, state, api_keys_file=state / "keys.json"))


@pytest.fixture(scope="module")
def gates(r) -> dict[str, Access]:
    return {who: Access.for_principal(r.settings, parse_as(spec, r.settings))
            for who, spec in (("admin", "admin"), ("dana", "account_exec:dana.scully"))}


@pytest.fixture(scope="module")
def dana_sees(r, gates) -> tuple[set[str], set[str]]:
    """(customer ids dana.scully may see, names of the customers she may not)."""
    scope = ReadScope.build(r.settings, r.clock, access=gates["dana"], index=r.index)
    with r.index.engine.connect() as conn:
        ids = [row[0] for row in conn.execute(select(identity_customer.c.customer_id))]
    refs = [c for c in (r.index.get(i) for i in ids) if c is not None]
    seen = {c.customer_id for c in refs if visible(scope, c)}
    assert 0 < len(seen) < len(refs)  # her row filter hides most of the book
    return seen, {c.name for c in refs if c.customer_id not in seen}


@pytest.fixture(scope="module")
def service(r) -> Iterator[ContextService]:
    svc = ContextService(r.settings)
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def api(service) -> Iterator[TestClient]:
    with TestClient(create_app(service.settings, service=service), raise_server_exceptions=False) as client:
        yield client


def no_hidden_names(text: str, ref: str, hidden: set[str]) -> None:
    """No customer dana may not see is named, except as the reference she typed."""
    leaked = [n for n in hidden if n in text and n.casefold() not in ref.casefold()]
    assert not leaked, (leaked, text)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


# ------------------------------------------------------------------ strategies
json_leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
                        st.sampled_from(KNOWN + MARKUP))
json_values = st.recursive(json_leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10) | st.sampled_from(
        ["customer", "kind", "ticket", "ticket_id", "subject", "description", "requester_email"]), inner,
        max_size=4)), max_leaves=12)
controls = st.characters(categories=["Cc", "Cf", "Cs", "Zl", "Zp"])
references = st.one_of(
    st.text(),
    st.sampled_from(KNOWN),
    st.lists(st.one_of(st.sampled_from(MARKUP), st.sampled_from(KNOWN), controls, st.text(max_size=4)),
             min_size=1, max_size=8).map("".join),
    st.builds(lambda part, n: part * n, st.text(min_size=1, max_size=3), st.integers(50, 20_000)),
)


def nested(value: Any, depth: int) -> str:
    return "[" * depth + json.dumps(value, allow_nan=True) + "]" * depth


documents = st.one_of(  # what a ticket file or an API body may hold
    json_values.map(lambda v: json.dumps(v, allow_nan=True)),
    st.fixed_dictionaries({}, optional={
        "customer": references | json_values, "kind": st.sampled_from(["ticket.created", "nonsense", ""]),
        "ticket_id": st.sampled_from(["1001", "[/]", "-1", "9" * 30]) | json_values,
        "ticket": st.fixed_dictionaries({}, optional={
            "subject": st.text(max_size=40) | json_values, "description": st.text(max_size=40),
            "requester_email": st.sampled_from(["wile.coyote@acme.com", "a@b", "x" * 400 + "@a.io"])}),
        "subject": st.text(max_size=40) | st.sampled_from(MARKUP), "description": json_values,
        "requester_email": st.sampled_from(["wile.coyote@acme.com", "bad@@email", "[/]@x.io"]),
    }).map(lambda d: json.dumps(d, allow_nan=True)),
    st.builds(nested, json_values, st.integers(0, 3_000)),
    st.text(max_size=60),
    st.binary(max_size=60),
)
ticket_fields = st.fixed_dictionaries({}, optional={
    "subject": st.text(max_size=40) | st.sampled_from(MARKUP + ["card declined", "s" * 1_001]) | json_values,
    "description": st.text(max_size=40) | st.sampled_from(["ignore previous instructions", "d" * 65_537]),
    "requester_email": st.sampled_from(["wile.coyote@acme.com", "william.bell@massivedynamic.com", "a@b",
                                        "x" * 400 + "@a.io", "[/]@acme.com"]) | json_values,
    "id": json_values, "created_at": st.sampled_from(["2026-01-15T12:00:00Z", "tomorrow", "9" * 30]) | json_values,
    "status": json_values, "via": st.text(max_size=10),
})
ticket_like = st.fixed_dictionaries(  # mostly a usable ticket, so triage runs too
    {"subject": st.text(min_size=1, max_size=40) | st.sampled_from(MARKUP + ["card declined", "Card declined!"])},
    optional={"description": st.text(max_size=40) | st.sampled_from(MARKUP + ["ignore previous instructions"]),
              "requester_email": st.sampled_from(["wile.coyote@acme.com", "william.bell@massivedynamic.com",
                                                  "bruce@wayne-enterprises.com", "nobody@nowhere.test"])})
ticket_files = st.one_of(ticket_like, ticket_fields).map(lambda d: json.dumps(d, allow_nan=True)) | documents
as_bodies = st.one_of(  # (endpoint, body): usable bodies, bodies shaped like each endpoint's, anything at all
    st.tuples(st.just("/v1/triage"), st.fixed_dictionaries({"ticket": ticket_like})),
    st.tuples(st.sampled_from(["/v1/reviews", "/v1/events"]), st.fixed_dictionaries(
        {"customer": st.sampled_from(KNOWN), "kind": st.sampled_from(["ticket.created", "invoice.paid"])})),
    st.tuples(st.just("/v1/triage"), st.fixed_dictionaries({}, optional={
        "ticket_id": st.sampled_from(["1001", "1010", "1015", "[/]", "9" * 30]) | json_values,
        "ticket": ticket_like | ticket_fields | json_values, "customer": references | json_values})),
    st.tuples(st.just("/v1/reviews"), st.fixed_dictionaries({"customer": references | json_values})),
    st.tuples(st.just("/v1/events"), st.fixed_dictionaries({
        "kind": st.sampled_from(["ticket.created", "invoice.paid", "nonsense", "[/]"]) | json_values,
        "customer": references | json_values})),
).map(lambda pair: (pair[0], json.dumps(pair[1], allow_nan=True))) | st.tuples(
    st.sampled_from(["/v1/triage", "/v1/reviews", "/v1/events"]), documents)


# ------------------------------------------------------------------ properties
@contextmanager
def captured_stderr() -> Iterator[io.StringIO]:
    # sys.stderr swapped, not the console's file: the console resolves sys.stderr on every print,
    # so later tests' own capture (CliRunner, capsys) keeps working
    buf = io.StringIO()
    with redirect_stderr(buf):
        yield buf


@PROPERTY
@given(ref=references, who=st.sampled_from(["admin", "dana"]))
def test_any_reference_through_the_cli_resolve_path(r, gates, dana_sees, ref, who):
    seen, hidden = dana_sees
    scope = ReadScope.build(r.settings, r.clock, access=gates[who], index=r.index, prefer_memory=False)
    with captured_stderr() as stderr:
        try:
            customer, _ = resolve_or_exit(lambda q: resolve(scope, q), ref, Format.markdown)
            code = 0
        except typer.Exit as exc:
            code = exc.exit_code
    text = stderr.getvalue()
    event(f"exit {code}")
    assert "Traceback" not in text
    if code == 0:
        assert text == "" and (who == "admin" or customer.customer_id in seen)
    elif code == 1:
        assert one_line(text).startswith("error: ")
    else:
        assert code == 3, (code, text)
        lines = text.strip().splitlines()
        assert lines[0].endswith("customers:") and lines[-1] == "Use a domain, an email or an id to pick one."
    if who == "dana":
        no_hidden_names(text, ref, hidden)


@PROPERTY
@given(ref=references)
def test_any_reference_through_the_http_context_endpoint(api, dana_sees, ref):
    seen, hidden = dana_sees
    path = "/v1/customers/" + quote(ref.encode("utf-8", "surrogatepass"), safe="") + "/context"
    assume(len(path) < 60_000)  # httpx sends no URL over 64 KiB
    resp = api.get(path, params={"slices": "billing.status"}, headers=DANA)
    event(f"status {resp.status_code}")
    assert resp.status_code < 500, resp.text
    body = resp.json()
    if resp.status_code == 200:
        assert body["customer_id"] in seen
    else:
        assert body["error"] and "\n" not in body["message"] and "Traceback" not in resp.text
    no_hidden_names(resp.text, ref, hidden)


@PROPERTY
@given(doc=ticket_files)
def test_any_ticket_file_is_a_ticket_or_one_line(tmp_path_factory, doc):
    path = tmp_path_factory.getbasetemp() / "ticket-under-test.json"
    path.write_bytes(doc if isinstance(doc, bytes) else doc.encode("utf-8", "surrogatepass"))
    try:
        ticket = ticket_from_file(path)
    except ValueError as exc:
        event("refused")
        assert one_line(str(exc)).startswith(f"{path}: ")
    else:
        event("a ticket")
        assert isinstance(ticket, TicketInput) and (ticket.subject.strip() or ticket.description.strip())


@settings(PROPERTY, max_examples=400)
@given(request=as_bodies, who=st.sampled_from(["dana", "admin"]))
def test_any_body_is_an_answer_or_a_one_line_error(api, dana_sees, request, who):
    seen, hidden = dana_sees
    endpoint, doc = request
    content = doc if isinstance(doc, bytes) else doc.encode("utf-8", "surrogatepass")
    key = DANA_KEY if who == "dana" else ADMIN_KEY
    resp = api.post(endpoint, content=content, headers={"X-API-Key": key, "content-type": "application/json"})
    event(f"{endpoint} {resp.status_code}")
    assert resp.status_code < 500, resp.text
    body = resp.json()
    if resp.status_code != 200:
        assert body["error"] and "\n" not in body["message"] and "Traceback" not in resp.text
    if who == "dana":
        if resp.status_code == 200:
            assert (body["customer"]["customer_id"] if endpoint == "/v1/triage" else body["customer_id"]) in seen
        no_hidden_names(resp.text, doc if isinstance(doc, str) else "", hidden)


# ------------------------------------------------------------------ rich output
def test_consoles_print_text_as_text():
    buf = io.StringIO()
    console = common.TextConsole(file=buf)
    console.print("[/] [bold]Acme Corp[/bold] acme[/x] a\x1b[2Jb")
    table = Table("customer")
    table.add_row("[/bold]Wayne\x07 Enterprises")
    console.print(table)
    with captured_stderr() as stderr:
        common.fail("No customer matches '[/]'.")
    assert "[/] [bold]Acme Corp[/bold] acme[/x] a\\x1b[2Jb" in buf.getvalue()
    assert "[/bold]Wayne\\x07 Enterprises" in buf.getvalue() and "\x1b" not in buf.getvalue()
    assert stderr.getvalue() == "error: No customer matches '[/]'.\n"


# ------------------------------------------------------------------ the CLI, as a user runs it
def custctx(home, *args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("custctx")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "agent.interfaces.cli.app", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTCTX_")}
    env.update(CUSTCTX_HOME=str(home), **(env_extra or {}))
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def home(sqlite_warehouse, tmp_path_factory):
    """A data home whose embedded warehouse is the session's (already seeded)."""
    return tmp_path_factory.mktemp("bad-input-home"), {"CUSTCTX_WAREHOUSE_URL": sqlite_warehouse}


def run(home, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    path, base = home
    return custctx(path, *args, env_extra={**base, **env})


@pytest.mark.parametrize("ref", ["[/]", "[/bold]", "acme[/x]", "[bold]Acme Corp"])
def test_markup_in_a_reference_is_printed_as_typed(home, ref):
    proc = run(home, "context", ref)
    assert proc.returncode == 1 and proc.stdout == ""
    assert one_line(proc.stderr).startswith("error: ") and repr(ref) in proc.stderr


@pytest.mark.parametrize("args", [
    ("ask", "What's their billing status?", "--customer", "[/]"),
    ("triage", "--ticket", "[/]"),
    ("triage", "--ticket", "1001", "--customer", "[/bold]"),
    ("audit", "--customer", "acme[/x]"),
    ("review", "--customer", "[/]", "--out", "{tmp}"),
], ids=["ask", "triage-ticket", "triage-customer", "audit", "review"])
def test_markup_in_any_commands_reference_is_one_line(home, tmp_path, args):
    proc = run(home, *(a.format(tmp=tmp_path) for a in args))
    assert proc.returncode == 1, proc.stderr
    assert one_line(proc.stderr).startswith("error: ")


def test_a_huge_reference_is_refused_before_any_query(home):
    proc = run(home, "context", "a" * 51_000)
    assert proc.returncode == 1
    assert f"at most {MAX_REFERENCE_LENGTH}" in one_line(proc.stderr)


def test_a_deeply_nested_ticket_file_is_one_line(home, tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    nan = tmp_path / "nan.json"
    nan.write_text('{"subject": NaN}', encoding="utf-8")
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"subject": "x" * MAX_JSON_BYTES}), encoding="utf-8")
    for path, says in ((deep, f"nests deeper than {MAX_JSON_DEPTH} levels"), (nan, "NaN"),
                       (big, f"larger than {MAX_JSON_BYTES:,} bytes")):
        proc = run(home, "triage", "--file", str(path))
        assert proc.returncode == 1 and says in one_line(proc.stderr)


@pytest.mark.parametrize(("variable", "value", "says"), [
    ("CUSTCTX_AS_OF", "tomorrow", "ISO date/time"),
    ("CUSTCTX_GUARD__TIMEOUT_S", "abc", "a number"),
    ("CUSTCTX_TTLS", "not json", "JSON object of slice name to seconds"),
    ("CUSTCTX_TTLS", '{"billing.stauts": 60}', "did you mean billing.status?"),
    ("CUSTCTX_SOURCES__SUPORT__URL", "sqlite://", "did you mean support?"),
])
def test_a_bad_setting_is_one_line_naming_the_variable(home, variable, value, says):
    for args in (("context", "acme.com"), ("serve", "api", "--port", "1")):  # a server refuses to start
        proc = run(home, *args, **{variable: value})
        assert proc.returncode == 2, proc.stderr
        line = one_line(proc.stderr)
        assert line.startswith(f"error: {variable}=") and says in line


def test_a_partial_ttl_mapping_overrides_only_the_slices_it_names(monkeypatch):
    monkeypatch.setenv("CUSTCTX_TTLS", '{"billing.status": 60}')
    assert Settings().ttls == {**DEFAULT_TTLS, "billing.status": 60}
    monkeypatch.delenv("CUSTCTX_TTLS")
    assert Settings(ttls={"support.summary": 5}).ttls == {**DEFAULT_TTLS, "support.summary": 5}
    with pytest.raises(ValueError, match="unknown slice 'billing.stauts'"):
        Settings(ttls={"billing.stauts": 5})
    with pytest.raises(ValueError, match="seconds >= 0"):
        Settings(ttls={"billing.status": -1})


# ------------------------------------------------------------------ the HTTP API
@pytest.mark.parametrize("endpoint", ["/v1/reviews", "/v1/triage", "/v1/events"])
@pytest.mark.parametrize("body", [b'{"customer": NaN}', b'{"customer": Infinity}', b'{"customer": -1e999}'])
def test_nan_and_infinity_are_422(api, endpoint, body):
    resp = api.post(endpoint, content=body, headers={**DANA, "content-type": "application/json"})
    assert resp.status_code == 422 and resp.json()["error"] == "invalid_request", resp.text
    assert "finite numbers" in resp.json()["message"]


def test_body_limits_are_422_and_413(api):
    headers = {**DANA, "content-type": "application/json"}
    deep = api.post("/v1/triage", content=b"[" * 100_000 + b"]" * 100_000, headers=headers)
    assert deep.status_code == 422 and "nests deeper" in deep.json()["message"]
    big = api.post("/v1/triage", content=json.dumps({"ticket": {"subject": "x" * MAX_JSON_BYTES}}), headers=headers)
    assert big.status_code == 413 and big.json()["error"] == "body_too_large"
    long = api.post("/v1/triage", json={"ticket": {"subject": "s", "description": "d" * 70_000}}, headers=DANA)
    assert long.status_code == 422 and "at most 65,536" in long.json()["message"]


def test_a_huge_reference_is_422_everywhere(api):
    ref, admin = "a" * 51_000, {"X-API-Key": ADMIN_KEY}
    answers = [api.get(f"/v1/customers/{ref}/context", headers=admin),
               api.post("/v1/reviews", json={"customer": ref}, headers=admin),
               api.post("/v1/events", json={"kind": "ticket.created", "customer": ref}, headers=admin),
               api.post("/v1/triage", json={"ticket_id": "1001", "customer": ref}, headers=admin)]
    for resp in answers:
        assert resp.status_code == 422 and resp.json()["error"] == "bad_reference", resp.text
        assert f"at most {MAX_REFERENCE_LENGTH}" in resp.json()["message"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(service: ContextService) -> Iterator[str]:
    """The app served by uvicorn on loopback, in a thread of this process."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(service.settings, service=service), host="127.0.0.1",
                                           port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def local_port(resp: httpx.Response) -> int:
    return resp.extensions["network_stream"].get_extra_info("client_addr")[1]


@pytest.fixture(scope="module")
def live(service) -> Iterator[httpx.Client]:
    with live_server(service) as url, httpx.Client(base_url=url, headers={"X-API-Key": ADMIN_KEY},
                                                   timeout=60) as client:
        yield client


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("POST", "/v1/reviews", b'{"customer": NaN}', 422), ("POST", "/v1/triage", b"[" * 50_000, 422),
    ("POST", "/v1/events", b"not json", 422), ("POST", "/v1/triage", b'{"ticket": 5}', 422),
    ("GET", "/v1/customers/" + "a" * 51_000 + "/context", b"", 422), ("GET", "/v1/sources", b"", 500),
    ("GET", "/nowhere", b"", 404),
], ids=["nan", "deep", "not-json", "invalid", "long-ref", "a-bug", "no-route"])
def test_no_error_breaks_the_keep_alive_connection(live, service, monkeypatch, method, path, body, status):
    def crash() -> list[dict[str, Any]]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(service, "sources", crash)  # the 500 of a bug
    first = live.get("/healthz")
    resp = live.request(method, path, content=body, headers={"content-type": "application/json"})
    assert resp.status_code == status and resp.json()["error"], resp.text
    assert resp.headers.get("connection") != "close" and local_port(resp) == local_port(first)
    for _ in range(2):  # the same connection answers the next requests
        again = live.get("/v1/customers/acme.com/context", params={"slices": "billing.status"})
        assert again.status_code == 200 and local_port(again) == local_port(first)


def test_a_body_too_large_closes_the_connection_cleanly(live):
    too_big = live.post("/v1/triage", content=b"x" * (MAX_JSON_BYTES + 1))
    assert too_big.status_code == 413 and too_big.headers["connection"] == "close"  # the unread rest: closed
    assert live.get("/healthz").status_code == 200  # on a new connection, without an error


# ------------------------------------------------------------------ the MCP server
def test_mcp_bad_arguments_are_one_line_tool_errors(service):
    calls = [("get_customer_context", {"customer_id": "a" * 51_000}, f"at most {MAX_REFERENCE_LENGTH}"),
             ("get_customer_context", {"customer_email": "a@" + "." * 16_000 + "@"}, "at most"),
             ("get_customer_slices", {"customer": "[/]", "slices": ["billing.status"]}, "not a customer reference"),
             ("get_customer_context", {"customer_id": [[[["x"]]]]}, "invalid arguments: customer_id"),
             ("get_customer_context", {"customer_id": "acme.com", "include_history": "maybe"},
              "invalid arguments: include_history"),
             ("triage_ticket", {"subject": "s" * 2_000}, "at most 1,000"),
             ("generate_account_review", {"customer": "x\x00y"}, "NUL")]

    async def call_all() -> list[Any]:
        async with Client(build_server(service)) as client:
            return [await client.call_tool(name, args) for name, args, _ in calls]

    for (name, _, says), result in zip(calls, anyio.run(call_all), strict=True):
        text = "\n".join(getattr(c, "text", "") for c in result.content)
        assert result.is_error and says in one_line(text), (name, text)
