"""The API under load (issue 17, part 4): the lean hot path of ``custctx serve api`` (no thread hop
for the key, the JSON encoded as FastAPI would, the heap frozen), its ``--workers`` and
``--no-access-log`` options, and the bounded load generator of ``custctx bench --api``
(fixed concurrency, one keep-alive connection per request in flight, honest error counts).
No test here times anything."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import hashlib
import inspect
import json
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from agent.interfaces.http import create_app, json_response, serve
from evals.bench.api import LoadResult, free_port, load, process_cpu_s
from tools.settings import Settings

from .test_mcp import custctx_cmd, server_env, stop, wait_until_up


# ------------------------------------------------------------------ a real server in a thread
@pytest.fixture
def serving() -> Iterator[Any]:
    """``serving(app)`` → the base URL of ``app`` under uvicorn on a free loopback port."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(app: Any) -> str:
        port = free_port()
        srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        started = threading.Event()
        original = srv.startup

        async def startup(*args: Any, **kwargs: Any) -> None:
            await original(*args, **kwargs)
            started.set()

        srv.startup = startup  # type: ignore[method-assign]
        thread = threading.Thread(target=srv.run, daemon=True)
        thread.start()
        assert started.wait(30)
        servers.append((srv, thread))
        return f"http://127.0.0.1:{port}"

    yield start
    for srv, thread in servers:
        srv.should_exit = True
        thread.join(30)


def test_the_generator_keeps_exactly_its_concurrency_in_flight_on_one_connection_each(serving):
    """The first ``concurrency`` requests are held until that many are in flight at once (so the
    generator must send them together), and no more are ever in flight; each worker keeps its
    keep-alive connection (as many client ports as the concurrency), every request answered."""
    concurrency, total = 6, 60
    state = {"in_flight": 0, "most": 0, "ports": set()}
    gate = asyncio.Event()

    async def handler(request: Request) -> Response:
        state["in_flight"] += 1
        state["most"] = max(state["most"], state["in_flight"])
        state["ports"].add(request.client.port if request.client else None)
        if state["in_flight"] >= concurrency:
            gate.set()
        await asyncio.wait_for(gate.wait(), 30)  # a bound, not a synchronisation: the gate opens first
        state["in_flight"] -= 1
        return JSONResponse({"ok": True})

    app = FastAPI()
    app.add_api_route("/x", handler)
    base = serving(app)
    result = LoadResult()
    load(base, ["/x"] * total, concurrency, result)
    assert result.errors == 0 and result.ok == total
    assert state["most"] == concurrency
    assert len(state["ports"]) == concurrency  # connections reused, none opened per request
    assert result.generator_cpu_s > 0


def test_the_generator_reads_chunked_answers_reconnects_after_close_and_counts_errors(serving):
    """A chunked answer is read to its end, a ``Connection: close`` answer is followed by a fresh
    connection (not an error), a 404 and a 500 are errors with their status, never latencies."""
    app = FastAPI()

    async def chunks() -> Any:
        for part in (b'{"a":', b' 1', b"}"):
            yield part

    @app.get("/chunked")
    async def chunked() -> StreamingResponse:
        return StreamingResponse(chunks(), media_type="application/json")

    @app.get("/close")
    async def close() -> Response:
        return JSONResponse({"closing": True}, headers={"Connection": "close"})

    @app.get("/fail")
    async def fail() -> Response:
        return JSONResponse({"error": "internal_error"}, status_code=500)

    base = serving(app)
    result = LoadResult()
    load(base, ["/chunked"] * 10 + ["/close"] * 10 + ["/missing"] * 2 + ["/fail"] * 3, 3, result)
    assert result.ok == 20 and result.errors == 5
    assert (result.first_error or "").startswith(("HTTP 404", "HTTP 500"))


def test_an_unreachable_server_is_a_clear_error_not_a_traceback():
    with pytest.raises(RuntimeError, match="the load generator exited"):
        load(f"http://127.0.0.1:{free_port()}", ["/x"], 2, LoadResult())


def test_server_cpu_is_read_for_a_running_process_and_zero_for_a_gone_one():
    import os

    assert process_cpu_s(os.getpid()) > 0
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert process_cpu_s(proc.pid) == 0.0


# ------------------------------------------------------------------ the hot path
def test_json_response_is_byte_for_byte_what_fastapi_answers():
    """The context routes encode on the worker thread with orjson; a client sees the bytes
    FastAPI's own encoding of the same value gives (unicode, floats, NaN, nulls, datetimes, int keys,
    tuples)."""
    value = {"customer": {"name": "Zoë Ünïcode ✓", "mrr": 1234.5, "tier": None, "active": True},
             "at": datetime(2026, 12, 2, 4, 30, tzinfo=UTC), "naive": datetime(2026, 1, 2, 3, 4, 5, 600),
             "counts": {1: "one", 2: [1, 2.25, None]}, "empty": {}, "text": 'quote " and \\ and \n',
             "not_finite": [float("nan"), float("inf")], "pair": (1, "two")}
    app = FastAPI()

    @app.get("/fastapi")
    async def by_fastapi() -> dict[str, Any]:
        return value

    @app.get("/ours", response_model=dict[str, Any])
    async def by_us() -> Response:
        return json_response(value)

    with TestClient(app) as client:
        theirs, ours = client.get("/fastapi"), client.get("/ours")
    assert ours.content == theirs.content
    assert ours.headers["content-type"] == theirs.headers["content-type"] == "application/json"

    def schema(path: str) -> dict[str, Any]:
        got = app.openapi()["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        return {k: v for k, v in got.items() if k != "title"}

    assert schema("/ours") == schema("/fastapi")  # the documented answer is the same object

def _no_thread_hop(dependant: Any) -> list[str]:
    """The sync callables FastAPI would send to a worker thread before the endpoint runs."""
    found = []
    for dep in dependant.dependencies:
        call = dep.call
        if call is not None and not (inspect.iscoroutinefunction(call)
                                     or inspect.iscoroutinefunction(type(call).__call__)):
            found.append(getattr(dep.call, "__name__", repr(dep.call)))
        found += _no_thread_hop(dep)
    return found


def _stub_service(tmp_path) -> Any:
    return SimpleNamespace(settings=Settings(home=tmp_path, api_keys_file=None), max_concurrency=2,
                           worker_health=lambda: {}, close=lambda: None)


def test_the_context_routes_check_the_key_on_the_event_loop(tmp_path):
    """Every dependency of the context routes is async: the only worker-thread call of a request
    is the read itself (a plain-function dependency costs a thread hop on every request)."""
    app = create_app(service=_stub_service(tmp_path))
    routes = {r.path: r for r in app.routes if getattr(r, "dependant", None) is not None}
    for path in ("/v1/customers/{ref}/context", "/v1/context", "/v1/triage", "/v1/customers"):
        assert _no_thread_hop(routes[path].dependant) == [], path
    schema = app.openapi()["paths"]["/v1/customers/{ref}/context"]["get"]
    assert schema["responses"]["200"]["content"]["application/json"]["schema"]["type"] == "object"
    assert {"HTTPBearer": []} in schema["security"] and {"APIKeyHeader": []} in schema["security"]


TRACE: contextvars.ContextVar[str] = contextvars.ContextVar("trace", default="unset")


def test_worker_thread_calls_run_in_a_copy_of_the_request_context_and_leak_nothing(tmp_path):
    """``run_service`` hands the call to the app's pool as ``anyio.to_thread`` would: the request's
    context variables are seen, and what one call sets is gone for the next on the same thread."""
    from agent.interfaces.http import run_service

    app = create_app(service=_stub_service(tmp_path))

    def work(svc: Any) -> dict[str, Any]:
        seen = TRACE.get()
        TRACE.set("set by the call")  # must not outlive the call
        return {"seen": seen, "thread": threading.current_thread().name, "same": svc is app.state.service}

    @app.get("/probe")
    async def probe(request: Request, trace: str = "unset") -> dict[str, Any]:
        if trace != "unset":
            TRACE.set(trace)
        return await run_service(request, work)

    with TestClient(app) as client:
        answers = [client.get("/probe", params={"trace": t}).json() for t in ("r1", "unset", "unset", "r4")]
    assert [a["seen"] for a in answers] == ["r1", "unset", "unset", "r4"]
    assert all(a["same"] and a["thread"].startswith("custctx-api") for a in answers)


def test_a_server_process_freezes_its_heap_once_the_service_is_open(tmp_path):
    gc.unfreeze()
    try:
        with TestClient(create_app(service=_stub_service(tmp_path))) as client:  # tests, embedding: not frozen
            assert client.get("/healthz").status_code == 200
            assert gc.get_freeze_count() == 0
        with TestClient(create_app(service=_stub_service(tmp_path), freeze_heap=True)) as client:
            assert client.get("/healthz").status_code == 200
            assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_several_workers_take_their_settings_from_the_environment(tmp_path):
    with pytest.raises(ValueError, match="settings from the environment"):
        serve(settings=Settings(home=tmp_path), workers=2)


def test_serve_api_refuses_zero_workers_in_one_line(tmp_path):
    proc = subprocess.run(custctx_cmd("serve", "api", "--workers", "0"), env=server_env(tmp_path),
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "--workers" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------ two workers, end to end
KEY = "k-throughput-5e1d"


def _audit_rows(home) -> int:
    from sqlalchemy import func, select

    from tools.access.audit import audit_log_for, audit_log_table

    settings = Settings(home=home)
    c = audit_log_table.c
    with audit_log_for(settings).engine.connect() as conn:
        return conn.execute(select(func.count()).where(c.user_name == "throughput")).scalar() or 0


@pytest.mark.slow  # two server processes on a freshly seeded home
def test_two_workers_answer_alike_keep_every_audit_record_and_the_chain(tmp_path):
    """``serve api --workers 2 --no-access-log``: both processes serve (their start lines), no
    request is logged line by line, 60 concurrent reads all answer the same facts as the first,
    each leaves exactly the records one read leaves, and the audit chain verifies."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "keys.json").write_text(json.dumps({hashlib.sha256(KEY.encode()).hexdigest():
                                                {"user": "throughput", "role": "support_agent"}}))
    env = {**server_env(home), "CUSTCTX_API_KEYS_FILE": str(home / "keys.json")}
    port = free_port()
    proc = subprocess.Popen(custctx_cmd("serve", "api", "--port", str(port), "--workers", "2", "--no-access-log"),
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    base, path = f"http://127.0.0.1:{port}", "/v1/customers/acme.com/context?slices=crm.account,billing.status"
    headers = {"Authorization": f"Bearer {KEY}"}
    try:
        wait_until_up(proc, f"{base}/healthz")
        first = httpx.get(base + path, headers=headers, timeout=60)
        assert first.status_code == 200, first.text
        per_read = _audit_rows(home)
        assert per_read > 0

        async def many() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
                return await asyncio.gather(*(client.get(path) for _ in range(60)))

        answers = asyncio.run(many())
        assert [r.status_code for r in answers] == [200] * 60
        facts = ("customer_id", "customer", "billing", "risk_indicators", "health", "conflicts")  # not the ages
        assert all({k: r.json()[k] for k in facts} == {k: first.json()[k] for k in facts} for r in answers)
        assert _audit_rows(home) == 61 * per_read
    finally:
        stop(proc)
    log = proc.stdout.read() if proc.stdout else ""
    assert log.count("Started server process") >= 2, log[-2000:]
    assert "GET /v1/customers" not in log
    verify = subprocess.run(custctx_cmd("audit", "verify"), env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    assert verify.returncode == 0 and "intact" in verify.stdout, verify.stdout + verify.stderr
