"""Running the graphs for an application: one place that opens long-term memory (the
Store) and conversation state (the checkpointer) and invokes a workflow. The CLI, the
MCP server and the HTTP API all call these."""

from __future__ import annotations

import uuid
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from langchain_core.messages import HumanMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.store.base import BaseStore

from agent.checkpoint import open_checkpointer
from agent.graphs import assistant, review, triage
from agent.run_context import RunContext, RunServices, bound, services
from agent.threads import ThreadLocks, roll_back_interrupted_turns
from tools.access.principal import Principal, default_principal
from tools.context.assembly import CustomerContext, assemble_context, expand_slices
from tools.context.read import resolve
from tools.context.scope import ReadScope
from tools.identity import IdentityIndex
from tools.memory import ContextMemory, open_store
from tools.settings import Settings
from tools.sources.base import CustomerRef, ReadClock

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel


def new_thread_id() -> str:
    return "t-" + uuid.uuid4().hex[:12]


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
        services(self.settings)  # seed / index before the first run, once
        self.store = store or self._stack.enter_context(open_store(self.settings.state_db_url))
        self.checkpointer = checkpointer or self._stack.enter_context(open_checkpointer(self.settings.state_db_url))
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
                               memory=self.memory(), index=self.index, prefer_memory=not fresh)

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
        with self.threads.hold(thread_id):  # waits for another process's turn, else ThreadBusy
            roll_back_interrupted_turns(self.assistant, thread_id)  # a turn a dead process left half-done
            config = {"configurable": {"thread_id": thread_id},
                      "recursion_limit": assistant.recursion_limit(self.settings, max_plan_steps)}
            out = self._run(self.assistant, inp, config, scope, principal, fresh, model, chat_model, max_plan_steps)
        return {**(out.get("result") or {}), "thread_id": thread_id, "error": out.get("error")}

    def thread_customer(self, thread_id: str) -> str | None:
        """The customer a conversation thread is about (None: no such thread yet)."""
        snap = self.assistant.get_state({"configurable": {"thread_id": thread_id}})
        return snap.values.get("customer_name") if snap and snap.values else None

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
        customer, matched_by = resolve(scope, ref)
        return assemble_context(scope, customer, expand_slices(slices), matched_by=matched_by)

    @property
    def index(self) -> IdentityIndex:
        """The process's identity index for these settings."""
        return services(self.settings).index

    @property
    def clock(self) -> ReadClock:
        """The read clock every read of this runner uses."""
        return services(self.settings).clock

    def memory(self) -> ContextMemory:
        return ContextMemory.of(self.store, self.settings)

    def resolve(self, ref: str, principal: Principal | None = None) -> tuple[CustomerRef, str]:
        """Resolve a customer reference as ``principal`` may, in a request of its own: a customer
        its row filter hides raises the same CustomerNotFound as a missing one."""
        return resolve(self.request(principal), ref)
