"""Run settings of the graphs: LangGraph's ``context_schema``.

Nodes read them through ``runtime: Runtime[RunContext]``. Precedence: a value passed for
the run > the environment (``Settings``, ``CUSTCTX_*``) > the default. Heavy per-process
objects (identity index, read context, guard) are built once per distinct settings and
shared by every run of the process; nothing here holds customer data.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel
from langgraph.store.base import BaseStore
from langgraph.store.memory import InMemoryStore

from agent.bootstrap import Ready, ready
from tools.access.gate import Access
from tools.access.principal import as_principal
from tools.guard import SourceGuard
from tools.memory import ContextMemory
from tools.settings import Settings


@dataclass(kw_only=True)
class RunContext:
    """What one run of a graph is configured with."""

    settings: Settings | dict[str, Any] | None = field(default=None, metadata={
        "description": "Product settings for this run; unset: from the environment (CUSTCTX_*)."})
    model: str | None = field(default=None, metadata={
        "description": 'Chat model: "offline" or an OpenAI-compatible model name; unset: settings.model.'})
    chat_model: BaseChatModel | None = field(default=None, metadata={
        "description": "A chat-model object to use instead of `model` (embedding applications, tests)."})
    max_plan_steps: int | None = field(default=None, metadata={
        "description": "Tool-call planning rounds allowed per question; unset: settings.max_plan_steps."})
    fresh: bool = field(default=False, metadata={
        "description": "Read every slice from its source, not from long-term memory."})
    guard: SourceGuard | None = field(default=None, metadata={
        "description": "The source guard (breakers, retries); unset: the process-wide guard."})
    principal: Any = field(default=None, metadata={
        "description": "Who is asking (a tools.access.principal.Principal, set by the application); every read "
        "applies its role's access policy and is audited. Unset: CUSTCTX_ROLE, else support_agent."})
    access: Any = field(default=None, metadata={
        "description": "The principal's access gate, built on first use and shared by the run's nodes."})

    def resolved_settings(self) -> Settings:
        if isinstance(self.settings, Settings):
            return self.settings
        return Settings(**(self.settings or {}))


_ready: dict[str, Ready] = {}
_ready_lock = threading.Lock()
_fallback_store = InMemoryStore()


def services(settings: Settings) -> Ready:
    """The process's warehouse / identity index / read context for these settings (built once)."""
    key = json.dumps(settings.model_dump(mode="json"), sort_keys=True)
    with _ready_lock:
        if key not in _ready:
            _ready[key] = ready(settings)
        return _ready[key]


def remember(r: Ready) -> None:
    """Share a Ready the caller already built (with its progress bar) instead of building another."""
    with _ready_lock:
        _ready.setdefault(json.dumps(r.settings.model_dump(mode="json"), sort_keys=True), r)


def run_access(rc: RunContext, settings: Settings) -> Access:
    """The run's access gate: built once from its principal (no principal: the default of a
    graph served by LangGraph, ``CUSTCTX_ROLE`` else support_agent) and kept on the run context
    so its nodes share one row-filter verdict per customer."""
    if rc.access is None:
        rc.access = Access.for_principal(settings, as_principal(rc.principal, settings, "langgraph"))
    return rc.access


def context_memory(store: BaseStore | None, settings: Settings) -> ContextMemory:
    """Long-term memory on the graph's store (an in-process store when the graph has none)."""
    return ContextMemory(store if store is not None else _fallback_store, settings.tenant, settings.ttls)
