"""The offline deterministic model: a real LangChain chat model with no network and no weights.

``OfflineDeterministicModel`` — ``invoke``, ``bind_tools``, ``with_structured_output`` — runs in
the graphs exactly as a hosted model does. It plans by the rules of ``agent.offline.planning``
(emitting tool calls to the bound source tools), answers from the templates of
``agent.offline.answers`` using only the ``<customer_context>`` block in its prompt (the same
block a real model is shown), and triages with the rules of ``agent.offline.triage``. What it
does is chosen by the ``<task>`` line every prompt in ``prompts/`` starts with.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict

from agent.offline.answers import compose_answer, review_summary
from agent.offline.planning import intents_for_slices, intents_of, plan_question
from agent.prompting import ModelContext, parse_context_block, section
from tools.settings import Thresholds
from tools.slices import SLICE_MODELS


def _text(m: BaseMessage) -> str:
    return m.content if isinstance(m.content, str) else " ".join(
        p.get("text", "") for p in m.content if isinstance(p, dict))


def _turn(messages: Sequence[BaseMessage]) -> tuple[int, list[BaseMessage]]:
    """Index of the latest human message and the messages after it."""
    idx = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=-1)
    return idx, list(messages[idx + 1:])


class OfflineDeterministicModel(BaseChatModel):
    """Rules to plan, templates grounded in the fetched slices to answer. No network."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    thresholds: Thresholds = Thresholds()
    model_name: str = "offline-deterministic"

    @property
    def _llm_type(self) -> str:
        return "offline-deterministic"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def bind_tools(self, tools: Sequence[dict[str, Any] | type | Callable | BaseTool], *,
                   tool_choice: str | None = None, **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], tool_choice=tool_choice, **kwargs)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        system = "\n".join(_text(m) for m in messages if isinstance(m, SystemMessage))
        task = m.group(1) if (m := re.search(r"^<task>(\w+)</task>$", system, re.MULTILINE)) else ""
        tools = {t["function"]["name"] for t in kwargs.get("tools") or []}
        handler = {"plan": self._plan, "answer": self._answer, "triage": self._triage,
                   "review_summary": self._review_summary}.get(task)
        if handler is None:
            msg = AIMessage(content="The offline deterministic model only runs the custctx prompts "
                                    f"(plan, answer, triage, review_summary); got task {task or 'none'!r}.")
        else:
            msg = handler(messages, system, tools)
        return ChatResult(generations=[ChatGeneration(message=msg)])

    # ------------------------------------------------------------------ tasks
    def _plan(self, messages: list[BaseMessage], system: str, tools: set[str]) -> AIMessage:
        idx, after = _turn(messages)
        if idx < 0 or any(isinstance(m, ToolMessage) for m in after):
            return AIMessage(content="")  # this turn's slices are fetched: planning is done
        previous: list[str] = []
        for m in reversed(messages[:idx]):
            if isinstance(m, AIMessage) and m.tool_calls:
                previous = [s for c in m.tool_calls for s in c["args"].get("slices", [])]
                break
        _, wanted = plan_question(_text(messages[idx]), previous)
        by_source: dict[str, list[str]] = {}
        for name in wanted:
            by_source.setdefault(SLICE_MODELS[name].source, []).append(name)
        salt = hashlib.sha1(f"{idx}:{_text(messages[idx])}".encode()).hexdigest()[:8]
        calls = [{"name": f"read_{src}", "args": {"slices": names}, "id": f"call_{salt}_{src}", "type": "tool_call"}
                 for src, names in by_source.items() if f"read_{src}" in tools]
        return AIMessage(content="", tool_calls=calls)

    def _context(self, system: str) -> ModelContext:
        block = section(system, "customer_context")
        return ModelContext() if block is None else parse_context_block(block)

    def _answer(self, messages: list[BaseMessage], system: str, tools: set[str]) -> AIMessage:
        c = self._context(system)
        idx, _ = _turn(messages)
        question = _text(messages[idx]) if idx >= 0 else ""
        intents = intents_of(question) or intents_for_slices(list(c.slices) + [g.slice for g in c.gaps]) \
            or ["overview"]
        return AIMessage(content=compose_answer(c.customer.get("name", "the customer"), intents, c.slices, c.gaps,
                                                c.traits, c.customer.get("as_of"), c.conflicts))

    def _triage(self, messages: list[BaseMessage], system: str, tools: set[str]) -> AIMessage:
        from agent.offline.triage import decide
        from tools.sources.tickets import TicketInput
        from tools.traits import Traits

        c = self._context(system)
        ticket = TicketInput.model_validate(json.loads(section(system, "untrusted_ticket") or "{}"))
        decision = decide(ticket, c.slices, Traits.model_validate(c.traits or {}),
                          _as_datetime(c.customer.get("as_of")), self.thresholds)
        name = next(iter(tools), "TriageDecision")
        return AIMessage(content="", tool_calls=[{"name": name, "args": decision.model_dump(mode="json"),
                                                  "id": "call_triage", "type": "tool_call"}])

    def _review_summary(self, messages: list[BaseMessage], system: str, tools: set[str]) -> AIMessage:
        c = self._context(system)
        return AIMessage(content=review_summary(c.customer.get("name", "the customer"), c.slices, c.gaps, c.traits))


def _as_datetime(value: Any) -> Any:
    from datetime import datetime

    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00")).replace(tzinfo=None)
    return value
