"""Automated ticket triage.

``resolve_customer (from the ticket's requester) → plan (fixed steps) → fetch_slice × N
→ advance … → respond``. ``respond`` asks the model for a ``TriageDecision`` (structured
output); the ticket is shown as ``<untrusted_ticket>``. Whatever the model says, the
injection scan of ``agent.injection`` is applied, evidence is kept only where it cites a
slice that was fetched, and the team and SLA follow the rubric.
"""

from __future__ import annotations

import json
from typing import Any

from langchain_core.messages import SystemMessage
from langchain_core.messages.utils import count_tokens_approximately
from langgraph.graph import StateGraph
from langgraph.runtime import Runtime

from agent.graphs.nodes import (
    fixed_steps_graph,
    model_name,
    model_of,
    resolve_customer,
    settings_of,
    this_turn_plan,
    turn_context,
)
from agent.injection import injection_signals
from agent.prompting import UNTRUSTED_NOTE, context_block, render
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
    customer = {"customer_id": state["customer_id"], "name": state["customer_name"],
                "matched_by": state.get("matched_by"), "as_of": as_of.isoformat()}
    t = settings.thresholds
    system = render(
        "triage", customer=state["customer_name"], untrusted_note=UNTRUSTED_NOTE,
        enterprise_mrr=f"{t.enterprise_mrr:,.0f}", mid_market_mrr=f"{t.mid_market_mrr:,.0f}",
        renewal_soon_days=t.renewal_soon_days, **{f"sla_{p.lower()}": h for p, h in SLA_HOURS.items()},
        customer_context=context_block(customer, slices, gaps, traits.model_dump(mode="json")),
        ticket=json.dumps(ticket.model_dump(mode="json"), ensure_ascii=False, indent=1))
    prompt = [SystemMessage(system)]
    model = model_of(runtime)
    decision = model.with_structured_output(TriageDecision).invoke(prompt)
    if not isinstance(decision, TriageDecision):
        decision = TriageDecision.model_validate(decision)
    decision = enforce(decision, ticket, set(slices))
    result = {**decision.model_dump(mode="json"), "customer": customer, "slices_used": list(slices),
              "gaps": [g.model_dump() for g in gaps], "plan": this_turn_plan(state), "model": model_name(model),
              "tokens_shown": count_tokens_approximately(prompt)}
    return {"result": result}


def enforce(decision: TriageDecision, ticket: TicketInput, fetched: set[str]) -> TriageDecision:
    """Rules that hold whatever the model said: injection flag, grounded evidence, team and SLA."""
    signals = injection_signals(f"{ticket.subject}\n{ticket.description}")
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
