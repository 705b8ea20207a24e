"""Nodes shared by the workflows: resolve the customer, fan out one fetch per slice, read a
turn's slices back from long-term memory by reference."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.tools import BaseTool
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send
from pydantic import BaseModel, ValidationError

from agent.models import chat_model
from agent.run_context import RunContext, RunServices, run_services
from agent.state import FetchJob, ModelCall, PlanStep, SliceRef, State
from tools.context.read import read_slices, recall_slices, resolve, visible
from tools.identity import AmbiguousCustomer, BadReference, CustomerNotFound
from tools.settings import Settings
from tools.slices import SLICE_MODELS, Slice, SourceGap
from tools.sources.registry import default_slices

FETCH = "fetch_slice"
#: No minimum viable context: the assistant asks who the customer is and what the conversation is
#: about (issue 18) — the same words for a new thread as for one the caller may not continue.
NO_CUSTOMER_GIVEN = ("Who is the customer, and what is the conversation about? Name the customer by email, "
                     "domain, id or name.")
THREAD_NOT_CONTINUED = "This conversation cannot be continued: start a new one."
M = TypeVar("M", bound=BaseModel)


class RuntimeNode(Protocol):
    """A node of the workflows' state that reads the run's services."""

    def __call__(self, state: State, runtime: Runtime[RunContext]) -> dict[str, Any]: ...


class StateNode(Protocol):
    """A node of the workflows' state that needs nothing else."""

    def __call__(self, state: State) -> dict[str, Any]: ...


def settings_of(runtime: Runtime[RunContext]) -> Settings:
    return run_services(runtime).scope.settings


def model_of(runtime: Runtime[RunContext]) -> BaseChatModel:
    run = run_services(runtime)
    name = runtime.context.model if isinstance(runtime.context, RunContext) else None
    return run.chat_model or chat_model(run.scope.settings, name)


def model_name(model: BaseChatModel) -> str:
    return str(getattr(model, "model_name", None) or getattr(model, "model", None) or type(model).__name__)


def resolve_customer(state: State, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Start a turn: resolve the customer reference (kept across turns unless a new one is given)
    as the run's principal may see it — a customer its row filter hides does not exist for it."""
    turn = (state.get("turn") or 0) + 1
    base: dict[str, Any] = {"turn": turn, "step": 0, "error": None, "result": None, "pending": []}
    ref = (state.get("customer") or "").strip()
    scope = run_services(runtime).scope
    assert scope.index is not None  # run services are built with the process's identity index
    # Whoever continues a thread must still see its customer. A thread whose customer the principal
    # may not see is, for it, a thread with no customer: nothing of it (its customer, the reference
    # it was started with) is named, and it is not continued with another customer either (its
    # earlier turns would be sent to the model).
    kept_id = state.get("customer_id")
    kept = scope.index.get(kept_id) if kept_id else None
    hidden_thread = bool(kept_id) and (kept is None or not visible(scope, kept))
    if kept_id and not hidden_thread and (not ref or ref == state.get("resolved_ref")):
        return base
    if not ref:
        return {**base, "error": NO_CUSTOMER_GIVEN}
    try:
        customer, matched_by = resolve(scope, ref)
    except AmbiguousCustomer as exc:
        names = "; ".join(f"{c.name} ({c.domain or c.customer_id})" for c in exc.candidates)
        return {**base, "error": f"{exc} Candidates: {names}."}
    except (CustomerNotFound, BadReference) as exc:
        return {**base, "error": str(exc)}
    if hidden_thread:
        return {**base, "error": THREAD_NOT_CONTINUED}
    return {**base, "customer_id": customer.customer_id, "customer_name": customer.name,
            "matched_by": matched_by, "resolved_ref": ref}


def fetch_jobs(state: State, slices: list[str], step: int, tool_call_id: str | None = None) -> list[FetchJob]:
    customer_id, turn = state.get("customer_id"), state.get("turn")
    assert customer_id is not None and turn is not None  # fetches follow a resolved customer
    return [{"customer_id": customer_id, "slice": n, "turn": turn, "step": step, "tool_call_id": tool_call_id}
            for n in slices]


def send_pending(state: State) -> list[Send]:
    return [Send(FETCH, job) for job in state.get("pending") or []]


def fetch_slice(state: FetchJob, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Read one slice (``state``: the fetch job a ``Send`` carries) through the request's read
    path (memory first when fresh); the graph state keeps only a reference, the admitted slice
    stays with the run for its answer."""
    run = run_services(runtime)
    scope = run.scope
    name = state["slice"]
    source = SLICE_MODELS[name].source
    customer = scope.index.get(state["customer_id"]) if scope.index is not None else None
    base: SliceRef = {"turn": state["turn"], "step": state["step"], "slice": name, "source": source,
                      "tool_call_id": state.get("tool_call_id")}
    if customer is None:  # the identity index was rebuilt under us
        gap = SourceGap(slice=name, source=source, kind="not_found", message="customer is no longer in the index")
        return {"refs": [{**base, "status": "gap", "gap": gap.model_dump()}]}
    _, [(got, _)] = read_slices(scope, customer, [name])
    if isinstance(got, SourceGap):
        return {"refs": [{**base, "status": "gap", "gap": got.model_dump(mode="json")}]}
    run.admitted[(customer.customer_id, name)] = got
    p = got.provenance
    ref: SliceRef = {**base, "status": "stale" if p.stale else "ok", "system": p.system,
                     "served_from": p.served_from, "record_ids": list(p.record_ids),
                     "fetched_at": p.fetched_at.isoformat() if p.fetched_at else None,
                     "source_updated_at": p.source_updated_at.isoformat() if p.source_updated_at else None,
                     "age_seconds": p.age_seconds}
    return {"refs": [ref]}


def turn_refs(state: State) -> dict[str, SliceRef]:
    """This turn's references, one per slice (the latest read wins)."""
    return {r["slice"]: r for r in state.get("refs") or [] if r["turn"] == state.get("turn")}


def turn_context(state: State, runtime: Runtime[RunContext]) -> tuple[dict[str, Slice], list[SourceGap]]:
    """The slices this turn fetched — as the run's fetches admitted them (masked for its role,
    audited), else read back from long-term memory by reference through the same gate — and
    its gaps."""
    run = run_services(runtime)
    refs = turn_refs(state)
    customer_id = state.get("customer_id") or ""
    back = read_back(run, customer_id, [n for n, r in refs.items() if r["status"] != "gap"])
    slices: dict[str, Slice] = {}
    gaps: list[SourceGap] = []
    for name, ref in refs.items():
        gap = ref.get("gap")
        got = SourceGap(**gap) if ref["status"] == "gap" and gap else back.get(name)
        if got is None:
            got = SourceGap(slice=name, source=ref["source"], kind="unavailable",
                            message="the snapshot read in this turn is no longer in long-term memory")
        if isinstance(got, SourceGap):
            gaps.append(got)
            continue
        p = got.provenance
        p.served_from = "memory" if ref.get("served_from") == "memory" else "source"
        p.stale, p.age_seconds = ref["status"] == "stale", ref.get("age_seconds")
        slices[name] = got
    order = list(SLICE_MODELS)
    return dict(sorted(slices.items(), key=lambda kv: order.index(kv[0]))), \
        sorted(gaps, key=lambda g: order.index(g.slice))


def read_back(run: RunServices, customer_id: str, names: list[str]) -> dict[str, Slice | SourceGap | None]:
    """The turn's slices: the ones this run admitted, the rest (a run resumed in another
    process) recalled from memory through the gate."""
    out: dict[str, Slice | SourceGap | None] = {}
    missing = []
    for name in names:
        if (got := run.admitted.get((customer_id, name))) is not None:
            out[name] = got
        else:
            missing.append(name)
    scope = run.scope
    customer = scope.index.get(customer_id) if missing and scope.index is not None else None
    if customer is not None:
        out.update(recall_slices(scope, customer, missing))
    return out


def citations(text: str, refs: dict[str, SliceRef], used: dict[str, Slice]) -> list[dict[str, Any]]:
    """The slices an answer cites as ``[slice.name]`` that were really used, with their record ids."""
    import re

    cited = dict.fromkeys(m for m in re.findall(r"\[([a-z]+\.[a-z_]+)\]", text) if m in used)
    return [{"slice": n, "source": refs[n]["source"], "system": refs[n].get("system"),
             "record_ids": refs[n].get("record_ids") or []} for n in cited]


def fixed_plan(steps: list[tuple[str, list[str]]]) -> RuntimeNode:
    """A plan node for a workflow whose steps are fixed: record them, queue the first step."""

    def plan(state: State, runtime: Runtime[RunContext]) -> dict[str, Any]:
        # an optional source (commerce) that is not connected leaves its step out (but for the slices
        # the role may not read: those are reported forbidden, as always)
        scope = run_services(runtime).scope
        access = scope.access
        denied = None if access is None else (lambda n: not access.allows(n))
        now = [(name, kept) for name, names in steps if (kept := default_slices(scope.settings, names, denied))]
        recorded: list[PlanStep] = [{"turn": state["turn"], "step": i + 1, "name": name, "slices": list(names),
                                     "planned_by": "rules"} for i, (name, names) in enumerate(now)]
        return {"plan": recorded, "step": 1, "pending": fetch_jobs(state, now[0][1], 1)}

    return plan


def next_step(steps: list[tuple[str, list[str]]]) -> StateNode:
    """After a fixed step's fetches: queue the next step, or nothing when all are done."""

    def advance(state: State) -> dict[str, Any]:
        step = state["step"] + 1
        planned = [p["slices"] for p in state.get("plan") or [] if p["turn"] == state["turn"]] or \
            [names for _, names in steps]
        if step > len(planned):
            return {"pending": []}
        return {"step": step, "pending": fetch_jobs(state, planned[step - 1], step)}

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


def fixed_steps_graph(resolve: RuntimeNode, steps: list[tuple[str, list[str]]],
                      respond: RuntimeNode, input_schema: type[Any],
                      output_schema: type[Any]) -> StateGraph[State, RunContext, Any, Any]:
    """``resolve_customer → plan → fetch_slice × N → advance … → respond`` for a workflow whose
    steps are fixed (triage, review); a customer that cannot be resolved ends in ``explain_error``."""
    g = StateGraph(State, context_schema=RunContext, input_schema=input_schema, output_schema=output_schema)
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


# ------------------------------------------------------------------ model calls
def usage(ai: BaseMessage, prompt: list[BaseMessage], tools: list[BaseTool | dict[str, Any]] | None
          ) -> tuple[int, int]:
    """(prompt tokens, completion tokens) of one call: the model's own usage when it reports
    one, else an approximate count of exactly what was sent (tool definitions included)."""
    meta = getattr(ai, "usage_metadata", None)
    if meta and meta.get("input_tokens"):
        return int(meta["input_tokens"]), int(meta.get("output_tokens") or 0)
    return count_tokens_approximately(prompt, tools=tools), count_tokens_approximately([ai])


def structured(model: BaseChatModel, prompt: list[BaseMessage], schema: type[M], turn: int
               ) -> tuple[M | None, str | None, list[ModelCall]]:
    """The model's answer as ``schema``: on a validation error, one retry that shows the model
    its error; a second failure is a one-line reason, never a traceback."""
    runnable = model.with_structured_output(schema, include_raw=True)
    calls: list[ModelCall] = []
    why = "no answer"
    for attempt in ("structured", "retry"):
        try:
            out: Any = runnable.invoke(prompt)
        except (ValidationError, OutputParserException, ValueError) as exc:  # the client parsed and failed
            out = {"raw": None, "parsed": None, "parsing_error": exc}
        raw = out["raw"] if isinstance(out, dict) else None
        n_in, n_out = usage(raw, prompt, None) if isinstance(raw, AIMessage) else (0, 0)
        calls.append({"turn": turn, "purpose": attempt, "input_tokens": n_in, "output_tokens": n_out})
        parsed, error = (out.get("parsed"), out.get("parsing_error")) if isinstance(out, dict) else (out, None)
        if isinstance(parsed, schema):
            return parsed, None, calls
        try:
            return schema.model_validate(parsed), None, calls
        except ValidationError as exc:
            error = error or exc
        why = f"its {schema.__name__} was invalid after one retry: " + " ".join(str(error).split())[:300]
        feedback = f"That {schema.__name__} was invalid: {' '.join(str(error).split())[:1000]}. Return it again, valid."
        if isinstance(raw, AIMessage):
            answered = [ToolMessage(feedback, tool_call_id=c["id"] or "", status="error") for c in raw.tool_calls]
            prompt = [*prompt, raw, *answered] + ([] if answered else [HumanMessage(feedback)])
        else:
            prompt = [*prompt, HumanMessage(feedback)]
    return None, why, calls
