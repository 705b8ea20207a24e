"""Automated ticket triage.

``resolve_customer (from the ticket's requester) → plan (fixed steps) → fetch_slice × N
→ advance … → respond``. ``respond`` asks the model for a ``TriageDecision`` (structured
output); the ticket is shown as ``<untrusted_ticket>``. Whatever the model says, the
injection scan of ``agent.injection`` is applied, evidence is kept only where it cites a
slice that was fetched, and the team and SLA follow the rubric.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.graph import StateGraph
from langgraph.runtime import Runtime

from agent.graphs.nodes import (
    fixed_steps_graph,
    model_name,
    model_of,
    resolve_customer,
    settings_of,
    structured,
    this_turn_plan,
    turn_context,
)
from agent.injection import ticket_signals
from agent.prompting import UNTRUSTED_NOTE, context_block, render, safe_json
from agent.results import SLA_HOURS, TEAM_FOR, TriageDecision
from agent.run_context import RunContext, run_services
from agent.state import State, TriageInput, TriageOutput
from agent.steps import TRIAGE_STEPS
from tools.sources.tickets import TicketInput
from tools.traits import derive_traits


def resolve_ticket_customer(state: State, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """The customer is the one given, else the ticket requester's (by email, then organization)."""
    ticket = TicketInput.model_validate(state.get("ticket") or {})
    if state.get("customer"):
        return resolve_customer(state, runtime)
    tries = [t for t in (ticket.requester_email, f"support:{ticket.organization_id}" if ticket.organization_id
                         else None) if t]
    last: dict[str, Any] = {}
    for ref in tries:
        last = resolve_customer({**state, "customer": ref}, runtime)
        if not last.get("error"):
            return last
    return last or {**resolve_customer(state, runtime),
                    "error": f"ticket {ticket.id or '(from file)'} names no requester email or organization "
                             "that matches a customer"}


def respond(state: State, runtime: Runtime[RunContext]) -> dict[str, Any]:
    settings = settings_of(runtime)
    ticket = TicketInput.model_validate(state["ticket"])
    slices, gaps = turn_context(state, runtime)
    traits = derive_traits(slices, settings.thresholds, settings.churn_weights)
    as_of = run_services(runtime).scope.clock.as_of
    customer = {"customer_id": state.get("customer_id"), "name": state.get("customer_name"),
                "matched_by": state.get("matched_by"), "as_of": as_of.isoformat()}
    t = settings.thresholds
    system = render(
        "triage", customer=state.get("customer_name") or "the customer", untrusted_note=UNTRUSTED_NOTE,
        enterprise_mrr=f"{t.enterprise_mrr:,.0f}", mid_market_mrr=f"{t.mid_market_mrr:,.0f}",
        renewal_soon_days=t.renewal_soon_days, **{f"sla_{p.lower()}": h for p, h in SLA_HOURS.items()})
    context = context_block(customer, slices, gaps, traits.model_dump(mode="json"))
    user = (f"<customer_context>\n{context}\n</customer_context>\n\n"
            f"<untrusted_ticket>\n{safe_json(ticket.model_dump(mode='json'))}\n</untrusted_ticket>")
    model = model_of(runtime)
    decision, why, calls = structured(model, [SystemMessage(system), HumanMessage(user)], TriageDecision,
                                      state["turn"])
    if decision is None:
        return {"calls": calls, "error": f"model {model_name(model)}: {why}", "result": None}
    decision = enforce(decision, ticket, set(slices))
    result = {**decision.model_dump(mode="json"), "customer": customer, "slices_used": list(slices),
              "gaps": [g.model_dump() for g in gaps], "plan": this_turn_plan(state), "model": model_name(model),
              "model_calls": [{"purpose": c["purpose"], "input_tokens": c["input_tokens"],
                               "output_tokens": c["output_tokens"]} for c in calls],
              "tokens_shown": sum(c["input_tokens"] for c in calls)}
    return {"calls": calls, "result": result}


def enforce(decision: TriageDecision, ticket: TicketInput, fetched: set[str]) -> TriageDecision:
    """Rules that hold whatever the model said: injection flag, grounded evidence, team and SLA.

    The flag is added and changes nothing else: category and priority stay what the ticket is
    about (the rubric sets the injected text aside), so an outage that also carries an
    injection keeps its P1.
    """
    signals = ticket_signals(ticket)
    update: dict[str, Any] = {
        "ticket_id": ticket.id,
        "evidence": [e for e in decision.evidence if e.slice in fetched],
        "team": TEAM_FOR[decision.category],
        "sla_hours": SLA_HOURS[decision.priority],
    }
    if signals:
        update["suspected_injection"] = True
        update["injection_signals"] = sorted(set(decision.injection_signals) | set(signals))
    return decision.model_copy(update=update)


def builder() -> StateGraph[State, RunContext, TriageInput, TriageOutput]:
    return fixed_steps_graph(resolve_ticket_customer, TRIAGE_STEPS, respond, TriageInput, TriageOutput)


graph = builder().compile()
graph.name = "triage"
