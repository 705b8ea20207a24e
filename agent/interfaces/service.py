"""What the MCP server and the HTTP API share: one Runner behind an admission limit.

Both interfaces are thin: they parse their input, call :class:`ContextService` (which
calls the same Runner and tools the CLI uses) and format the output. Errors are typed
here once (``agent.interfaces.checks``, re-exported here) — identity errors, unknown slices, bad input, a
workflow that could not run; a chat model that gave no answer is ``agent.models.ModelError`` — and each
interface turns them into its own kind of error (an MCP tool error, an HTTP status: 502 for the model). The
API key file (:func:`load_api_keys`, in ``checks`` too): the HTTP API and the
authentication of LangGraph's server (``langgraph_auth``) read the same file.

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

from agent.interfaces.checks import (
    ApiKeyFileError,
    ApiKeys,
    ConfigError,
    InvalidRequest,
    NotAvailable,
    WorkflowFailed,
    check_role,
    key_digest,
    load_api_keys,
    mcp_principal,
    policy_errors,
    session_reference,
    ticket_input,
)
from agent.runs import Runner
from tools.access.principal import Principal
from tools.context.assembly import CustomerContext
from tools.context.read import resolve
from tools.context.scope import ReadScope, default_guard
from tools.settings import Settings
from tools.slices import SLICE_NAMES
from tools.sources.base import CustomerRef
from tools.sources.health import check_sources
from tools.sources.registry import default_slices
from tools.sources.tickets import TicketInput

T = TypeVar("T")

__all__ = ["HISTORY_SLICES", "QUICK_SLICES", "ApiKeyFileError", "ApiKeys", "ConfigError", "ContextService",
           "InvalidRequest", "NotAvailable", "WorkflowFailed", "check_role", "key_digest", "load_api_keys",
           "mcp_principal", "policy_errors", "session_reference", "ticket_input"]

HISTORY_SLICES: tuple[str, ...] = (
    "crm.activities", "support.tickets", "email.threads", "calendar.meetings", "chat.mentions",
    "calls.highlights",
)
"""Left out by ``include_history=false``: the detailed history (tickets, activities, email,
meetings, chat, calls). The support *summary* (open / total tickets, resolution time, CSAT)
stays, so the reference ``support`` block is always filled."""

QUICK_SLICES: tuple[str, ...] = tuple(n for n in SLICE_NAMES if n not in HISTORY_SLICES)


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
        if slices is not None and set(slices) == set(QUICK_SLICES):  # the quick context: optional sources if connected
            slices = default_slices(self.settings, slices)
        from tools.facts import with_facts

        read = scope or self.runner.request(principal, fresh=fresh)  # the facts are read in the same scope (gate)
        return self._run(lambda: with_facts(read, self.runner.customer_context(ref, slices, fresh=fresh,
                                                                               principal=principal, scope=read)))

    def sources(self) -> list[dict[str, Any]]:
        """Health of every source (connected, reachable, latency, newest row, breaker)."""
        report = self._run(lambda: check_sources(self.settings, default_guard(self.settings)))
        return [h.model_dump(mode="json") for h in report]

    # ------------------------------------------------------------- workflows
    def triage(self, ticket: TicketInput | str, customer: str | None = None, *,
               principal: Principal | None = None) -> dict[str, Any]:
        """Triage one ticket — given, or a support-source ticket by id — for the customer it belongs to.

        A ticket by id is read as the caller may see it (``Runner.ticket``): its customer is resolved
        and row-checked first; a hidden ticket or one of another customer than ``customer`` raises
        ``TicketNotFound`` like a missing one."""
        scope = self.runner.request(principal)
        if customer:
            self.resolve(customer, scope=scope)  # the graph's resolution is this one (same request)
        if isinstance(ticket, str):
            ticket_id = ticket
            ticket = self._run(lambda: self.runner.ticket(ticket_id, customer, scope=scope))
        given = ticket
        result = self._run(lambda: self.runner.triage(given.model_dump(mode="json"), customer, scope=scope))
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
        """Apply a source event (e.g. ``ticket.created``) to one customer's long-term memory.

        Needs the ``refresh`` permission of the access policy (``Refused`` otherwise, before the
        customer is even resolved); the customer is resolved as the caller may see it, and the
        refresh reads as the caller, into the caller's tenant, audited under the caller
        (``Runner.event``)."""
        scope = self.runner.request(principal)
        if scope.access is not None:
            scope.access.role.require_refresh()
        try:
            from tools.refresh.jobs import event_slices
        except ImportError as exc:
            raise NotAvailable(f"event-driven refresh is not available in this build ({exc})") from None
        try:
            event_slices(kind)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        self.resolve(ref, scope=scope)  # the reference checks every endpoint applies; resolved once per request
        customer, report = self._run(lambda: self.runner.event(kind, ref.strip(), scope=scope))
        return {"kind": kind, "customer_id": customer.customer_id, "name": customer.name, **asdict(report)}

    # ------------------------------------------------------------- the book, webhooks, the worker
    def find_customers(self, *, risk: str | None = None, tier: str | None = None, owner: str | None = None,
                       health: str | None = None, renewal_within: str | None = None, sort: str = "churn",
                       limit: int = 100, principal: Principal | None = None) -> dict[str, Any]:
        """The book as ``principal`` may see it (row filter, masks), filtered and sorted; audited.

        Raises:
            InvalidRequest: an unknown risk, tier, health or sort, a bad renewal window or limit.
        """
        from tools.booktable import (
            BookQuery,
            BookQueryError,
            check_query,
            find_customers,
            parse_within,
        )

        try:
            query = BookQuery(risk=risk, tier=tier, owner=owner, health=health,
                              renewal_within_days=parse_within(renewal_within), sort=sort,  # type: ignore[arg-type]
                              limit=limit)
            check_query(query)
        except BookQueryError as exc:
            raise InvalidRequest(str(exc)) from None
        scope = self.runner.request(principal)
        return self._run(lambda: find_customers(self.settings, query, scope.access).as_dict())

    def webhook(self, system: str, method: str, uri: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        """One signed webhook delivery (Stripe, Zendesk, HubSpot): verified, then the event refresh of
        the customer it names, as the refresh job (raises ``tools.refresh.webhooks.WebhookRefused``)."""
        from urllib.parse import urlsplit

        from tools.refresh.webhooks import handle

        if self.settings.webhooks.public_url:  # behind a proxy: the URI the provider signed is the public one
            u = urlsplit(uri)
            uri = self.settings.webhooks.public_url.rstrip("/") + u.path + (f"?{u.query}" if u.query else "")
        memory = self.runner.memory()
        return self._run(lambda: handle(self.settings, memory, system, method, uri, headers, body))

    def worker_health(self) -> list[dict[str, Any]]:
        """The refresh worker's jobs: status, last run, next run, run and failure counts (no error text)."""
        from tools.refresh.worker import worker_status

        return [j.as_dict(with_error=False) for j in worker_status(self.settings)]

    # ------------------------------------------------------------- the web console (agent/interfaces/web)
    def ask(self, question: str, customer: str | None, thread_id: str, *,
            principal: Principal | None = None) -> dict[str, Any]:
        """One assistant turn on ``thread_id`` as ``principal`` (the Runner's ``ask``; a thread whose
        customer the principal may not see is refused before the graph runs).

        Raises:
            InvalidRequest: no question; ModelError; ThreadBusy.
        """
        if not (question or "").strip():
            raise InvalidRequest("write a question about the customer")
        scope = self.runner.request(principal)
        if customer:
            self.resolve(customer, scope=scope)  # the identity errors, as every endpoint raises them
        return self._run(lambda: self.runner.ask(question.strip(), customer, thread_id, scope=scope))

    def thread_messages(self, thread_id: str, *, principal: Principal | None = None) -> list[tuple[str, str]]:
        """The questions and answers of a conversation thread, ``(role, text)`` oldest first; none for a
        thread whose customer ``principal`` may not see (for it the thread does not exist)."""
        scope = self.runner.request(principal)
        if self.runner.thread_customer(thread_id, scope) is None:
            return []
        snap = self.runner.assistant.get_state({"configurable": {"thread_id": thread_id}})
        out: list[tuple[str, str]] = []
        for m in (snap.values or {}).get("messages", []) if snap else []:
            text = m.content if isinstance(m.content, str) else ""
            if m.type == "human" and text:
                out.append(("user", text))
            elif m.type == "ai" and text and not getattr(m, "tool_calls", None):
                out.append(("assistant", text))
        return out

    def open_tickets(self, limit: int | None = None, *, principal: Principal | None = None) -> list[TicketInput]:
        """Tickets waiting for triage that ``principal`` may see (oldest first, at most ``limit``).

        Raises:
            Refused (the role may not read support.tickets), TicketSourceUnavailable.
        """
        scope = self.runner.request(principal)
        return self._run(lambda: list(self.runner.open_tickets(limit, scope=scope)))

    def may_refresh(self, principal: Principal | None = None) -> bool:
        """Whether ``principal``'s role has the access policy's ``refresh`` permission."""
        scope = self.runner.request(principal)
        return scope.access is None or bool(scope.access.role.refresh)

    def refresh_customer(self, ref: str, *, principal: Principal | None = None) -> CustomerContext:
        """Refresh one customer now — every slice read from its source and written to long-term memory,
        its book row materialised (``tools.refresh.jobs.refresh_customer``), read and audited as the
        caller — and return its context. Needs the ``refresh`` permission (``Refused`` before the
        customer is resolved)."""
        from tools.refresh.jobs import refresh_customer

        scope = self.runner.request(principal)
        if scope.access is not None:
            scope.access.role.require_refresh()
        customer, _ = self.resolve(ref, scope=scope)
        memory = scope.memory or self.runner.memory()
        self._run(lambda: refresh_customer(self.settings, memory, customer.customer_id, caller=scope.principal))
        return self.context(customer.customer_id, None, principal=principal)

    # ------------------------------------------------------------ user facts (tools/facts.py)
    def note(self, ref: str, text: str, *, principal: Principal | None = None) -> dict[str, Any]:
        """Keep a fact the caller supplies about a customer (provenance ``user``: who, when), audited.
        Raises the identity errors (a hidden customer is not found) and ``InvalidRequest`` for bad text."""
        from tools.facts import FactError, record_fact

        scope = self.runner.request(principal)
        customer, _ = self.resolve(ref, scope=scope)
        try:
            fact = self._run(lambda: record_fact(scope, customer.customer_id, text))
        except FactError as exc:
            raise InvalidRequest(str(exc)) from None
        return {"customer_id": customer.customer_id, "customer": customer.name, "fact": fact.model_dump(mode="json")}

    def facts(self, ref: str, *, principal: Principal | None = None) -> dict[str, Any]:
        """The facts users supplied about a customer, oldest first (read through the gate, audited)."""
        from tools.facts import user_facts

        scope = self.runner.request(principal)
        customer, _ = self.resolve(ref, scope=scope)
        facts = self._run(lambda: user_facts(scope, customer.customer_id))
        return {"customer_id": customer.customer_id, "customer": customer.name,
                "facts": [f.model_dump(mode="json") for f in facts]}
