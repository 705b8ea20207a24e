"""Run settings of the graphs (LangGraph's ``context_schema``) and the live objects of a run.

:class:`RunContext` is plain, frozen and serialisable — what a LangGraph client or Studio
sees and may send. Precedence: a value passed for the run > the environment
(``Settings``, ``CUSTCTX_*``) > the default.

The live objects a run reads with — the request's :class:`~tools.context.scope.ReadScope`
(access gate, memory, guard, clock, identity index), the chat model, the slices its
fetches admitted — are :class:`RunServices`, never part of the context. An application
(``agent.runs.Runner``) builds them once per request and binds them to the run's context
object for the run's duration (:func:`bound`); a graph served by LangGraph's server gets
them built on first use from the context and the graph's store. Nodes reach them through
:func:`run_services`.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.bootstrap import Ready, ready
from tools.access.principal import BadPrincipal, Principal, default_principal
from tools.context.scope import ReadScope
from tools.memory import ContextMemory
from tools.settings import Settings
from tools.slices import Slice

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel
    from langgraph.runtime import Runtime
    from langgraph.store.base import BaseStore


@dataclass(kw_only=True, frozen=True, eq=False)
class RunContext:
    """What one run of a graph is configured with: plain values a caller may choose.

    Nothing here says who is asking or which product settings apply — those come from the
    application (the principal and settings of the request's read scope) or, for a graph
    served by LangGraph's server, from the server's own environment: a client cannot raise
    its own privileges through the run context.
    """

    model: str | None = field(default=None, metadata={
        "description": 'Chat model: "offline" or an OpenAI-compatible model name; unset: CUSTCTX_MODEL.'})
    max_plan_steps: int | None = field(default=None, metadata={
        "description": "Tool-call planning rounds allowed per question; unset: CUSTCTX_MAX_PLAN_STEPS."})
    fresh: bool = field(default=False, metadata={
        "description": "Read every slice from its source, not from long-term memory."})


@dataclass
class RunServices:
    """The live objects of one run: built once per request, shared by the run's nodes."""

    scope: ReadScope
    chat_model: BaseChatModel | None = None
    # The slices this run's fetches admitted (masked for the principal, audited), by (customer
    # id, slice name): the answer is written from them without reading memory again. A run
    # resumed in another process finds none and reads its references back from memory.
    admitted: dict[tuple[str, str], Slice] = field(default_factory=dict)
    # What the model was shown for each tool call of this run, by tool call id. The graph
    # state keeps references in those tool messages; the data never reaches the checkpointer.
    shown: dict[str, str] = field(default_factory=dict)


_ready: dict[str, Ready] = {}
_ready_lock = threading.Lock()
_runs: weakref.WeakKeyDictionary[RunContext, RunServices] = weakref.WeakKeyDictionary()
_runs_lock = threading.Lock()
_fallback_store: BaseStore | None = None


def services(settings: Settings) -> Ready:
    """The process's warehouse / identity index / read clock for these settings (built once)."""
    key = json.dumps(settings.model_dump(mode="json"), sort_keys=True)
    with _ready_lock:
        if key not in _ready:
            _ready[key] = ready(settings)
        return _ready[key]


def remember(r: Ready) -> None:
    """Share a Ready the caller already built (with its progress bar) instead of building another."""
    with _ready_lock:
        _ready.setdefault(json.dumps(r.settings.model_dump(mode="json"), sort_keys=True), r)


@contextmanager
def bound(rc: RunContext, run: RunServices) -> Iterator[RunContext]:
    """Bind ``run``'s live objects to the context object ``rc`` while a graph runs with it."""
    with _runs_lock:
        _runs[rc] = run
    try:
        yield rc
    finally:
        with _runs_lock:
            _runs.pop(rc, None)


def run_services(runtime: Runtime[RunContext]) -> RunServices:
    """The live objects of the run ``runtime`` belongs to: the ones the application bound, else
    (a graph served by LangGraph's server) built once from the run's context and store."""
    rc = runtime.context if isinstance(runtime.context, RunContext) else None
    if rc is None:  # no context object to share them through: this node's own
        return _build(RunContext(), runtime.store)
    with _runs_lock:
        run = _runs.get(rc)
        if run is None:
            run = _runs[rc] = _build(rc, runtime.store)
        return run


def _build(rc: RunContext, store: BaseStore | None) -> RunServices:
    """A served graph's services: the server's settings (its environment), read as the caller the
    server authenticated for this run (:func:`served_principal`)."""
    settings = Settings()
    svc = services(settings)
    principal = served_principal(settings, _server_caller())
    scope = ReadScope.build(settings, svc.clock, principal=principal, memory=context_memory(store, settings),
                            index=svc.index, prefer_memory=not rc.fresh)
    return RunServices(scope=scope)


UNKNOWN_CALLER = ("LangGraph's server authenticated a caller ({who!r}) that carries no custctx tenant and role: "
                  "serve the graphs with the authentication langgraph.json declares "
                  "(agent.interfaces.langgraph_auth:auth), which maps API keys to principals")


def served_principal(settings: Settings, caller: Any) -> Principal:
    """Who a run on LangGraph's server reads for.

    ``caller`` is the user the server's authentication (``agent.interfaces.langgraph_auth``)
    returned for the request that created the run: ``identity`` (the user), ``tenant`` and
    ``role`` from the API key file. With no authenticated caller — a graph invoked in-process
    without bound services — the default principal of the ``langgraph`` interface
    (``CUSTCTX_ROLE`` / ``CUSTCTX_USER``, else support_agent).

    Raises:
        BadPrincipal: the server authenticated a caller without a tenant and a role (another
            authentication handler, LangSmith's Studio user): refused, not read as a default role.
    """
    if caller is None:
        return default_principal(settings, "langgraph")
    found = {name: _caller_field(caller, name) for name in ("identity", "tenant", "role")}
    if not all(found.values()):
        raise BadPrincipal(UNKNOWN_CALLER.format(who=found["identity"] or type(caller).__name__))
    return Principal(tenant=found["tenant"], user=found["identity"], role=found["role"], interface="langgraph")


def _caller_field(caller: Any, name: str) -> str:
    # The server's user object reads like a mapping (ProxyUser, StudioUser) or has attributes.
    get = getattr(caller, "get", None)
    value = get(name) if callable(get) else getattr(caller, name, None)
    return value if isinstance(value, str) else ""


def _server_caller() -> Any:
    """The user LangGraph's server authenticated for the current run (None outside a served run).

    The server puts it in the run's config; it overwrites whatever a client sent under that key
    and strips the key from a client's context, so a client cannot name it.
    """
    from langgraph.config import get_config

    try:
        configurable = get_config().get("configurable") or {}
    except RuntimeError:  # not called from inside a run
        return None
    return configurable.get("langgraph_auth_user")


def context_memory(store: BaseStore | None, settings: Settings) -> ContextMemory:
    """Long-term memory on the graph's store (an in-process store when the graph has none)."""
    global _fallback_store
    if store is None:
        with _ready_lock:
            if _fallback_store is None:
                from langgraph.store.memory import InMemoryStore

                _fallback_store = InMemoryStore()
            store = _fallback_store
    return ContextMemory.of(store, settings)
