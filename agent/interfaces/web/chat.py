"""Chat with the assistant about one customer: a thread per user and customer, every answer with its
citations (links to the slice's provenance and record ids) and gaps; streamed to the page as
server-sent events when JavaScript runs, a plain form post (and a whole page back) when it does not."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from agent.interfaces.web.customers import customer_url
from agent.interfaces.web.render import WebError, call, page, templates
from agent.interfaces.web.session import User, WebUser, check_csrf
from tools.sources.base import CustomerRef

router = APIRouter()
_THREAD = re.compile(r"^web-[0-9a-f]{16}-[0-9a-z]{1,16}$")
_PIECE = re.compile(r"\S+\s*|\s+")  # the answer is sent word by word


def thread_tag(user: WebUser, customer_id: str) -> str:
    """What every thread of this user about this customer starts with: no one else's threads are reachable."""
    p = user.principal
    return hashlib.sha256(f"{p.tenant}\x1f{p.user}\x1f{p.role}\x1f{customer_id}".encode()).hexdigest()[:16]


def thread_of(user: WebUser, customer_id: str, asked: str | None) -> str:
    """The thread asked for, if it is this user's about this customer; else their first one."""
    prefix = f"web-{thread_tag(user, customer_id)}-"
    if asked and _THREAD.match(asked) and asked.startswith(prefix):
        return asked
    return prefix + "1"


async def _customer(request: Request, user: WebUser, ref: str) -> CustomerRef:
    customer, _ = await call(request, lambda s: s.resolve(ref, principal=user.principal))
    return customer


async def _chat_page(request: Request, user: WebUser, customer: CustomerRef, thread: str,
                     result: dict[str, Any] | None = None, status: int = 200) -> Response:
    history = await call(request, lambda s: s.thread_messages(thread, principal=user.principal))
    if result is not None and len(history) >= 2 and history[-1][0] == "assistant":
        history = history[:-2]  # this turn is shown below, the answer with its citations and gaps
    return page(request, "chat.html", status, customer=customer, thread=thread, history=history, result=result,
                url=customer_url(customer.customer_id), new_thread=f"web-{thread_tag(user, customer.customer_id)}-"
                + secrets.token_hex(4))


@router.get("/customers/{ref}/chat", response_class=HTMLResponse, include_in_schema=False)
async def chat(request: Request, user: User, ref: str, thread: str | None = None) -> Response:
    customer = await _customer(request, user, ref)
    return await _chat_page(request, user, customer, thread_of(user, customer.customer_id, thread))


async def _ask(request: Request, user: WebUser, customer: CustomerRef, thread: str, question: str) -> dict[str, Any]:
    result = await call(request, lambda s: s.ask(question, customer.customer_id, thread, principal=user.principal))
    if result.get("error"):
        raise WebError(422, "No answer", str(result["error"]).splitlines()[0])
    return result


@router.post("/customers/{ref}/chat", response_class=HTMLResponse, include_in_schema=False)
async def ask(request: Request, user: User, ref: str, question: Annotated[str, Form()] = "",
              thread: Annotated[str, Form()] = "", csrf: Annotated[str, Form()] = "") -> Response:
    """One turn without JavaScript: the question posted, the whole page back with the answer."""
    check_csrf(user, csrf)
    customer = await _customer(request, user, ref)
    thread_id = thread_of(user, customer.customer_id, thread)
    result = await _ask(request, user, customer, thread_id, question)
    return await _chat_page(request, user, customer, thread_id, result)


def _event(kind: str, data: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


@router.post("/customers/{ref}/chat/stream", include_in_schema=False)
async def ask_stream(request: Request, user: User, ref: str, question: Annotated[str, Form()] = "",
                     thread: Annotated[str, Form()] = "", csrf: Annotated[str, Form()] = "") -> Response:
    """One turn as server-sent events: ``delta`` pieces of the answer as it is written out, then
    ``done`` (the answer, its citations and gaps as HTML), or one ``error`` with a clear message."""
    check_csrf(user, csrf)
    customer = await _customer(request, user, ref)
    thread_id = thread_of(user, customer.customer_id, thread)

    async def events() -> AsyncIterator[str]:
        yield _event("start", {"thread": thread_id})
        try:
            result = await _ask(request, user, customer, thread_id, question)
        except WebError as exc:
            yield _event("error", {"title": exc.title, "message": exc.message})
            return
        for piece in _PIECE.findall(result.get("answer") or ""):
            yield _event("delta", {"text": piece})
        html = templates.get_template("_answer.html").render(result=result, customer=customer)
        yield _event("done", {"html": html})

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
