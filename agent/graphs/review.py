"""Account review generation for one account (the batch runner calls it per account).

``resolve_customer → plan (fixed steps) → fetch_slice × N → advance … → respond``.
``respond`` renders the review in the structure of the customer-context skill from the
fetched slices (templates: every fact is a slice field) and asks the model for the
summary paragraph; the same content comes back as JSON.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from langgraph.graph import StateGraph
from langgraph.runtime import Runtime

from agent.brief import render_brief
from agent.graphs.nodes import (
    fixed_steps_graph,
    model_name,
    model_of,
    resolve_customer,
    settings_of,
    this_turn_plan,
    turn_context,
    turn_refs,
    usage,
)
from agent.prompting import UNTRUSTED_NOTE, context_block, render
from agent.run_context import RunContext, run_services
from agent.state import ModelCall, ReviewInput, ReviewOutput, SliceRef, State
from agent.steps import REVIEW_STEPS
from tools.context.assembly import CustomerContext, SourceStatus, find_conflicts
from tools.context.view import reference_view
from tools.facts import user_facts, with_facts
from tools.slices import SLICE_MODELS
from tools.traits import derive_traits


def sources_from_refs(refs: dict[str, SliceRef]) -> list[SourceStatus]:
    """The source report of a run, from its slice references."""
    out: dict[str, SourceStatus] = {}
    for name in SLICE_MODELS:
        r = refs.get(name)
        if r is None:
            continue
        st = out.setdefault(r["source"], SourceStatus(source=r["source"], system=r.get("system"), status="connected"))
        st.system = st.system or r.get("system")
        if r["status"] == "gap":
            gap = r["gap"] or {}
            st.gaps.append(f"{name}: {gap.get('kind')}")
            if gap.get("kind") == "not_connected":
                st.status = "not_connected"
            elif gap.get("kind") in ("unavailable", "timeout"):
                st.status = "failed" if not st.slices else "degraded"
                st.error = gap.get("message")
        else:
            st.slices.append(name)
            if r["status"] == "stale":
                st.status = "stale"
            elif st.status == "failed":
                st.status = "degraded"
            if at := r.get("source_updated_at"):
                updated = datetime.fromisoformat(at)
                st.freshness = max(st.freshness or updated, updated)
    return list(out.values())


def respond(state: State, runtime: Runtime[RunContext]) -> dict[str, Any]:
    settings = settings_of(runtime)
    slices, gaps = turn_context(state, runtime)
    scope = run_services(runtime).scope
    customer_id, name = state.get("customer_id") or "", state.get("customer_name") or ""
    ref = scope.index.get(customer_id) if scope.index is not None else None
    ctx = CustomerContext(
        customer_id=customer_id, name=name, matched_by=state.get("matched_by"),
        anchors=dict(ref.anchors) if ref else {}, domains=list(ref.domains) if ref else [], as_of=scope.clock.as_of,
        slices=slices, gaps=gaps, conflicts=find_conflicts(slices, settings.thresholds),
        traits=derive_traits(slices, settings.thresholds, settings.churn_weights),
        sources=sources_from_refs(turn_refs(state)))
    customer = {"customer_id": ctx.customer_id, "name": ctx.name, "as_of": ctx.as_of.isoformat()}
    system = render("review_summary", customer=ctx.name, untrusted_note=UNTRUSTED_NOTE)
    context = context_block(customer, slices, gaps, ctx.traits.model_dump(mode="json"))
    prompt: list[BaseMessage] = [SystemMessage(system),
                                 HumanMessage(f"<customer_context>\n{context}\n</customer_context>")]
    model = model_of(runtime)
    ai = model.invoke(prompt)
    n_in, n_out = usage(ai, prompt, None)
    calls: list[ModelCall] = [{"turn": state["turn"], "purpose": "answer", "input_tokens": n_in,
                               "output_tokens": n_out}]
    summary = ai.content if isinstance(ai.content, str) else str(ai.content)
    facts = user_facts(scope, customer_id) if customer_id else []  # told by users: through the gate, audited
    brief = render_brief(ctx, facts)
    head, _, rest = brief.partition("### Relationship Snapshot")
    markdown = f"{head}### Summary\n{summary}\n\n### Relationship Snapshot{rest}"
    view = reference_view(with_facts(scope, ctx, facts))
    result = {"markdown": markdown, "summary": summary, "review": view, "plan": this_turn_plan(state),
              "slices_used": list(slices), "gaps": [g.model_dump() for g in gaps], "model": model_name(model),
              "model_calls": [{"purpose": "answer", "input_tokens": n_in, "output_tokens": n_out}],
              "tokens_shown": n_in}
    return {"calls": calls, "result": result}


def builder() -> StateGraph[State, RunContext, ReviewInput, ReviewOutput]:
    return fixed_steps_graph(resolve_customer, REVIEW_STEPS, respond, ReviewInput, ReviewOutput)


graph = builder().compile()
graph.name = "review"
