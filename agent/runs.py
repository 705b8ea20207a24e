"""Running the graphs for an application: one place that opens long-term memory (the
Store) and conversation state (the checkpointer) and invokes a workflow. The CLI, the
MCP server and the HTTP API all call these."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack, nullcontext
from typing import TYPE_CHECKING, Any

from langchain_core.messages import HumanMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.store.base import BaseStore

from agent.checkpoint import open_checkpointer
from agent.graphs import assistant, review, triage
from agent.graphs.nodes import NO_CUSTOMER_GIVEN, THREAD_NOT_CONTINUED
from agent.graphs.triage import ticket_customer
from agent.run_context import RunContext, RunServices, bound, services
from agent.threads import ThreadLocks, roll_back_interrupted_turns
from tools.access.gate import FORBIDDEN_TEMPLATE
from tools.access.policy import Refused
from tools.access.principal import Principal, default_principal
from tools.context.assembly import CustomerContext, assemble_context, expand_slices
from tools.context.read import resolve, visible
from tools.context.scope import ReadScope, default_guard
from tools.context.shared import will_read
from tools.identity import AmbiguousCustomer, BadReference, CustomerNotFound, IdentityIndex
from tools.memory import ContextMemory, open_store
from tools.settings import Settings
from tools.sources.base import CustomerRef, ReadClock
from tools.sources.tickets import TicketInput, TicketNotFound, get_ticket, open_tickets

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from tools.refresh.jobs import RefreshReport


def new_thread_id() -> str:
    return "t-" + uuid.uuid4().hex[:12]


TICKETS = "support.tickets"
#: What a missing ticket's owner is looked up as: a support organization no customer has.
NO_TICKET = TicketInput(requester_email="nobody@no-ticket.invalid", organization_id="-")


def _may_read_tickets(scope: ReadScope) -> None:
    """A support-source ticket is a ``support.tickets`` record: refused, before anything is read, to a
    role the policy denies that slice (its subject and text would reach the triage's output)."""
    if scope.access is not None and not scope.access.allows(TICKETS):
        raise Refused(FORBIDDEN_TEMPLATE.format(role=scope.access.role.name, slice=TICKETS))


class Runner:
    """The three workflows compiled on this process's store and checkpointer."""

    def __init__(self, settings: Settings | None = None, *, store: BaseStore | None = None,
                 checkpointer: BaseCheckpointSaver | None = None, principal: Principal | None = None):
        self.settings = settings or Settings()
        # Runs that name no principal run as this one: CUSTCTX_ROLE / CUSTCTX_USER, else the
        # local operator as admin (an embedding process holds every credential anyway). Servers
        # pass the principal of each request.
        self.principal = principal or default_principal(self.settings, "runner")
        self._stack = ExitStack()
        # seed / index before the first run, once; kept so that a request does not look the
        # process's services up again (that serialises the settings each time)
        self._ready = services(self.settings)
        self.store = store or self._stack.enter_context(open_store(self.settings.state_db_url))
        self.checkpointer = checkpointer or self._stack.enter_context(open_checkpointer(self.settings.state_db_url))
        self._memory: ContextMemory | None = None
        self._guard = default_guard(self.settings)  # the process's guard of these settings, looked up once
        self.threads = ThreadLocks(self.settings.state_db_url)  # one writer per conversation thread
        self.assistant = assistant.builder().compile(checkpointer=self.checkpointer, store=self.store)
        self.triage_graph = triage.builder().compile(store=self.store)
        self.review_graph = review.builder().compile(store=self.store)

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def request(self, principal: Principal | None = None, *, fresh: bool = False) -> ReadScope:
        """The read scope of one request by ``principal`` (default: the runner's): its access gate,
        this tenant's memory, the process's guard and clock. Build one per request and pass it
        to every call of that request, so the customer is resolved and judged once.

        Raises:
            UnknownRole: the policy does not define the principal's role.
        """
        return ReadScope.build(self.settings, self.clock, principal=principal or self.principal,
                               memory=self.memory(), index=self.index, guard=self._guard, prefer_memory=not fresh)

    def _run(self, graph: Any, inp: dict[str, Any], config: dict[str, Any] | None, scope: ReadScope | None,
             principal: Principal | None, fresh: bool, model: str | None, chat_model: BaseChatModel | None,
             max_plan_steps: int | None) -> dict[str, Any]:
        scope = scope or self.request(principal, fresh=fresh)
        rc = RunContext(model=model, max_plan_steps=max_plan_steps, fresh=fresh)
        with bound(rc, RunServices(scope=scope, chat_model=chat_model)):
            # Checkpoint when the turn ends, not after every step: the steps in between hold the
            # slices the model was shown, which must never reach the conversation's storage.
            out: dict[str, Any] = graph.invoke(inp, config, context=rc,
                                               durability="exit" if graph.checkpointer else None)
        return out

    def ask(self, question: str, customer: str | None = None, thread_id: str | None = None, *,
            scope: ReadScope | None = None, principal: Principal | None = None, fresh: bool = False,
            model: str | None = None, chat_model: BaseChatModel | None = None,
            max_plan_steps: int | None = None) -> dict[str, Any]:
        """One assistant turn. A thread keeps its customer: later turns need no ``customer``.

        Raises:
            ThreadBusy: another process's turn on ``thread_id`` did not end within the wait.
        """
        thread_id = thread_id or new_thread_id()
        inp: dict[str, Any] = {"messages": [HumanMessage(question)]}
        if customer:
            inp["customer"] = customer
        scope = scope or self.request(principal, fresh=fresh)
        with self.threads.hold(thread_id):  # waits for another process's turn, else ThreadBusy
            roll_back_interrupted_turns(self.assistant, thread_id)  # a turn a dead process left half-done
            if refused := self.thread_refusal(thread_id, customer, scope):  # nothing written to the thread
                return {"thread_id": thread_id, "error": refused}
            config = {"configurable": {"thread_id": thread_id},
                      "recursion_limit": assistant.recursion_limit(self.settings, max_plan_steps)}
            out = self._run(self.assistant, inp, config, scope, principal, fresh, model, chat_model, max_plan_steps)
        return {**(out.get("result") or {}), "thread_id": thread_id, "error": out.get("error")}

    def thread_customer(self, thread_id: str, scope: ReadScope | None = None) -> str | None:
        """The customer a conversation thread is about (None: no such thread yet). With a request's
        ``scope``, None too for a thread whose customer that principal may not see: for it the
        thread does not exist (its customer is never named)."""
        values = self._thread_values(thread_id)
        kept = values.get("customer_id")
        if scope is not None and kept and not self._sees(scope, kept):
            return None
        return values.get("customer_name")

    def _thread_values(self, thread_id: str) -> dict[str, Any]:
        snap = self.assistant.get_state({"configurable": {"thread_id": thread_id}})
        return dict(snap.values) if snap and snap.values else {}

    def _sees(self, scope: ReadScope, customer_id: str) -> bool:
        customer = self.index.get(customer_id)
        return customer is not None and visible(scope, customer)

    def thread_refusal(self, thread_id: str, customer: str | None, scope: ReadScope) -> str | None:
        """Why a turn on a thread whose customer the scope's principal may not see is refused before
        the graph runs (so nothing is added to that thread), else None. Without ``customer`` the error
        is a new thread's ("no customer given"); with one, that customer's own error, else a refusal
        that names nothing of the thread."""
        kept = self._thread_values(thread_id).get("customer_id")
        if not kept or self._sees(scope, kept):
            return None
        if not customer:
            return NO_CUSTOMER_GIVEN
        try:
            resolve(scope, customer)
        except (AmbiguousCustomer, CustomerNotFound, BadReference) as exc:
            return str(exc)
        return THREAD_NOT_CONTINUED

    # ------------------------------------------------------------- refresh
    def event(self, kind: str, ref: str, *, scope: ReadScope | None = None,
              principal: Principal | None = None) -> tuple[CustomerRef, RefreshReport]:
        """A source event (``ticket.created``, ...) for one customer, refreshed as ``principal``: its role
        needs the access policy's ``refresh`` permission (``Refused`` before anything is resolved), the
        customer is resolved as it may see customers, and the refresh reads — and is audited — as it,
        into its tenant's memory.

        Raises:
            Refused; ValueError for an unknown event kind; the identity errors of ``ref``.
        """
        from tools.refresh.jobs import event_slices, refresh_event

        scope = scope or self.request(principal)
        if scope.access is not None:
            scope.access.role.require_refresh()
        event_slices(kind)
        customer, _ = resolve(scope, ref)
        report = refresh_event(self.settings, scope.memory or self.memory(), kind, customer.customer_id,
                               caller=scope.principal)
        return customer, report

    # ------------------------------------------------------------- tickets
    def ticket(self, ticket_id: str, customer: str | None = None, *, scope: ReadScope | None = None,
               principal: Principal | None = None) -> TicketInput:
        """A support-source ticket by id, as ``principal`` may see it: the ticket's customer (its
        requester's) is resolved and row-checked in the request's scope before anything of the ticket
        is returned. A missing ticket, one whose customer the principal may not see and one of another
        customer than ``customer`` all raise the same ``TicketNotFound`` after the same work (a missing
        ticket pays the row check a hidden one pays). A stored ticket is a ``support.tickets``
        record: a role the policy denies that slice may not look tickets up at all.

        Raises:
            Refused (the role may not read support.tickets), TicketNotFound, TicketSourceUnavailable;
            the identity errors of ``customer``.
        """
        scope = scope or self.request(principal)
        _may_read_tickets(scope)
        named = resolve(scope, customer)[0].customer_id if customer else None
        try:
            ticket = get_ticket(self.settings, ticket_id)
        except TicketNotFound:
            ticket_customer(scope, NO_TICKET)  # the owner lookup and row check a hidden ticket pays
            raise
        owner = ticket_customer(scope, ticket)
        if owner is None or (named is not None and owner[1].customer_id != named):
            raise TicketNotFound(ticket.id or str(ticket_id))
        return ticket

    def open_tickets(self, limit: int | None = None, customer: str | None = None, *,
                     scope: ReadScope | None = None, principal: Principal | None = None) -> Iterator[TicketInput]:
        """Tickets waiting for triage (oldest first) that ``principal`` may see — with ``customer``, only
        that customer's; ``limit`` counts the tickets returned. A ticket whose customer the principal may
        not see is left out, never named. The query runs at once (``TicketSourceUnavailable`` here).

        Raises:
            Refused (the role may not read support.tickets), TicketSourceUnavailable; the identity
            errors of ``customer``.
        """
        scope = scope or self.request(principal)
        _may_read_tickets(scope)
        named = resolve(scope, customer)[0].customer_id if customer else None
        stream = open_tickets(self.settings)

        def visible_only() -> Iterator[TicketInput]:
            shown = 0
            try:
                for ticket in stream:
                    if limit is not None and shown >= limit:
                        return
                    owner = ticket_customer(scope, ticket)
                    if owner is not None and named in (None, owner[1].customer_id):
                        shown += 1
                        yield ticket
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()

        return visible_only()

    def triage(self, ticket: dict[str, Any], customer: str | None = None, *, scope: ReadScope | None = None,
               principal: Principal | None = None, model: str | None = None,
               chat_model: BaseChatModel | None = None) -> dict[str, Any]:
        inp: dict[str, Any] = {"ticket": ticket}
        if customer:
            inp["customer"] = customer
        out = self._run(self.triage_graph, inp, None, scope, principal, False, model, chat_model, None)
        return {**(out.get("result") or {}), "error": out.get("error")}

    def review(self, customer: str, *, scope: ReadScope | None = None, principal: Principal | None = None,
               model: str | None = None, chat_model: BaseChatModel | None = None) -> dict[str, Any]:
        out = self._run(self.review_graph, {"customer": customer}, None, scope, principal, False, model,
                        chat_model, None)
        return {**(out.get("result") or {}), "error": out.get("error")}

    def customer_context(self, ref: str, slices: list[str] | None = None, *, fresh: bool = False,
                         principal: Principal | None = None, scope: ReadScope | None = None) -> CustomerContext:
        """One customer's unified context (the ``get_customer_context`` read) for ``principal``:
        resolve as it may see customers, then read the slices through long-term memory, the
        guard and its access policy. Raises the identity errors (a hidden customer is not found)."""
        scope = scope or self.request(principal, fresh=fresh)
        names = expand_slices(slices)
        if not fresh:
            will_read(scope, names)  # the row check reads their snapshots with its own: one query
        # One audit transaction for the whole read: the row check made while resolving and the
        # slices' records are appended together when the batch ends — before the context is
        # returned, and in its ``finally`` also when resolving or reading fails.
        with scope.access.batch() if scope.access is not None else nullcontext():
            customer, matched_by = resolve(scope, ref)
            return assemble_context(scope, customer, names, matched_by=matched_by)

    @property
    def index(self) -> IdentityIndex:
        """The process's identity index for these settings."""
        return self._ready.index

    @property
    def clock(self) -> ReadClock:
        """The read clock every read of this runner uses."""
        return self._ready.clock

    def memory(self) -> ContextMemory:
        """Long-term memory on the runner's store, one for the runner's life: its sources'
        configuration fingerprints are worked out once (the process reads the mappings it
        loaded), not on every request."""
        if self._memory is None:
            self._memory = ContextMemory.of(self.store, self.settings)
        return self._memory

    def resolve(self, ref: str, principal: Principal | None = None) -> tuple[CustomerRef, str]:
        """Resolve a customer reference as ``principal`` may, in a request of its own: a customer
        its row filter hides raises the same CustomerNotFound as a missing one."""
        return resolve(self.request(principal), ref)
