"""What the MCP server and the HTTP API share: one Runner behind an admission limit.

Both interfaces are thin: they parse their input, call :class:`ContextService` (which
calls the same Runner and tools the CLI uses) and format the output. Errors are typed
here once — identity errors, unknown slices, bad input, a workflow that could not run —
and each interface turns them into its own kind of error (an MCP tool error, an HTTP
status).

Concurrency: every call takes one of ``serve_max_concurrency`` slots before it touches
the Runner, so a burst of requests queues *here*, before any source call starts its
deadline, instead of inside the source guard (whose per-source bound would otherwise
burn the waiting calls' deadlines and open circuit breakers under load).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, TypeVar

from pydantic import ValidationError

from agent.runs import Runner
from tools.access.principal import Principal
from tools.context.assembly import CustomerContext
from tools.context.read import resolve
from tools.context.scope import ReadScope, default_guard
from tools.identity import is_email
from tools.memory import ContextMemory
from tools.settings import Settings
from tools.slices import SLICE_NAMES
from tools.sources.base import CustomerRef
from tools.sources.health import check_sources
from tools.sources.tickets import TicketInput, get_ticket

T = TypeVar("T")

HISTORY_SLICES: tuple[str, ...] = (
    "crm.activities", "support.tickets", "email.threads", "calendar.meetings", "chat.mentions",
    "calls.highlights",
)
"""Left out by ``include_history=false``: the detailed history (tickets, activities, email,
meetings, chat, calls). The support *summary* (open / total tickets, resolution time, CSAT)
stays, so the reference ``support`` block is always filled."""

QUICK_SLICES: tuple[str, ...] = tuple(n for n in SLICE_NAMES if n not in HISTORY_SLICES)


class ConfigError(ValueError):
    """A server cannot start with this configuration; the message says what to fix."""


class InvalidRequest(ValueError):
    """The caller's input cannot be used; the message says what to change."""


class WorkflowFailed(RuntimeError):
    """A workflow ran but could not produce a result (e.g. the ticket names no known customer)."""


class NotAvailable(RuntimeError):
    """A capability this build does not have yet (the message names it)."""


def mcp_principal(settings: Settings) -> Principal:
    """The MCP server's principal: from configuration (``CUSTCTX_MCP__ROLE`` / ``__USER``)."""
    return Principal(tenant=settings.tenant, user=settings.mcp.user, role=settings.mcp.role, interface="mcp")


def policy_errors() -> tuple[type[Exception], ...]:
    """The access policy's error for a role it does not define (none before the policy exists)."""
    try:
        from tools.access.policy import UnknownRole
    except ImportError:
        return ()
    return (UnknownRole,)


def check_role(settings: Settings, role: str) -> None:
    """Fail at start-up, not on every call, when the access policy does not define ``role``.

    Raises:
        ConfigError: the role is unknown or the policy file cannot be used.
    """
    try:
        from tools.access.policy import PolicyError, load_policy
    except ImportError:
        return
    policy = getattr(settings, "policy", None)
    try:
        load_policy(str(policy) if policy else None).role(role)
    except PolicyError as exc:
        raise ConfigError(str(exc)) from None


def ticket_input(settings: Settings, ticket_id: str | None, fields: dict[str, Any] | None) -> TicketInput:
    """A ticket from the support source by id, or from the given fields (subject, description, ...).

    Raises:
        InvalidRequest: neither or both given, or the fields are not a usable ticket.
        TicketNotFound / TicketSourceUnavailable: from the support source.
    """
    fields = {k: v for k, v in (fields or {}).items() if v is not None}
    if (ticket_id is None) == (not fields):
        raise InvalidRequest("give either a ticket id, or the ticket itself (subject and/or description, "
                             "requester_email), not both")
    if ticket_id is not None:
        return get_ticket(settings, ticket_id)
    try:
        ticket = TicketInput.model_validate(fields)
    except ValidationError as exc:
        raise InvalidRequest("; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'ticket'}: {e['msg']}"
                                       for e in exc.errors())) from None
    if not ticket.subject.strip() and not ticket.description.strip():
        raise InvalidRequest("the ticket needs a subject or a description")
    if ticket.requester_email is not None and not is_email(ticket.requester_email):
        raise InvalidRequest(f"requester_email {ticket.requester_email!r} is not an email address")
    return ticket


class ContextService:
    """One Runner (long-term memory, checkpointer, graphs) shared by every request of a server."""

    def __init__(self, settings: Settings | None = None, runner: Runner | None = None):
        self.runner = runner or Runner(settings)
        self.settings = self.runner.settings
        self.max_concurrency = self.settings.serve_max_concurrency
        self._slots = threading.BoundedSemaphore(self.max_concurrency)

    def close(self) -> None:
        self.runner.close()

    @contextmanager
    def _slot(self) -> Iterator[None]:
        with self._slots:
            yield

    def _run(self, fn: Callable[[], T]) -> T:
        with self._slot():
            return fn()

    # ----------------------------------------------------------------- reads
    def resolve(self, ref: str, principal: Principal | None = None,
                scope: ReadScope | None = None) -> tuple[CustomerRef, str]:
        """Resolve a customer reference as ``principal`` may see customers (in ``scope``, the
        request's, when given); raises the identity errors (not found — also for a customer
        its row filter hides —, ambiguous, bad)."""
        ref = (ref or "").strip()
        if not ref:
            raise InvalidRequest("name a customer: an email, a domain, an id (e.g. crm:1001) or a name")
        return resolve(scope or self.runner.request(principal), ref)

    def request(self, principal: Principal | None = None, *, fresh: bool = False) -> ReadScope:
        """The read scope of one request by ``principal`` (raises ``UnknownRole``)."""
        return self.runner.request(principal, fresh=fresh)

    def context(self, ref: str, slices: list[str] | None = None, *, fresh: bool = False,
                principal: Principal | None = None, scope: ReadScope | None = None) -> CustomerContext:
        """One customer's unified context (raises identity errors and ``UnknownSlice``)."""
        if not (ref or "").strip():
            raise InvalidRequest("name a customer: an email, a domain, an id (e.g. crm:1001) or a name")
        return self._run(lambda: self.runner.customer_context(ref, slices, fresh=fresh, principal=principal,
                                                              scope=scope))

    def sources(self) -> list[dict[str, Any]]:
        """Health of every source (connected, reachable, latency, newest row, breaker)."""
        report = self._run(lambda: check_sources(self.settings, default_guard(self.settings)))
        return [h.model_dump(mode="json") for h in report]

    # ------------------------------------------------------------- workflows
    def triage(self, ticket: TicketInput, customer: str | None = None, *,
               principal: Principal | None = None) -> dict[str, Any]:
        """Triage one ticket; the customer is the one given, else the requester's."""
        scope = self.runner.request(principal)
        if customer:
            self.resolve(customer, scope=scope)  # the graph's resolution is this one (same request)
        result = self._run(lambda: self.runner.triage(ticket.model_dump(mode="json"), customer, scope=scope))
        if result.get("error"):
            raise WorkflowFailed(result["error"])
        return {k: v for k, v in result.items() if k != "error"}

    def review(self, ref: str, *, principal: Principal | None = None) -> dict[str, Any]:
        """One account review: markdown in the skill's structure plus the same as JSON."""
        scope = self.runner.request(principal)
        customer, _ = self.resolve(ref, scope=scope)
        result = self._run(lambda: self.runner.review(ref.strip(), scope=scope))
        if result.get("error"):
            raise WorkflowFailed(result["error"])
        return {"customer_id": customer.customer_id, "name": customer.name,
                **{k: v for k, v in result.items() if k != "error"}}

    def event(self, kind: str, ref: str, *, principal: Principal | None = None) -> dict[str, Any]:
        """Apply a source event (e.g. ``ticket.created``) to one customer's long-term memory."""
        customer, _ = self.resolve(ref, principal)
        try:
            from tools.refresh.jobs import refresh_event
        except ImportError as exc:
            raise NotAvailable(f"event-driven refresh is not available in this build ({exc})") from None
        memory = ContextMemory(self.runner.store, self.settings.tenant, self.settings.ttls)
        try:
            report = self._run(lambda: refresh_event(self.settings, memory, kind, customer.customer_id))
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        return {"kind": kind, "customer_id": customer.customer_id, "name": customer.name, **asdict(report)}
