"""Running the graphs for an application: one place that opens long-term memory (the
Store) and conversation state (the checkpointer) and invokes a workflow. The CLI, the
MCP server and the HTTP API all call these."""

from __future__ import annotations

import uuid
from contextlib import ExitStack
from typing import Any

from langchain_core.messages import HumanMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.store.base import BaseStore

from agent.checkpoint import open_checkpointer
from agent.graphs import assistant, review, triage
from agent.run_context import RunContext, services
from tools.access.gate import Access, read_customer_context, resolve_visible
from tools.access.principal import Principal, default_principal
from tools.context.assembly import CustomerContext, expand_slices
from tools.identity import IdentityIndex
from tools.memory import ContextMemory, open_store
from tools.settings import Settings
from tools.sources.base import CustomerRef, ReadContext


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
        self.assistant = assistant.builder().compile(checkpointer=self.checkpointer, store=self.store)
        self.triage_graph = triage.builder().compile(store=self.store)
        self.review_graph = review.builder().compile(store=self.store)

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def context(self, **kw: Any) -> RunContext:
        kw["principal"] = kw.get("principal") or self.principal
        return RunContext(settings=self.settings, **kw)

    def access(self, principal: Principal | None = None) -> Access:
        """The access gate of ``principal`` (default: the runner's); raises UnknownRole."""
        return Access.for_principal(self.settings, principal or self.principal)

    def ask(self, question: str, customer: str | None = None, thread_id: str | None = None, **kw: Any) -> dict:
        """One assistant turn. A thread keeps its customer: later turns need no ``customer``."""
        thread_id = thread_id or new_thread_id()
        inp: dict[str, Any] = {"messages": [HumanMessage(question)]}
        if customer:
            inp["customer"] = customer
        out = self.assistant.invoke(inp, {"configurable": {"thread_id": thread_id}}, context=self.context(**kw))
        return {**(out.get("result") or {}), "thread_id": thread_id, "error": out.get("error")}

    def thread_customer(self, thread_id: str) -> str | None:
        """The customer a conversation thread is about (None: no such thread yet)."""
        snap = self.assistant.get_state({"configurable": {"thread_id": thread_id}})
        return snap.values.get("customer_name") if snap and snap.values else None

    def triage(self, ticket: dict[str, Any], customer: str | None = None, **kw: Any) -> dict:
        inp: dict[str, Any] = {"ticket": ticket}
        if customer:
            inp["customer"] = customer
        out = self.triage_graph.invoke(inp, context=self.context(**kw))
        return {**(out.get("result") or {}), "error": out.get("error")}

    def customer_context(self, ref: str, slices: list[str] | None = None, *, fresh: bool = False,
                         principal: Any = None) -> CustomerContext:
        """One customer's unified context (the ``get_customer_context`` read) for ``principal``:
        resolve as it may see customers, then read the slices through long-term memory, the
        guard and its access policy. Raises the identity errors (a hidden customer is not found)."""
        return read_customer_context(self.settings, self.index, self.read_context, ref, expand_slices(slices),
                                     self.access(principal), memory=self.memory(), prefer_memory=not fresh)

    @property
    def index(self) -> IdentityIndex:
        """The process's identity index for these settings."""
        return services(self.settings).index

    @property
    def read_context(self) -> ReadContext:
        """The read context (as-of clock) every read of this runner uses."""
        return services(self.settings).ctx

    def memory(self) -> ContextMemory:
        return ContextMemory(self.store, self.settings.tenant, self.settings.ttls)

    def resolve(self, ref: str, principal: Principal | None = None) -> tuple[CustomerRef, str]:
        """Resolve a customer reference as ``principal`` may: a customer its row filter hides
        raises the same CustomerNotFound as a missing one."""
        return resolve_visible(self.index, ref, self.settings, self.read_context, self.access(principal),
                               memory=self.memory())

    def review(self, customer: str, **kw: Any) -> dict:
        out = self.review_graph.invoke({"customer": customer}, context=self.context(**kw))
        return {**(out.get("result") or {}), "error": out.get("error")}
