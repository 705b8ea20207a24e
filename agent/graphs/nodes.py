"""Nodes shared by the workflows: resolve the customer, fan out one fetch per slice, read a
turn's slices back from long-term memory by reference."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langgraph.graph import StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send

from agent.models import chat_model
from agent.run_context import RunContext, context_memory, run_access, services
from agent.state import PlanStep, SliceRef, State
from tools.access.gate import resolve_visible
from tools.context.assembly import customer_visible, default_guard, recall_slices
from tools.identity import AmbiguousCustomer, BadReference, CustomerNotFound
from tools.langchain_tools import RUNTIME_ARG, SOURCE_TOOLS, SourceToolRuntime
from tools.settings import Settings
from tools.slices import SLICE_MODELS, Slice, SourceGap

FETCH = "fetch_slice"


def settings_of(runtime: Runtime[RunContext]) -> Settings:
    return (runtime.context or RunContext()).resolved_settings()


def model_of(runtime: Runtime[RunContext]) -> BaseChatModel:
    rc = runtime.context or RunContext()
    return rc.chat_model or chat_model(settings_of(runtime), rc.model)


def model_name(model: BaseChatModel) -> str:
    return str(getattr(model, "model_name", None) or getattr(model, "model", None) or type(model).__name__)


def resolve_customer(state: State, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Start a turn: resolve the customer reference (kept across turns unless a new one is given)
    as the run's principal may see it — a customer its row filter hides does not exist for it."""
    turn = (state.get("turn") or 0) + 1
    base: dict[str, Any] = {"turn": turn, "step": 0, "error": None, "result": None, "pending": []}
    ref = (state.get("customer") or "").strip()
    rc = runtime.context or RunContext()
    settings = settings_of(runtime)
    svc = services(settings)
    access = run_access(rc, settings)
    memory = context_memory(runtime.store, settings)
    if (kept_id := state.get("customer_id")) and (not ref or ref == state.get("resolved_ref")):
        kept = svc.index.get(kept_id)  # whoever continues a thread must still see its customer
        if kept is not None and not customer_visible(settings, kept, svc.ctx, access, rc.guard, memory):
            return {**base, "error": str(CustomerNotFound(state.get("resolved_ref") or kept.name, []))}
        return base
    if not ref:
        return {**base, "error": "No customer given: name one by email, domain, id or name."}
    try:
        customer, matched_by = resolve_visible(svc.index, ref, settings, svc.ctx, access, rc.guard, memory)
    except AmbiguousCustomer as exc:
        names = "; ".join(f"{c.name} ({c.domain or c.customer_id})" for c in exc.candidates)
        return {**base, "error": f"{exc} Candidates: {names}."}
    except (CustomerNotFound, BadReference) as exc:
        return {**base, "error": str(exc)}
    return {**base, "customer_id": customer.customer_id, "customer_name": customer.name,
            "matched_by": matched_by, "resolved_ref": ref}


def fetch_jobs(state: State, slices: list[str], step: int, tool_call_id: str | None = None) -> list[dict[str, Any]]:
    return [{"customer_id": state["customer_id"], "slice": n, "turn": state["turn"], "step": step,
             "tool_call_id": tool_call_id} for n in slices]


def send_pending(state: State) -> list[Send]:
    return [Send(FETCH, job) for job in state.get("pending") or []]


def fetch_slice(job: dict[str, Any], runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Read one slice through its source tool (memory first when fresh); keep only a reference."""
    rc = runtime.context or RunContext()
    settings = settings_of(runtime)
    svc = services(settings)
    name = job["slice"]
    source = SLICE_MODELS[name].source
    customer = svc.index.get(job["customer_id"])
    base: SliceRef = {"turn": job["turn"], "step": job["step"], "slice": name, "source": source,
                      "tool_call_id": job.get("tool_call_id")}
    if customer is None:  # the identity index was rebuilt under us
        gap = SourceGap(slice=name, source=source, kind="not_found", message="customer is no longer in the index")
        return {"refs": [{**base, "status": "gap", "gap": gap.model_dump()}]}
    access = run_access(rc, settings)
    rt = SourceToolRuntime(settings=settings, customer=customer, ctx=svc.ctx, guard=rc.guard or default_guard(settings),
                           principal=access.principal, access=access, store=context_memory(runtime.store, settings),
                           prefer_memory=not rc.fresh)
    out = SOURCE_TOOLS[source].invoke({"slices": [name], RUNTIME_ARG: rt})
    if name in out["slices"]:
        p = out["slices"][name]["provenance"]
        ref: SliceRef = {**base, "status": "stale" if p["stale"] else "ok", "system": p["system"],
                         "served_from": p["served_from"], "record_ids": p["record_ids"],
                         "fetched_at": p["fetched_at"], "source_updated_at": p["source_updated_at"],
                         "age_seconds": p["age_seconds"]}
    else:
        ref = {**base, "status": "gap", "gap": out["gaps"][0]}
    return {"refs": [ref]}


def turn_refs(state: State) -> dict[str, SliceRef]:
    """This turn's references, one per slice (the latest read wins)."""
    return {r["slice"]: r for r in state.get("refs") or [] if r["turn"] == state.get("turn")}


def turn_context(state: State, runtime: Runtime[RunContext]) -> tuple[dict[str, Slice], list[SourceGap]]:
    """The slices this turn fetched, read back from long-term memory by reference through the
    run's access gate (masked for its role, audited), and its gaps."""
    settings = settings_of(runtime)
    svc = services(settings)
    refs = turn_refs(state)
    wanted = [n for n, r in refs.items() if r["status"] != "gap"]
    customer = svc.index.get(state.get("customer_id") or "")
    back = recall_slices(settings, svc.ctx, context_memory(runtime.store, settings), customer, wanted,
                         run_access(runtime.context or RunContext(), settings)) if customer and wanted else {}
    slices: dict[str, Slice] = {}
    gaps: list[SourceGap] = []
    for name, ref in refs.items():
        got = SourceGap(**ref["gap"]) if ref["status"] == "gap" else back.get(name)
        if got is None:
            got = SourceGap(slice=name, source=ref["source"], kind="unavailable",
                            message="the snapshot read in this turn is no longer in long-term memory")
        if isinstance(got, SourceGap):
            gaps.append(got)
            continue
        p = got.provenance
        p.served_from, p.stale, p.age_seconds = ref.get("served_from") or "source", ref["status"] == "stale", \
            ref.get("age_seconds")
        slices[name] = got
    order = list(SLICE_MODELS)
    return dict(sorted(slices.items(), key=lambda kv: order.index(kv[0]))), \
        sorted(gaps, key=lambda g: order.index(g.slice))


def citations(text: str, refs: dict[str, SliceRef], used: dict[str, Slice]) -> list[dict[str, Any]]:
    """The slices an answer cites as ``[slice.name]`` that were really used, with their record ids."""
    import re

    cited = dict.fromkeys(m for m in re.findall(r"\[([a-z]+\.[a-z]+)\]", text) if m in used)
    return [{"slice": n, "source": refs[n]["source"], "system": refs[n].get("system"),
             "record_ids": refs[n].get("record_ids") or []} for n in cited]


def fixed_plan(steps: list[tuple[str, list[str]]]) -> Callable[[State, Runtime[RunContext]], dict[str, Any]]:
    """A plan node for a workflow whose steps are fixed: record them, queue the first step."""

    def plan(state: State, runtime: Runtime[RunContext]) -> dict[str, Any]:
        recorded: list[PlanStep] = [{"turn": state["turn"], "step": i + 1, "name": name, "slices": list(names),
                                     "planned_by": "rules"} for i, (name, names) in enumerate(steps)]
        return {"plan": recorded, "step": 1, "pending": fetch_jobs(state, steps[0][1], 1)}

    return plan


def next_step(steps: list[tuple[str, list[str]]]) -> Callable[[State], dict[str, Any]]:
    """After a fixed step's fetches: queue the next step, or nothing when all are done."""

    def advance(state: State) -> dict[str, Any]:
        step = state["step"] + 1
        if step > len(steps):
            return {"pending": []}
        return {"step": step, "pending": fetch_jobs(state, steps[step - 1][1], step)}

    return advance


def route_pending(done: str) -> Callable[[State], list[Send] | str]:
    def route(state: State) -> list[Send] | str:
        return send_pending(state) or done

    return route


def route_resolved(next_node: str, on_error: str) -> Callable[[State], str]:
    def route(state: State) -> str:
        return on_error if state.get("error") else next_node

    return route


def error_message(state: State) -> dict[str, Any]:
    """End a turn that could not start: say why (the assistant shows it as its reply)."""
    text = state.get("error") or "Something went wrong."
    return {"messages": [AIMessage(content=text)], "result": {"error": text}}


def this_turn_plan(state: State) -> list[PlanStep]:
    return [p for p in state.get("plan") or [] if p["turn"] == state.get("turn")]


def fixed_steps_graph(resolve: Callable[..., dict[str, Any]], steps: list[tuple[str, list[str]]],
                      respond: Callable[..., dict[str, Any]]) -> StateGraph:
    """``resolve_customer → plan → fetch_slice × N → advance … → respond`` for a workflow whose
    steps are fixed (triage, review); a customer that cannot be resolved ends in ``explain_error``."""
    from langgraph.graph import END, START

    from agent.state import InputState, OutputState

    g = StateGraph(State, context_schema=RunContext, input_schema=InputState, output_schema=OutputState)
    g.add_node("resolve_customer", resolve)
    g.add_node("plan", fixed_plan(steps))
    g.add_node(FETCH, fetch_slice)
    g.add_node("advance", next_step(steps))
    g.add_node("respond", respond)
    g.add_node("explain_error", error_message)
    g.add_edge(START, "resolve_customer")
    g.add_conditional_edges("resolve_customer", route_resolved("plan", "explain_error"), ["plan", "explain_error"])
    g.add_conditional_edges("plan", route_pending("respond"), [FETCH, "respond"])
    g.add_edge(FETCH, "advance")
    g.add_conditional_edges("advance", route_pending("respond"), [FETCH, "respond"])
    g.add_edge("respond", END)
    g.add_edge("explain_error", END)
    return g
