"""One driver per entry point for the access eval: the same operations (a customer's context, a
question and a thread continued by another principal, a ticket by id, a ticket for a named customer,
the open queue, an event, a review) asked of the CLI, the HTTP API, the MCP server and LangGraph's
server, each answer reduced to a :class:`Reply`: did it succeed, its shape (exit code, HTTP status,
tool error), and everything the caller was shown. An operation the entry point does not offer is
``None`` on the driver (``ops`` lists the offered ones)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from evals.access_servers import InProcessCli
from tools.slices import SLICE_NAMES

QUESTION, FOLLOW_UP = "What's their billing status?", "and their usage?"


@dataclass
class Reply:
    """What one call showed its caller: ``ok`` (it succeeded), ``shape`` (exit code / status / error
    kind: a hidden and a missing reference must share it) and ``text`` (all of it)."""

    ok: bool
    shape: str
    text: str
    data: Any = None


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _shown(text: str, data: Any) -> str:
    """The answer's text, plus its JSON as a reader sees it (non-ASCII unescaped: ``Société``)."""
    return text if data is None else text + "\n" + json.dumps(data, ensure_ascii=False)


# ---------------------------------------------------------------------------- CLI
class CliDriver:
    """``custctx`` in this process, ``--as`` per call, JSON output where the command has it."""

    name = "cli"
    ops = ("context", "ask", "continue", "ticket", "open", "event", "review")

    def __init__(self, cli: InProcessCli):
        self.cli = cli

    def _run(self, *args: str) -> Reply:
        r = self.cli(*args)
        data = _json(r.stdout)
        return Reply(r.code == 0, f"exit {r.code}", _shown(r.stdout + "\n" + r.stderr, data), data)

    def context(self, who: str, ref: str) -> Reply:
        return self._run("context", ref, "--format", "json", "--as", who)

    def ask(self, who: str, ref: str, thread: str | None = None) -> Reply:
        extra = ("--thread", thread) if thread else ()
        return self._run("ask", QUESTION, "--customer", ref, *extra, "--format", "json", "--as", who)

    def continue_thread(self, who: str, thread: str) -> Reply:
        return self._run("ask", FOLLOW_UP, "--thread", thread, "--format", "json", "--as", who)

    def new_thread_id(self) -> str:
        return f"eval-{uuid.uuid4().hex[:12]}"

    def start_thread(self, who: str, ref: str) -> str:
        """A conversation ``who`` starts about ``ref`` (its thread id)."""
        thread = self.new_thread_id()
        self.ask(who, ref, thread)
        return thread

    def ticket(self, who: str, ticket_id: str) -> Reply:
        return self._run("triage", "--ticket", ticket_id, "--format", "json", "--as", who)

    def open_queue(self, who: str, limit: int | None) -> Reply:
        return self._run("triage", "--open", "--format", "json", "--as", who,
                         *(("--limit", str(limit)) if limit else ()))

    def event(self, who: str, ref: str) -> Reply:
        return self._run("event", "ticket.created", "--customer", ref, "--as", who)

    def review(self, who: str, ref: str) -> Reply:
        with tempfile.TemporaryDirectory(prefix="custctx-eval-review-") as out:
            r = self._run("review", "--customer", ref, "--out", out, "--as", who)
            written = "\n".join(p.read_text(encoding="utf-8") for p in sorted(Path(out).glob("*"))
                                if p.suffix in (".md", ".json"))
        return Reply(r.ok, r.shape, r.text.replace(out, "OUT") + "\n" + written, r.data)


# ---------------------------------------------------------------------------- HTTP API
class _KeyedHttp:
    """A server over one real connection (keep-alive), ``X-API-Key`` per principal; each driver
    says how a response reads (:meth:`_reply`)."""

    timeout = 120.0

    def __init__(self, base: str, keys: dict[str, str]):
        self.client = httpx.Client(base_url=base, timeout=self.timeout)
        self.keys = keys

    def close(self) -> None:
        self.client.close()

    def _send(self, who: str, method: str, path: str, body: Any = None) -> Reply:
        resp = self.client.request(method, path, json=body, headers={"X-API-Key": self.keys[who]})
        return self._reply(resp, _json(resp.text))

    def _reply(self, resp: httpx.Response, data: Any) -> Reply:
        raise NotImplementedError


class HttpDriver(_KeyedHttp):
    """The HTTP API: an error is its status and JSON error code."""

    name = "http"
    ops = ("context", "ticket", "event", "review")

    def _reply(self, resp: httpx.Response, data: Any) -> Reply:
        code = data.get("error") if isinstance(data, dict) and resp.status_code >= 400 else ""
        return Reply(resp.is_success, f"{resp.status_code} {code}".strip(), _shown(resp.text, data), data)

    def context(self, who: str, ref: str) -> Reply:
        return self._send(who, "GET", f"/v1/customers/{quote(ref, safe='')}/context")

    def ticket(self, who: str, ticket_id: str) -> Reply:
        return self._send(who, "POST", "/v1/triage", {"ticket_id": ticket_id})

    def event(self, who: str, ref: str) -> Reply:
        return self._send(who, "POST", "/v1/events", {"kind": "ticket.created", "customer": ref})

    def review(self, who: str, ref: str) -> Reply:
        return self._send(who, "POST", "/v1/reviews", {"customer": ref})


# ---------------------------------------------------------------------------- MCP
class McpDriver:
    """The MCP server over streamable HTTP, ``Authorization: Bearer <key>`` per principal: one client
    session per principal, owned by one task on the driver's event loop (a thread of its own) and
    kept open while that principal's calls run."""

    name = "mcp"
    ops = ("context", "slices", "ticket", "review")

    def __init__(self, base: str, keys: dict[str, str]):
        self.url, self.keys = base + "/mcp", keys
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="eval-mcp-client", daemon=True)
        self.thread.start()
        self._queues: dict[str, asyncio.Queue[Any]] = {}
        self._tasks: dict[str, concurrent.futures.Future[None]] = {}

    async def _serve(self, key: str, queue: asyncio.Queue[Any]) -> None:
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        async with create_mcp_http_client(headers={"Authorization": f"Bearer {key}"}) as http, \
                Client(streamable_http_client(self.url, http_client=http), read_timeout_seconds=120) as client:
            while (item := await queue.get()) is not None:
                tool, args, done = item
                try:
                    done.set_result(await client.call_tool(tool, args))
                except Exception as exc:  # handed to the caller, which raises it
                    done.set_exception(exc)

    def _queue(self, who: str) -> asyncio.Queue[Any]:
        if who not in self._queues:
            for queue in self._queues.values():  # one open session at a time: the previous principal is done
                self.loop.call_soon_threadsafe(queue.put_nowait, None)
            self._queues[who] = queue = asyncio.Queue()
            self._tasks[who] = asyncio.run_coroutine_threadsafe(self._serve(self.keys[who], queue), self.loop)
        return self._queues[who]

    def close(self) -> None:
        for queue in self._queues.values():
            self.loop.call_soon_threadsafe(queue.put_nowait, None)
        for task in self._tasks.values():
            task.result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()

    def _call(self, who: str, tool: str, args: dict[str, Any]) -> Reply:
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        queue = self._queue(who)
        self.loop.call_soon_threadsafe(queue.put_nowait, (tool, args, done))
        session = self._tasks[who]
        deadline = time.monotonic() + 300
        while not done.done():
            if session.done():  # the session ended (its connection failed): its error, not a hang
                session.result()
                raise RuntimeError(f"the MCP session of {who} ended before answering {tool}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"MCP {tool} as {who}: no answer in 300 s")
            concurrent.futures.wait([done, session], timeout=1, return_when=concurrent.futures.FIRST_COMPLETED)
        result = done.result()
        text = "\n".join(getattr(c, "text", "") for c in result.content)
        shown = text + "\n" + json.dumps(result.structured_content, ensure_ascii=False, default=str)
        return Reply(not result.is_error, "tool error" if result.is_error else "ok", shown,
                     result.structured_content)

    def context(self, who: str, ref: str) -> Reply:
        return self._call(who, "get_customer_context", {"customer_id": ref})

    def slices(self, who: str, ref: str) -> Reply:
        return self._call(who, "get_customer_slices", {"customer": ref, "slices": list(SLICE_NAMES)})

    def ticket(self, who: str, ticket_id: str) -> Reply:
        return self._call(who, "triage_ticket", {"ticket_id": ticket_id})

    def review(self, who: str, ref: str) -> Reply:
        return self._call(who, "generate_account_review", {"customer": ref})


# ---------------------------------------------------------------------------- LangGraph server
class LangGraphDriver(_KeyedHttp):
    """LangGraph's server (``langgraph dev``, the auth of ``langgraph.json``): the assistant on threads,
    the triage graph with a ticket for a named customer, the review graph; ``X-API-Key`` per principal."""

    name = "langgraph"
    ops = ("ask", "continue", "ticket_for", "review")
    timeout = 300.0

    def _reply(self, resp: httpx.Response, data: Any) -> Reply:
        error = data.get("error") if isinstance(data, dict) else None
        ok = resp.is_success and not error
        return Reply(ok, f"{resp.status_code}" + (" error" if error else ""), _shown(resp.text, data), data)

    def new_thread_id(self) -> str:
        return str(uuid.uuid4())

    def _thread(self, who: str) -> str:
        resp = self.client.post("/threads", json={}, headers={"X-API-Key": self.keys[who]})
        resp.raise_for_status()
        return str(resp.json()["thread_id"])

    def ask(self, who: str, ref: str, thread: str | None = None) -> Reply:
        thread = thread or self._thread(who)
        return self._send(who, "POST", f"/threads/{thread}/runs/wait", {"assistant_id": "assistant", "input": {
            "messages": [{"role": "human", "content": QUESTION}], "customer": ref}})

    def start_thread(self, who: str, ref: str) -> str:
        """A conversation ``who`` starts about ``ref`` (its thread id)."""
        thread = self._thread(who)
        self.ask(who, ref, thread)
        return thread

    def continue_thread(self, who: str, thread: str) -> Reply:
        return self._send(who, "POST", f"/threads/{thread}/runs/wait", {"assistant_id": "assistant", "input": {
            "messages": [{"role": "human", "content": FOLLOW_UP}]}})

    def ticket_for(self, who: str, ref: str, ticket: dict[str, Any]) -> Reply:
        return self._send(who, "POST", "/runs/wait", {"assistant_id": "triage",
                                                      "input": {"ticket": ticket, "customer": ref}})

    def review(self, who: str, ref: str) -> Reply:
        return self._send(who, "POST", "/runs/wait", {"assistant_id": "review", "input": {"customer": ref}})


@contextmanager
def closing(driver: Any) -> Iterator[Any]:
    try:
        yield driver
    finally:
        if hasattr(driver, "close"):
            driver.close()
