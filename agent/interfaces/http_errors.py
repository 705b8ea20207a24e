"""The HTTP API's errors and its outer guard (``agent.interfaces.http`` installs both).

Every error is JSON ``{"error": code, "message": text, ...}`` with the status that fits
(docs/SERVING.md lists them): the service's domain errors mapped to statuses, request
validation, unknown routes, and a crash answered as a 500 without a traceback.
:class:`RequestGuard` refuses bodies over the input limits before an endpoint parses them.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.interfaces.service import InvalidRequest, NotAvailable, WorkflowFailed, policy_errors
from agent.models import ModelError
from tools.access.policy import Refused
from tools.context.assembly import UnknownSlice
from tools.identity import AmbiguousCustomer, BadReference, CustomerNotFound
from tools.sources.tickets import (
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    JsonInputError,
    TicketNotFound,
    TicketSourceUnavailable,
    load_json_input,
)

log = logging.getLogger("custctx.api")


# ------------------------------------------------------------------ errors
class ApiError(Exception):
    """An error answered as ``{"error": code, "message": message, **extra}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


class ErrorBody(BaseModel):
    error: str = Field(description="Machine-readable code, e.g. customer_not_found, ambiguous_customer.")
    message: str = Field(description="One line for a person: what was wrong and what to do.")
    candidates: list[dict[str, Any]] | None = Field(
        default=None, description="With ambiguous_customer: the customers the reference matches.")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None,
                   **extra: Any) -> JSONResponse:
    return JSONResponse(jsonable_encoder({"error": code, "message": message, **extra}), status_code=status,
                        headers=headers)


def as_api_error(exc: Exception) -> ApiError:
    """The domain errors of the service → HTTP statuses (docs/SERVING.md)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, AmbiguousCustomer):
        return ApiError(409, "ambiguous_customer", first, candidates=[c.__dict__ for c in exc.candidates])
    if isinstance(exc, CustomerNotFound):
        return ApiError(404, "customer_not_found", first, suggestions=exc.suggestions)
    if isinstance(exc, TicketNotFound):
        return ApiError(404, "ticket_not_found", first)
    if isinstance(exc, BadReference):
        return ApiError(422, "bad_reference", first)
    if isinstance(exc, UnknownSlice):
        return ApiError(422, "unknown_slice", first)
    if isinstance(exc, WorkflowFailed):
        return ApiError(422, "customer_unresolved", first)
    if isinstance(exc, InvalidRequest):
        return ApiError(422, "invalid_request", first)
    if isinstance(exc, TicketSourceUnavailable):
        return ApiError(503, "source_unavailable", first)
    if isinstance(exc, NotAvailable):
        return ApiError(501, "not_implemented", first)
    if isinstance(exc, (Refused, *policy_errors())):  # a permission the role lacks, or a role the policy lacks
        return ApiError(403, "forbidden", first)
    if isinstance(exc, ModelError):  # the model behind this server gave no answer: a bad gateway
        return ApiError(502, "model_unavailable", first)
    raise exc


SERVICE_ERRORS = (AmbiguousCustomer, CustomerNotFound, BadReference, UnknownSlice, WorkflowFailed, InvalidRequest,
                  TicketNotFound, TicketSourceUnavailable, NotAvailable, ModelError, Refused, *policy_errors())
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No API key, or an unknown one."},
    403: {"model": ErrorBody, "description": "The key's role is not defined by the access policy."},
    422: {"model": ErrorBody, "description": "Bad input: malformed reference, unknown slice, invalid body."},
}
CUSTOMER_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    404: {"model": ErrorBody, "description": "No customer matches the reference (with the closest names)."},
    409: {"model": ErrorBody, "description": "The reference matches several customers: `candidates` lists them."},
}
BODY_RESPONSES: dict[int | str, dict[str, Any]] = {
    **CUSTOMER_RESPONSES,
    413: {"model": ErrorBody, "description": "The body is larger than 1 MiB (the connection is then closed)."},
}
WORKFLOW_RESPONSES: dict[int | str, dict[str, Any]] = {
    **BODY_RESPONSES,
    502: {"model": ErrorBody, "description": "The chat model gave no answer (unreachable, timed out, rate "
                                             "limited or failing after retries, misconfigured): the message names "
                                             "the model, its endpoint and the cause."},
}


def install_error_handlers(app: FastAPI) -> None:
    """Every error is JSON ``{"error", "message", ...}``; no traceback ever reaches a client."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(exc.status, exc.code, exc.message, headers, **exc.extra)

    async def service_error(request: Request, exc: Exception) -> JSONResponse:
        e = as_api_error(exc)
        return error_response(e.status, e.code, e.message, **e.extra)

    for cls in SERVICE_ERRORS:
        app.add_exception_handler(cls, service_error)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body') or 'body'}: {e.get('msg')}"
                             for e in exc.errors())
        # Not the rejected input itself: it may be huge, or a value JSON cannot carry (NaN).
        details = [{"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg")), "type": str(e.get("type"))}
                   for e in exc.errors()]
        return error_response(422, "invalid_request", " ".join(problems.split()) or "invalid request",
                              details=details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        return error_response(500, "internal_error", f"the server failed ({type(exc).__name__}); see its log")


_JSON_TYPE = re.compile(r"^application/(?:[\w.-]+\+)?json\s*(?:;|$)")


class _ClientGone(Exception):
    """The client disconnected while sending its body: there is no one to answer."""


class RequestGuard:
    """The app's outer layer (inside Starlette's ServerErrorMiddleware, around everything else).

    Bodies: at most ``MAX_JSON_BYTES`` (413 ``body_too_large``, and the connection is closed
    rather than the rest of the body read); a body sent as JSON (``application/json``,
    ``…+json`` or no content type) must be JSON within the input limits of
    ``tools.sources.tickets.load_json_input`` — no NaN or Infinity, nested at most
    ``MAX_JSON_DEPTH`` levels, valid text — or it is refused with 422 ``invalid_request``
    before an endpoint parses it (Python's json takes NaN, and recurses on deep nesting).

    Errors: an exception no handler answered is logged and answered with the JSON 500 here,
    not re-raised: Starlette's ServerErrorMiddleware re-raises after answering, and the
    server then closes the keep-alive connection under the client's next request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            if scope["method"] in ("POST", "PUT", "PATCH"):
                refusal, receive = await self._checked_body(scope, receive)
                if refusal is not None:
                    await refusal(scope, receive, tracked)
                    return
            await self.app(scope, receive, tracked)
        except _ClientGone:
            return
        except Exception as exc:
            log.exception("%s %s failed", scope["method"], str(scope.get("path"))[:200])
            if started:
                raise  # half an answer is out: only closing the connection ends it
            crash = error_response(500, "internal_error", f"the server failed ({type(exc).__name__}); see its log")
            await crash(scope, receive, send)

    @staticmethod
    async def _checked_body(scope: Scope, receive: Receive) -> tuple[JSONResponse | None, Receive]:
        """The refusal of a body over the limits (or None), and a ``receive`` that replays it."""
        headers = Headers(scope=scope)
        too_large = error_response(413, "body_too_large", f"the request body is larger than {MAX_JSON_BYTES:,} "
                                   "bytes", {"Connection": "close"})
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_JSON_BYTES:
            return too_large, receive
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                raise _ClientGone()
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > MAX_JSON_BYTES:
                return too_large, receive
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        content_type = headers.get("content-type", "").strip().lower()
        if body and (not content_type or _JSON_TYPE.match(content_type)):
            try:
                load_json_input(body, MAX_JSON_BYTES, MAX_JSON_DEPTH)
            except JsonInputError as exc:
                return error_response(422, "invalid_request", f"the request body: {exc}"), receive
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: the client's disconnect, when it comes
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return None, replay
