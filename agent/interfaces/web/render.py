"""Templates, markdown and the error page of the web console; the service called on a worker thread."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markdown_it import MarkdownIt
from markupsafe import Markup, escape

from agent.interfaces.service import (
    ContextService,
    InvalidRequest,
    NotAvailable,
    WorkflowFailed,
    policy_errors,
)
from agent.models import ModelError
from agent.threads import ThreadBusy
from tools.access.policy import Refused
from tools.context.assembly import UnknownSlice
from tools.identity import AmbiguousCustomer, BadReference, CustomerNotFound
from tools.slices import SLICE_NAMES
from tools.sources.tickets import TicketNotFound, TicketSourceUnavailable

T = TypeVar("T")
HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
# Raw HTML in markdown is off: customer-written text reaches the brief and the reviews.
_markdown = MarkdownIt("js-default", {"html": False, "linkify": False, "typographer": False})
_CITED = re.compile(r"\[(" + "|".join(re.escape(n) for n in sorted(SLICE_NAMES, key=len, reverse=True)) + r")\]")


PAGE_HEADERS = {
    # Scripts and styles only from the console's own static files: text from a source can never run.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin", "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


class WebError(Exception):
    """An error page: ``status``, a title and a one-line message (plus what the page may list)."""

    def __init__(self, status: int, title: str, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.title, self.message, self.extra = status, title, message, extra


def markdown(text: str) -> Markup:
    """Markdown → HTML; raw HTML in the text is shown as text, never rendered."""
    return Markup(_markdown.render(text or ""))  # noqa: S704 - markdown-it escapes the text (html off)


def cited_markdown(text: str, customer_id: str) -> Markup:
    """An answer as HTML, each ``[slice.name]`` citation a link to that slice's provenance."""
    html = _markdown.render(text or "")
    base = f"/web/customers/{escape(customer_id)}/provenance/"
    return Markup(_CITED.sub(lambda m: f'<a class="cite" href="{base}{m.group(1)}">[{m.group(1)}]</a>', html))  # noqa: S704


templates.env.filters["markdown"] = markdown
templates.env.globals["cited"] = cited_markdown


def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """Render ``template`` with the signed-in user (if any) and the request's CSRF token."""
    user = getattr(request.state, "web_user", None)
    ctx = {"user": user, "csrf": user.csrf if user else "", **context}
    resp = templates.TemplateResponse(request, template, ctx, status_code=status)
    resp.headers.update(PAGE_HEADERS)
    return resp


def as_web_error(exc: Exception) -> WebError:
    """The service's errors as error pages; a hidden customer is the same "not found" as a missing one."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, AmbiguousCustomer):
        return WebError(409, "Several customers match", first, candidates=exc.candidates)
    if isinstance(exc, CustomerNotFound):
        return WebError(404, "Customer not found", first, suggestions=exc.suggestions)
    if isinstance(exc, TicketNotFound):
        return WebError(404, "Ticket not found", first)
    if isinstance(exc, (BadReference, UnknownSlice, WorkflowFailed, InvalidRequest)):
        return WebError(422, "Cannot use that input", first)
    if isinstance(exc, TicketSourceUnavailable):
        return WebError(503, "Source unavailable", first)
    if isinstance(exc, NotAvailable):
        return WebError(501, "Not available", first)
    if isinstance(exc, (Refused, *policy_errors())):
        return WebError(403, "Not allowed", first)
    if isinstance(exc, ModelError):
        return WebError(502, "The model gave no answer", first)
    if isinstance(exc, ThreadBusy):
        return WebError(409, "Conversation busy", first)
    raise exc


SERVICE_ERRORS: tuple[type[Exception], ...] = (
    AmbiguousCustomer, CustomerNotFound, BadReference, UnknownSlice, WorkflowFailed, InvalidRequest, TicketNotFound,
    TicketSourceUnavailable, NotAvailable, ModelError, Refused, ThreadBusy, *policy_errors())


async def call(request: Request, fn: Callable[[ContextService], T]) -> T:
    """``fn(service)`` on a worker thread (the API's admission limit); its errors as :class:`WebError`."""
    svc: ContextService = request.app.state.service
    try:
        return await anyio.to_thread.run_sync(lambda: fn(svc), limiter=request.app.state.limiter)
    except SERVICE_ERRORS as exc:
        raise as_web_error(exc) from None


def error_page(request: Request, exc: WebError) -> HTMLResponse:
    return page(request, "error.html", exc.status, error=exc)
