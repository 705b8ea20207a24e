"""``custctx serve api``: the HTTP API (FastAPI).

``GET /v1/customers/{ref}/context``, ``GET /v1/context?user_id=`` (or ``anonymous_id=``,
``customer=``), ``POST /v1/triage``, ``POST /v1/reviews``,
``POST /v1/events``, ``GET /v1/sources``, ``GET /v1/customers`` (the book), ``POST
/v1/webhooks/{system}`` (signed by the provider, no key), ``GET /healthz``; OpenAPI at ``/openapi.json``
(``/docs`` renders it). Every ``/v1`` call needs an API key (``Authorization: Bearer
<key>`` or ``X-API-Key: <key>``) that the key file (``CUSTCTX_API_KEYS_FILE``) maps to a
principal: no key, no data. Errors are JSON ``{"error": code, "message": text, ...}``
with the status that fits (docs/SERVING.md lists them).

The endpoints are thin: they parse the request and call ``agent.interfaces.service.ContextService``
(the Runner the CLI uses) on a worker thread, at most ``serve_max_concurrency`` at once. On the hot
path (the context routes) the event loop does only HTTP: the key is checked on it (a digest and a
few comparisons, no thread hop), and the read, its view and its JSON encoding all happen in the one
worker-thread call (docs/SERVING.md, Throughput).
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

import anyio
import orjson
from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from pydantic_core import to_jsonable_python

from agent.interfaces.facts_api import facts_router
from agent.interfaces.http_errors import (
    BODY_RESPONSES,
    CUSTOMER_RESPONSES,
    ERROR_RESPONSES,
    SERVICE_ERRORS,
    WORKFLOW_RESPONSES,
    ApiError,
    ErrorBody,
    RequestGuard,
    as_api_error,
    error_response,
    install_error_handlers,
)
from agent.interfaces.service import (
    ApiKeys,
    ContextService,
    check_role,
    load_api_keys,
    session_reference,
    ticket_input,
)
from agent.interfaces.web.app import install_web_console
from agent.interfaces.webhooks import router as webhook_router
from tools.access.principal import Principal
from tools.context.view import reference_view
from tools.settings import Settings
from tools.sources.tickets import TicketInput

__all__ = ["BODY_RESPONSES", "CUSTOMER_RESPONSES", "ERROR_RESPONSES", "SERVICE_ERRORS", "WORKFLOW_RESPONSES",
           "ApiError", "Caller", "ErrorBody", "EventRequest", "RequestGuard", "ReviewRequest", "TriageRequest",
           "as_api_error", "caller", "create_app", "error_response", "install_error_handlers", "json_response",
           "run_service", "serve", "served_app"]

T = TypeVar("T")


# ------------------------------------------------------------------ bodies
class TriageRequest(BaseModel):
    """A ticket to triage: ``ticket_id`` of a ticket in the support source, or the ``ticket`` itself."""

    ticket_id: str | None = Field(default=None, description="Id of a ticket in the support source, e.g. 1001.")
    ticket: TicketInput | None = Field(default=None, description="A ticket that is not stored anywhere yet: "
                                       "subject and/or description, requester_email, ...")
    customer: str | None = Field(default=None, description="The customer (email, domain, id or name) when the "
                                 "ticket's requester does not identify it.")
    user_id: str | None = Field(default=None, description="Instead of customer: the application's user id of "
                                "the session the ticket comes from.")
    anonymous_id: str | None = Field(default=None, description="Instead of customer: the session's Segment "
                                     "anonymous id.")


class ReviewRequest(BaseModel):
    customer: str = Field(description="Customer email, domain, id (c_..., crm:1001) or name.")


class EventRequest(BaseModel):
    kind: str = Field(description="What happened at a source, e.g. ticket.created, invoice.payment_failed.")
    customer: str = Field(description="The customer it happened to: email, domain, id or name.")


# ------------------------------------------------------------------ the app
bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: <API key>")


def key_principal(request: Request,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
                  x_api_key: Annotated[str | None, Depends(api_key_header)]) -> Principal:
    """The principal the request's API key maps to (401 otherwise)."""
    key = x_api_key or (credentials.credentials if credentials else None)
    keys: ApiKeys = request.app.state.keys
    if not key:
        raise ApiError(401, "unauthorized", "an API key is required: send 'Authorization: Bearer <key>' or "
                       "'X-API-Key: <key>'" + ("" if len(keys) else
                                               " (this server has no keys: set CUSTCTX_API_KEYS_FILE)"))
    who = keys.principal(key)
    if who is None:
        raise ApiError(401, "unauthorized", "unknown API key")
    return who


async def caller(request: Request,
                 credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
                 x_api_key: Annotated[str | None, Depends(api_key_header)]) -> Principal:
    """:func:`key_principal` as an async dependency: checked on the event loop, where FastAPI would
    send a plain function to a worker thread and back (a thread hop on every request)."""
    return key_principal(request, credentials, x_api_key)


Caller = Annotated[Principal, Depends(caller)]


def _json_default(value: Any) -> Any:
    return to_jsonable_python(value)  # what FastAPI's own encoding does with a value JSON lacks (a datetime)


def json_response(value: Any) -> Response:
    """``value`` as the JSON response FastAPI would make of it (compact UTF-8, datetimes as pydantic
    writes them), encoded by orjson — on the worker thread that computed it, not on the event loop."""
    body = orjson.dumps(value, default=_json_default,
                        option=orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME)
    return Response(body, media_type="application/json")


async def run_service(request: Request, fn: Callable[[ContextService], T]) -> T:
    """Run ``fn`` on one of the app's ``serve_max_concurrency`` worker threads (the rest queue), in
    a copy of the request's context variables, as ``anyio.to_thread.run_sync`` would, for less: a
    plain executor hand-off, no capacity limiter or cancel scope to run (docs/SERVING.md, Throughput).
    A request cancelled meanwhile leaves its call to finish (its audit records with it)."""
    svc: ContextService = request.app.state.service
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(request.app.state.pool, context.run, fn, svc)


def create_app(settings: Settings | None = None, service: ContextService | None = None, *,
               freeze_heap: bool = False) -> FastAPI:
    """The FastAPI application. Without ``service`` it opens one (and closes it) in its lifespan.

    ``freeze_heap`` (a server process, :func:`serve`): once the service is open, what the process
    holds (modules, the identity index, the policy) is moved out of the garbage collector's reach
    (``gc.freeze``), so a full collection walks only what requests made since — not a pause of
    hundreds of milliseconds for every request in flight."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = service is None
        svc = service if service is not None else await anyio.to_thread.run_sync(ContextService, settings)
        app.state.service = svc
        app.state.keys = load_api_keys(svc.settings.api_keys_file, svc.settings.tenant)
        app.state.limiter = anyio.CapacityLimiter(svc.max_concurrency)  # the web console's and webhooks' calls
        app.state.pool = ThreadPoolExecutor(svc.max_concurrency, thread_name_prefix="custctx-api")
        if freeze_heap:
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            app.state.pool.shutdown(wait=True)  # the calls in progress finish (and audit) first
            if owned:
                svc.close()

    app = FastAPI(title="custctx", version="0.1.0", lifespan=lifespan,
                  description="Customer context for support and account work: one customer's unified context "
                              "(the reference get_customer_context shape plus gaps, conflicts and provenance), "
                              "ticket triage, account reviews, source events and source health.")
    install_error_handlers(app)
    app.add_middleware(RequestGuard)

    @app.get("/healthz", tags=["ops"], summary="Liveness: the server is up (no key needed, no data)")
    async def healthz(request: Request) -> dict[str, Any]:
        svc: ContextService = request.app.state.service
        worker = await anyio.to_thread.run_sync(svc.worker_health)  # the refresh worker's jobs (no error text)
        return {"status": "ok", "tenant": svc.settings.tenant, "worker": worker}

    @app.get("/v1/customers/{ref}/context", tags=["context"], responses=CUSTOMER_RESPONSES,
             response_model=dict[str, Any], summary="One customer's unified context (the reference get_customer_context shape)")
    async def customer_context(
        request: Request, who: Caller,
        ref: Annotated[str, PathParam(description="Customer email, domain, id (c_..., crm:1001) or name.")],
        slices: Annotated[list[str] | None, Query(description="Slices or sources to read, comma-separated or "
                                                  "repeated (billing.status,support); default: all.")] = None,
        fresh: Annotated[bool, Query(description="Read every slice from its source, not from memory.")] = False,
    ) -> Response:
        """``customer``, ``billing``, ``usage``, ``support``, ``risk_indicators``, ``context_updated`` as in
        the reference, plus ``customer_id``, ``health``, ``gaps``, ``conflicts``, per-slice ``provenance``,
        the source report, all traits and the slices read."""
        return await run_service(request, lambda s: json_response(reference_view(
            s.context(ref, slices, fresh=fresh, principal=who))))

    @app.get("/v1/context", tags=["context"], responses=CUSTOMER_RESPONSES,
             response_model=dict[str, Any], summary="The unified context of a customer, or of the session's person by user or anonymous id")
    async def session_context(
        request: Request, who: Caller,
        customer: Annotated[str | None, Query(description="Customer email, domain, id or name.")] = None,
        user_id: Annotated[str | None, Query(description="The application's user id of the session "
                                             "(instead of customer).")] = None,
        anonymous_id: Annotated[str | None, Query(description="The Segment anonymous id of the session "
                                                  "(instead of customer).")] = None,
        slices: Annotated[list[str] | None, Query(description="Slices or sources to read; default: all.")] = None,
        fresh: Annotated[bool, Query(description="Read every slice from its source, not from memory.")] = False,
    ) -> Response:
        """The same as ``/v1/customers/{ref}/context``, for exactly one of ``customer``, ``user_id``
        (``user:<id>``) or ``anonymous_id`` (``anon:<id>``): an application fetches its user's context
        with the session's ids. A person the caller may not see is ``customer_not_found``, as a missing one."""
        def work(s: ContextService) -> Response:
            return json_response(reference_view(s.context(session_reference(customer, user_id, anonymous_id), slices,
                                                          fresh=fresh, principal=who)))

        return await run_service(request, work)

    @app.post("/v1/triage", tags=["workflows"], responses=WORKFLOW_RESPONSES,
              summary="Triage a ticket: category, priority, team, SLA, sentiment, injection flag, evidence")
    async def triage(request: Request, who: Caller, body: TriageRequest) -> dict[str, Any]:
        def work(s: ContextService) -> dict[str, Any]:
            fields = body.ticket.model_dump(exclude_unset=True) if body.ticket else None
            ticket = ticket_input(s.settings, body.ticket_id, fields)
            customer = body.customer
            if body.user_id is not None or body.anonymous_id is not None:
                customer = session_reference(body.customer, body.user_id, body.anonymous_id)
            return s.triage(ticket, customer, principal=who)

        return await run_service(request, work)

    @app.post("/v1/reviews", tags=["workflows"], responses=WORKFLOW_RESPONSES,
              summary="One account review: markdown in the skill's structure plus the same as JSON")
    async def reviews(request: Request, who: Caller, body: ReviewRequest) -> dict[str, Any]:
        return await run_service(request, lambda s: s.review(body.customer, principal=who))

    @app.post("/v1/events", tags=["refresh"], responses={
        **BODY_RESPONSES, 501: {"model": ErrorBody},
        403: {"model": ErrorBody, "description": "The key's role may not trigger a refresh (the access policy's "
                                                 "`refresh` permission), or is not defined by the policy."}},
              summary="A source event for one customer (e.g. ticket.created): refresh its long-term memory "
                      "(needs the refresh permission; audited as the caller)")
    async def events(request: Request, who: Caller, body: EventRequest) -> dict[str, Any]:
        return await run_service(request, lambda s: s.event(body.kind, body.customer, principal=who))

    @app.get("/v1/sources", tags=["ops"], responses=ERROR_RESPONSES,
             summary="Health of every source: connected, reachable, latency, rows, newest row, breaker")
    async def sources(request: Request, who: Caller) -> list[dict[str, Any]]:
        return await run_service(request, lambda s: s.sources())

    @app.get("/v1/customers", tags=["book"], responses=ERROR_RESPONSES,
             summary="The book: accounts by risk, tier, owner, health, renewal window; as the caller may see them")
    async def customers(
        request: Request, who: Caller,
        risk: Annotated[str | None, Query(description="A risk: an account risk indicator (e.g. billing_issue) or a relationship risk (e.g. champion_cold).")] = None,
        tier: Annotated[str | None, Query(description="enterprise, mid_market or self_serve.")] = None,
        owner: Annotated[str | None, Query(description="A CRM owner, e.g. dana.scully.")] = None,
        health: Annotated[str | None, Query(description="healthy, needs attention, at risk or churned.")] = None,
        renewal_within: Annotated[str | None, Query(description="Renewing within, e.g. 30d or 2w.")] = None,
        sort: Annotated[str, Query(description="churn, renewal, name or mrr.")] = "churn",
        limit: Annotated[int, Query(ge=1, le=1000, description="At most this many accounts.")] = 100,
    ) -> dict[str, Any]:
        """The materialised traits of the book (``customers``), row-filtered and masked for the caller's
        role; every listing is audited."""
        return await run_service(request, lambda s: s.find_customers(
            risk=risk, tier=tier, owner=owner, health=health, renewal_within=renewal_within, sort=sort,
            limit=limit, principal=who))

    app.include_router(webhook_router)  # POST /v1/webhooks/{system}: signed, no API key
    app.include_router(facts_router(key_principal, run_service, BODY_RESPONSES))  # /v1/customers/{ref}/facts
    install_web_console(app)  # the web console under /web (docs/WEB.md): same keys, same service
    return app


def serve(host: str = "127.0.0.1", port: int = 8000, settings: Settings | None = None,
          log_level: str = "info", *, workers: int = 1, access_log: bool = True) -> None:
    """Run the API with uvicorn until the process is stopped.

    ``workers``: server processes sharing the port (uvicorn's supervisor), each with its own
    Runner; more than one reads the settings from the environment (``settings`` must be None).
    ``access_log``: uvicorn's line per request (the audit log records every data read either way).
    """
    import uvicorn

    if workers > 1 and settings is not None:
        raise ValueError("several workers read their settings from the environment: pass settings=None")
    checked = settings or Settings()
    keys = load_api_keys(checked.api_keys_file, checked.tenant)  # a bad key file fails before the port opens
    for role in keys.roles():
        check_role(checked, role)
    if workers > 1:  # each worker process builds its app from the environment (an import string)
        from tools.sources.registry import dispose_engines

        ContextService(checked).close()  # seeded, indexed, tables made: once, before the workers race to
        dispose_engines()
        uvicorn.run("agent.interfaces.http:served_app", factory=True, workers=workers, host=host, port=port,
                    log_level=log_level, access_log=access_log)
    else:
        uvicorn.run(create_app(checked, freeze_heap=True), host=host, port=port, log_level=log_level,
                    access_log=access_log)


def served_app() -> FastAPI:
    """The app of one worker process of ``custctx serve api --workers N`` (settings from the environment)."""
    return create_app(freeze_heap=True)
