"""Model failures (issue 14, point 7), against the strict local OpenAI-compatible endpoint
over real HTTP: every failure to get an answer is one ``ModelError`` naming the model, its
endpoint and the cause; the CLI exits 4 with that one line, the HTTP API answers 502 JSON,
the MCP server a tool error; retries are bounded (429 / 408 / 409 / 5xx / timeouts only) and
batch reviews share one request-rate limiter."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import threading
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.models import ModelConfigError, ModelError, chat_model, rate_limiter
from agent.reviews import run_reviews
from agent.runs import Runner
from tools.access.principal import Principal
from tools.book import list_accounts
from tools.settings import Settings

from .conftest import settings_for
from .openai_endpoint import Delay, HttpError, StrictOpenAIEndpoint
from .test_cli import custctx
from .test_mcp import custctx_cmd, free_port, server_env, stop, wait_until_up

MODEL = "strict-test-model"
KEY = "sk-strict-test"
QUESTION = "What's their billing status?"


@pytest.fixture
def endpoint(monkeypatch):
    with StrictOpenAIEndpoint() as ep:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", ep.base_url)
        yield ep


def model_env(warehouse: str, base_url: str, *, retries: int = 2, timeout_s: float = 5) -> dict[str, str]:
    """The model settings of a CLI run, on the session's seeded warehouse (read only: no seeding)."""
    return {"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": KEY, "CUSTCTX_MODEL_MAX_RETRIES": str(retries),
            "CUSTCTX_MODEL_TIMEOUT_S": str(timeout_s), "CUSTCTX_WAREHOUSE_URL": warehouse}


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"  # bound, then released: nothing listens


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """The home the sequential CLI runs share (the identity index is built once)."""
    return tmp_path_factory.mktemp("model-failures-home")


# case → (the endpoint's steps, None: no endpoint at all; the run's model settings; the cause
# the one stderr line ends with, a pattern; the requests the endpoint must have seen: max_retries + 1)
FAILURES: dict[str, tuple[list[Any] | None, dict[str, Any], str, int]] = {
    "500 every time": ([HttpError(500)] * 4, {"retries": 1}, re.escape(
        "500 Internal Server Error after 2 attempts (server error): The server had an error while processing "
        "your request."), 2),
    "429 every time": ([HttpError(429, "Rate limit reached for requests")] * 4, {"retries": 1}, re.escape(
        "429 Too Many Requests after 2 attempts (rate limited): Rate limit reached for requests"), 2),
    "timeout": ([Delay(30)] * 2, {"retries": 1, "timeout_s": 0.3}, re.escape(
        "timed out after 2 attempts (no answer within 0.3 s each; CUSTCTX_MODEL_TIMEOUT_S)"), 2),
    "connection refused": (None, {"retries": 1},
                           r"cannot connect after 2 attempts \(\[Errno \d+\] Connection refused\)", 0),
}


# ------------------------------------------------------------------ the error's message
def test_the_message_names_the_model_the_endpoint_and_the_cause(endpoint):
    endpoint.script(*[HttpError(429, "Rate limit reached for requests")] * 3)
    with pytest.raises(ModelError) as caught:
        chat_model(Settings(model=MODEL)).invoke("hi")
    assert str(caught.value) == (f"model {MODEL} at {endpoint.base_url}: 429 Too Many Requests after 3 attempts "
                                 "(rate limited): Rate limit reached for requests")
    assert (caught.value.status, caught.value.attempts, caught.value.model) == (429, 3, MODEL)
    again = pickle.loads(pickle.dumps(caught.value))
    assert str(again) == str(caught.value) and again.attempts == 3


def test_a_model_that_cannot_be_used_is_a_model_error_before_any_request(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:5501/v1")
    with pytest.raises(ModelConfigError) as caught:
        chat_model(Settings(), "gpt-4o-mini")
    assert isinstance(caught.value, ModelError)
    assert str(caught.value).startswith("model gpt-4o-mini at http://127.0.0.1:5501/v1: OPENAI_API_KEY is not set")


# ------------------------------------------------------------------ retries
@pytest.mark.parametrize(("status", "requests"), [(400, 1), (401, 1), (403, 1), (404, 1), (422, 1),
                                                  (408, 2), (409, 2), (429, 2), (500, 2), (503, 2)])
def test_only_429_408_409_and_5xx_are_retried(endpoint, status, requests):
    endpoint.script(*[HttpError(status, "nope")] * 2)
    with pytest.raises(ModelError, match=f": {status} "):
        chat_model(Settings(model=MODEL, model_max_retries=1)).invoke("hi")
    assert [r.status for r in endpoint.requests] == [status] * requests


def test_three_500s_fail_after_exactly_max_retries_plus_one_requests(endpoint):
    endpoint.script(*[HttpError(500)] * 5)
    with pytest.raises(ModelError, match="500 Internal Server Error after 3 attempts"):
        chat_model(Settings(model=MODEL, model_max_retries=2)).invoke("hi")
    assert [r.status for r in endpoint.requests] == [500, 500, 500]
    assert [r.headers["x-stainless-retry-count"] for r in endpoint.requests] == ["0", "1", "2"]


# ------------------------------------------------------------------ the CLI: exit 4, one line
@pytest.mark.parametrize("case", list(FAILURES))
def test_cli_exits_4_with_one_line_naming_the_model_the_endpoint_and_the_cause(home, sqlite_warehouse, case):
    steps, env, cause, requests = FAILURES[case]
    with ExitStack() as stack:
        endpoint = None if steps is None else stack.enter_context(StrictOpenAIEndpoint())
        if endpoint is not None:
            endpoint.script(*steps)
        url = endpoint.base_url if endpoint else closed_port_url()
        proc = custctx(home, "ask", QUESTION, "--customer", "acme.com", "--model", MODEL,
                       env_extra=model_env(sqlite_warehouse, url, **env))
    assert proc.returncode == 4, proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(re.escape(f"error: model {MODEL} at {url}: ") + cause, lines[0]), lines
    if endpoint is not None:
        assert len(endpoint.requests) == requests


def test_cli_a_429_then_an_answer_succeeds(home, endpoint, sqlite_warehouse):
    endpoint.script(HttpError(429, "Rate limit reached for requests"))  # then the hosted model answers
    proc = custctx(home, "ask", QUESTION, "--customer", "acme.com", "--model", MODEL,
                   env_extra=model_env(sqlite_warehouse, endpoint.base_url))
    assert proc.returncode == 0, proc.stderr
    assert "[billing." in proc.stdout and "Traceback" not in proc.stderr
    first, retried = endpoint.requests[:2]
    assert (first.status, retried.status, retried.headers["x-stainless-retry-count"]) == (429, 200, "1")
    assert all(r.status == 200 for r in endpoint.requests[1:])  # the rest of the turn as usual


def test_cli_review_exits_4_and_takes_a_rate(home, sqlite_warehouse, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from agent.interfaces.cli.app import app

    url = closed_port_url()
    for name, value in {**model_env(sqlite_warehouse, url, retries=0),
                        "CUSTCTX_HOME": str(home)}.items():
        monkeypatch.setenv(name, value)
    got = CliRunner().invoke(app, ["review", "--customer", "acme.com", "--out", str(tmp_path), "--model", MODEL,
                                   "--rate", "20"])
    assert got.exit_code == 4, got.output
    assert f"ModelError: model {MODEL} at {url}: cannot connect" in got.stderr
    assert rate_limiter(20.0) is not None  # --rate built the process's limiter for that rate


# ------------------------------------------------------------------ the HTTP API and MCP
def test_http_api_answers_502_json_when_the_model_fails(home, endpoint, sqlite_warehouse):
    endpoint.script(*[HttpError(503, "Overloaded")] * 10)
    (home / "keys.yaml").write_text(json.dumps({"k-model-test": {"user": "ops", "role": "admin"}}), encoding="utf-8")
    env = {**server_env(home), **model_env(sqlite_warehouse, endpoint.base_url, retries=0), "CUSTCTX_MODEL": MODEL,
           "CUSTCTX_API_KEYS_FILE": str(home / "keys.yaml")}
    port = free_port()
    proc = subprocess.Popen(custctx_cmd("serve", "api", "--port", str(port)), env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_up(proc, f"http://127.0.0.1:{port}/healthz")
        resp = httpx.post(f"http://127.0.0.1:{port}/v1/reviews", json={"customer": "acme.com"},
                          headers={"X-API-Key": "k-model-test"}, timeout=60)
    finally:
        stop(proc)
    assert resp.status_code == 502 and resp.headers["content-type"].startswith("application/json")
    assert resp.json() == {"error": "model_unavailable", "message": f"model {MODEL} at {endpoint.base_url}: "
                           "503 Service Unavailable (server error): Overloaded"}


def test_mcp_reports_a_model_failure_as_a_tool_error():
    from mcp.server.mcpserver.exceptions import ToolError

    from agent.interfaces.mcp import tool_errors

    failure = ModelError(MODEL, "http://127.0.0.1:5501/v1", "cannot connect after 3 attempts (refused)")
    with pytest.raises(ToolError, match=f"^model {MODEL} at http://127.0.0.1:5501/v1: cannot connect"):
        with tool_errors():
            raise failure


# ------------------------------------------------------------------ the request-rate limit
def test_concurrent_reviews_share_one_limiter_acquired_once_per_request(endpoint, sqlite_warehouse, tmp_path,
                                                                         monkeypatch):
    settings = settings_for(sqlite_warehouse, tmp_path, tenant=f"t-{uuid.uuid4().hex[:8]}", model=MODEL,
                            model_requests_per_second=200.0)
    limiter = rate_limiter(200.0)
    assert limiter is not None and chat_model(settings).rate_limiter is limiter  # one bucket per process
    acquired: list[str] = []
    lock = threading.Lock()
    real_acquire = limiter.acquire

    def counting_acquire(*, blocking: bool = True) -> bool:
        with lock:
            acquired.append(threading.current_thread().name)
        return real_acquire(blocking=blocking)

    monkeypatch.setattr(limiter, "acquire", counting_acquire)
    with Runner(settings, principal=Principal(settings.tenant, "ops", "admin", interface="runner")) as runner:
        entries = list(list_accounts(settings, owner="dana.scully"))[:4]
        assert len(entries) >= 3

        def one(entry):
            res = runner.review(entry.customer_id)
            return res["markdown"], {"customer_id": entry.customer_id, "name": entry.name}

        report = run_reviews(entries, one, tmp_path / "out", concurrency=len(entries))
    assert report.written == len(entries) and not report.failed
    assert len(acquired) == len(endpoint.requests) == len(entries)  # one model request per review, each limited
    assert len(set(acquired)) > 1  # from several review threads, through the same limiter
    assert rate_limiter(None) is None and chat_model(Settings(model=MODEL)).rate_limiter is None
