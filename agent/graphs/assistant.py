"""The conversational support assistant.

``resolve_customer → plan ⇄ (fetch_slice × N → collect) → respond``. The planner is the
chat model with the source tools bound: the offline model calls them by rule, a real
model by choice, bounded by ``max_plan_steps``. Each tool call becomes one fetch task
per slice (``Send``); tool messages and state hold references, the slices stay in
long-term memory, and ``respond`` shows the model only this turn's slices.
"""

from __future__ import annotations

import json
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.messages.utils import count_tokens_approximately
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send
from pydantic import BaseModel, ValidationError

from agent.graphs.nodes import (
    FETCH,
    citations,
    error_message,
    fetch_jobs,
    fetch_slice,
    model_name,
    model_of,
    resolve_customer,
    route_resolved,
    send_pending,
    settings_of,
    this_turn_plan,
    turn_context,
    turn_refs,
)
from agent.prompting import UNTRUSTED_NOTE, context_block, render
from agent.run_context import RunContext, run_services
from agent.state import AssistantInput, AssistantOutput, FetchJob, State
from tools.context.assembly import find_conflicts
from tools.langchain_tools import SOURCE_TOOLS, TOOL_SOURCES
from tools.settings import Settings
from tools.slices import Slice, SourceGap, slices_of
from tools.traits import derive_traits

TOOLS = list(SOURCE_TOOLS.values())


def _conversation(state: State) -> list:
    return list(state.get("messages") or [])


def plan(state: State, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Ask the model which slices to read next (tool calls), within the step budget."""
    asked = runtime.context.max_plan_steps if isinstance(runtime.context, RunContext) else None
    max_steps = asked or settings_of(runtime).max_plan_steps
    taken = state.get("step") or 0
    if taken >= max_steps:
        return {"pending": []}
    model = model_of(runtime)
    fetched = [f"{n}: {r['status']}" for n, r in turn_refs(state).items()] or ["(nothing yet)"]
    system = render("assistant_plan", customer=state["customer_name"], steps_left=max_steps - taken,
                    fetched="\n".join(fetched))
    ai = model.bind_tools(TOOLS).invoke([SystemMessage(system), *_conversation(state)])
    if not isinstance(ai, AIMessage) or not ai.tool_calls:
        return {"pending": []}
    step = taken + 1
    jobs: list[FetchJob] = []
    errors: list[ToolMessage] = []
    for call in ai.tool_calls:
        source = TOOL_SOURCES.get(call["name"])
        if source is None:
            errors.append(ToolMessage(f"There is no tool {call['name']!r}; use one of "
                                      f"{', '.join(TOOL_SOURCES)}.", tool_call_id=call["id"], status="error"))
            continue
        schema = SOURCE_TOOLS[source].tool_call_schema
        assert isinstance(schema, type) and issubclass(schema, BaseModel)  # the source tools' pydantic args
        extra = sorted(set(call["args"] or {}) - set(schema.model_fields))
        if extra:  # e.g. a `customer` a ticket talked the model into: the run's customer is fixed
            errors.append(ToolMessage(f"{call['name']} takes only `slices`, not {', '.join(extra)}: the customer "
                                      "is chosen by the application.", tool_call_id=call["id"], status="error"))
            continue
        try:
            args = schema.model_validate(call["args"])
        except ValidationError as exc:
            errors.append(ToolMessage(f"Invalid arguments for {call['name']}: {exc.errors()[0]['msg']}",
                                      tool_call_id=call["id"], status="error"))
            continue
        wanted = args.model_dump().get("slices")
        names = [n for n in slices_of(source) if not wanted or n in wanted]
        jobs += fetch_jobs(state, names, step, call["id"])
    recorded = {"turn": state["turn"], "step": step, "name": f"tool calls, round {step}",
                "slices": [j["slice"] for j in jobs], "planned_by": model_name(model)}
    return {"messages": [ai, *errors], "pending": jobs, "plan": [recorded], "step": step}


def route_plan(state: State) -> list[Send] | str:
    if sends := send_pending(state):
        return sends
    messages = state.get("messages") or []
    last = messages[-1] if messages else None
    if isinstance(last, ToolMessage) and last.status == "error":
        return "plan"  # every call was invalid: let the model try again (bounded by the step budget)
    return "respond"


def collect(state: State) -> dict[str, Any]:
    """One tool message per tool call of this step: references and gaps, not slice data."""
    refs = [r for r in state.get("refs") or [] if r["turn"] == state["turn"] and r["step"] == state["step"]]
    by_call: dict[str, list] = {}
    for r in refs:
        by_call.setdefault(r.get("tool_call_id") or "", []).append(r)
    messages = []
    for call_id, rs in by_call.items():
        summary = [{"slice": r["slice"], "status": r["status"], "served_from": r.get("served_from"),
                    "record_ids": (r.get("record_ids") or [])[:10],
                    **({"gap": {"kind": r["gap"]["kind"], "message": r["gap"]["message"]}} if r.get("gap") else {})}
                   for r in rs]
        messages.append(ToolMessage(json.dumps({"fetched": summary, "note": "The slice data is shown in "
                                                "<customer_context> when answering."}), tool_call_id=call_id))
    return {"messages": messages, "pending": []}


def answer_context(customer: dict[str, Any], slices: dict[str, Slice], gaps: list[SourceGap],
                   settings: Settings) -> str:
    """The ``<customer_context>`` block an answer is written from: the slices, their gaps,
    the traits derived from them and the sources' conflicts."""
    traits = derive_traits(slices, settings.thresholds, settings.churn_weights)
    return context_block(customer, slices, gaps, traits.model_dump(mode="json") if traits.based_on else None,
                         [c.model_dump(mode="json") for c in find_conflicts(slices, settings)])


def respond(state: State, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Answer from this turn's slices only, citing them; name the gaps."""
    settings = settings_of(runtime)
    slices, gaps = turn_context(state, runtime)
    as_of = run_services(runtime).scope.clock.as_of
    customer = {"customer_id": state["customer_id"], "name": state["customer_name"],
                "matched_by": state.get("matched_by"), "as_of": as_of.isoformat()}
    system = render("assistant_answer", customer=state["customer_name"], untrusted_note=UNTRUSTED_NOTE,
                    customer_context=answer_context(customer, slices, gaps, settings))
    history = [m for m in _conversation(state)
               if isinstance(m, HumanMessage) or (isinstance(m, AIMessage) and not m.tool_calls)]
    prompt = [SystemMessage(system), *history[-9:]]
    model = model_of(runtime)
    ai = model.invoke(prompt)
    answer = ai.content if isinstance(ai.content, str) else str(ai.content)
    refs = turn_refs(state)
    result = {
        "question": next((m.content for m in reversed(history) if isinstance(m, HumanMessage)), None),
        "answer": answer,
        "citations": citations(answer, refs, slices),
        "slices_used": list(slices),
        "gaps": [g.model_dump() for g in gaps],
        "plan": this_turn_plan(state),
        "customer": customer,
        "model": model_name(model),
        "turn": state["turn"],
        "tokens_shown": count_tokens_approximately(prompt),
    }
    return {"messages": [AIMessage(content=answer)], "result": result}


def builder() -> StateGraph[State, RunContext, AssistantInput, AssistantOutput]:
    g = StateGraph(State, context_schema=RunContext, input_schema=AssistantInput, output_schema=AssistantOutput)
    g.add_node("resolve_customer", resolve_customer)
    g.add_node("plan", plan)
    g.add_node(FETCH, fetch_slice)
    g.add_node("collect", collect)
    g.add_node("respond", respond)
    g.add_node("explain_error", error_message)
    g.add_edge(START, "resolve_customer")
    g.add_conditional_edges("resolve_customer", route_resolved("plan", "explain_error"), ["plan", "explain_error"])
    g.add_conditional_edges("plan", route_plan, [FETCH, "plan", "respond"])
    g.add_edge(FETCH, "collect")
    g.add_edge("collect", "plan")
    g.add_edge("respond", END)
    g.add_edge("explain_error", END)
    return g


graph = builder().compile()
graph.name = "assistant"
