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
from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict

from agent.offline.answers import review_summary
from agent.offline.field_answers import compose_field_answer
from agent.offline.planning import intents_for_slices, plan_fields
from agent.prompting import ModelContext, parse_context_block, section
from tools.context.assembly import find_conflicts
from tools.context.view import slice_from_model
from tools.langchain_tools import TOOL_NAME
from tools.settings import ChurnWeights, Thresholds
from tools.slices import SLICE_MODELS, SourceGap
from tools.traits import Traits, derive_traits


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
    churn_weights: ChurnWeights = ChurnWeights()
    commerce: bool = False  # a commerce source is connected: orders, refunds, cards, addresses are asked for
    model_name: str = "offline-deterministic"

    @property
    def _llm_type(self) -> str:
        return "offline-deterministic"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def bind_tools(self, tools: Sequence[dict[str, Any] | type | Callable | BaseTool], *,
                   tool_choice: str | None = None, **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        strict = kwargs.pop("strict", None)
        return self.bind(tools=[convert_to_openai_tool(t, strict=strict) for t in tools], tool_choice=tool_choice,
                         **kwargs)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        system = "\n".join(_text(m) for m in messages if isinstance(m, SystemMessage))
        task = m.group(1) if (m := re.search(r"^<task>(\w+)</task>$", system, re.MULTILINE)) else ""
        tools = kwargs.get("tools") or []
        names = {t["function"]["name"] for t in tools}
        handler = {"assistant": self._assistant, "triage": self._triage,
                   "review_summary": self._review_summary}.get(task)
        if handler is None:
            msg = AIMessage(content="The offline deterministic model only runs the custctx prompts "
                                    f"(assistant, triage, review_summary); got task {task or 'none'!r}.")
        else:
            msg = handler(messages, names)
        # What a hosted model would report: the prompt as sent (tool definitions included).
        msg.usage_metadata = {"input_tokens": count_tokens_approximately(messages, tools=tools or None),
                              "output_tokens": count_tokens_approximately([msg]),
                              "total_tokens": 0}
        msg.usage_metadata["total_tokens"] = msg.usage_metadata["input_tokens"] + msg.usage_metadata["output_tokens"]
        return ChatResult(generations=[ChatGeneration(message=msg)])

    # ------------------------------------------------------------------ tasks
    def _assistant(self, messages: list[BaseMessage], tools: set[str]) -> AIMessage:
        """With the tool bound and nothing read yet this turn: call it for the slices the
        question needs (rules). Otherwise: answer from the tool results of this turn."""
        idx, after = _turn(messages)
        question = _text(messages[idx]) if idx >= 0 else ""
        if TOOL_NAME in tools and idx >= 0 and not any(isinstance(m, ToolMessage) for m in after):
            wanted = plan_fields(question, _cited(messages[:idx]), self.commerce).slices
            salt = hashlib.sha1(f"{idx}:{question}".encode()).hexdigest()[:8]
            return AIMessage(content="", tool_calls=[{"name": TOOL_NAME, "args": {"slices": wanted},
                                                      "id": f"call_{salt}", "type": "tool_call"}])
        name, as_of, slices, gaps = "the customer", None, {}, []
        for m in after:
            if isinstance(m, ToolMessage) and m.status != "error" and (read := _tool_result(m)) is not None:
                name, as_of = read["customer"], read["as_of"]
                slices.update(read["slices"])
                gaps += read["gaps"]
        traits = derive_traits(slices, self.thresholds, self.churn_weights)
        conflicts = [c.model_dump(mode="json") for c in find_conflicts(slices, self.thresholds)]
        if not slices and not gaps:  # nothing read (a question no source answers): the name from the prompt
            system = "\n".join(_text(m) for m in messages if isinstance(m, SystemMessage))
            found = re.search(r"with one customer: (.+?)\. read_slices", system)
            name = found.group(1) if found else name
        plan = plan_fields(question, _cited(messages[:idx]), self.commerce)
        intents = plan.intents
        if not (intents or plan.fields or plan.needs) and (slices or gaps):
            intents = intents_for_slices(list(slices) + [g.slice for g in gaps]) or ["overview"]
        told = _user_facts(messages)
        return AIMessage(content=compose_field_answer(name, intents, plan.fields, plan.needs, slices, gaps,
                                                      traits.model_dump(mode="json") if traits.based_on else {},
                                                      as_of, conflicts, user_facts=told))

    def _context(self, messages: list[BaseMessage]) -> ModelContext:
        for m in messages:
            if (block := section(_text(m), "customer_context")) is not None:
                return parse_context_block(block)
        return ModelContext()

    def _triage(self, messages: list[BaseMessage], tools: set[str]) -> AIMessage:
        from agent.offline.triage import decide
        from tools.sources.tickets import TicketInput

        c = self._context(messages)
        raw = next((s for m in messages if (s := section(_text(m), "untrusted_ticket")) is not None), "{}")
        ticket = TicketInput.model_validate(json.loads(raw))
        decision = decide(ticket, c.slices, Traits.model_validate(c.traits or {}),
                          _as_datetime(c.customer.get("as_of")), self.thresholds)
        name = next(iter(tools), "TriageDecision")
        return AIMessage(content="", tool_calls=[{"name": name, "args": decision.model_dump(mode="json"),
                                                  "id": "call_triage", "type": "tool_call"}])

    def _review_summary(self, messages: list[BaseMessage], tools: set[str]) -> AIMessage:
        c = self._context(messages)
        return AIMessage(content=review_summary(c.customer.get("name", "the customer"), c.slices, c.gaps, c.traits))


def _cited(messages: Sequence[BaseMessage]) -> list[str]:
    """The slices the latest answer cited: what a follow-up such as "tell me more" is about."""
    for m in reversed(messages):
        if isinstance(m, AIMessage) and not m.tool_calls:
            return list(dict.fromkeys(s for s in re.findall(r"\[([a-z]+\.[a-z_]+)\]", _text(m)) if s in SLICE_MODELS))
    return []


def _user_facts(messages: list[BaseMessage]) -> list[dict[str, Any]]:
    """The ``<user_facts>`` block of the system prompt (facts users told us), or none."""
    for m in messages:
        if isinstance(m, SystemMessage) and (block := section(_text(m), "user_facts")) is not None:
            try:
                rows = json.loads(block)
            except ValueError:
                return []
            return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
    return []


def _tool_result(m: ToolMessage) -> dict[str, Any] | None:
    """A read_slices result read back: the customer's name, the as-of date, slices and gaps."""
    try:
        data = json.loads(_text(m))
        as_of = _as_datetime(data["as_of"])
        return {"customer": data["customer"], "as_of": as_of,
                "slices": {n: slice_from_model(n, v, as_of) for n, v in data["slices"].items()},
                "gaps": [SourceGap(**g) for g in data["gaps"]]}
    except (ValueError, KeyError, TypeError):
        return None


def _as_datetime(value: Any) -> Any:
    from datetime import datetime

    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00")).replace(tzinfo=None)
    return value
