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
from tools.context.read import row_check_unmatched, visible
from tools.context.scope import ReadScope
from tools.identity import AmbiguousCustomer, BadReference, CustomerNotFound
from tools.sources.base import CustomerRef
from tools.sources.tickets import TicketInput, TicketNotFound
from tools.traits import derive_traits

NO_CUSTOMER = "the ticket names no requester email or organization that matches a customer: give the customer"
OTHER_CUSTOMER = "the ticket's requester is not a contact of {customer!r}: give the requester's own customer, or none"


def ticket_customer(scope: ReadScope, ticket: TicketInput) -> tuple[str, CustomerRef] | None:
    """Whose ticket this is, as the scope's principal may see customers.

    The ticket belongs to the customer the first of its references (requester email, then support
    organization) matches in the identity index — whether or not the principal may see it: a
    requester of a hidden customer does not fall through to another reference. That customer is
    row-checked in the request's scope; the reference and the customer are returned when the
    principal sees it, else None — no match and a hidden customer are the same answer, after the
    same work (a ticket no reference matches pays the row check a hidden one pays)."""
    assert scope.index is not None  # a request's scope carries the process's identity index
    for ref in ticket.customer_refs():
        try:
            customer, _ = scope.index.resolve(ref)
        except (CustomerNotFound, AmbiguousCustomer, BadReference):
            continue
        return (ref, customer) if visible(scope, customer) else None
    row_check_unmatched(scope)
    return None


def resolve_ticket_customer(state: State, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Whose ticket this is, before anything of the ticket is used.

    A ticket belongs to the customer its requester resolves to (email, then support organization) as
    the run's principal may see customers. A ticket with an id is a support-source ticket: when no
    customer the principal sees owns it, or it belongs to another customer than the one given, it is
    not found — the error a missing ticket gets, naming nothing of the ticket. A ticket given as input
    (a file, an API body: the caller wrote it) is triaged for the customer given, else its requester's.
    """
    ticket = TicketInput.model_validate(state.get("ticket") or {})
    scope = run_services(runtime).scope
    given = (state.get("customer") or "").strip()
    named = resolve_customer(state, runtime) if given else None  # the caller's customer first, as the interfaces
    if named is not None and named.get("error"):
        return named
    owner = ticket_customer(scope, ticket)
    owner_id = owner[1].customer_id if owner else None

    def failed(message: str) -> dict[str, Any]:
        return {**resolve_customer({**state, "customer": ""}, runtime), "error": message}

    if ticket.id is not None and (owner_id is None or (named is not None and owner_id != named["customer_id"])):
        return failed(str(TicketNotFound(ticket.id)))
    if named is not None:
        if owner_id is not None and owner_id != named["customer_id"]:
            return failed(OTHER_CUSTOMER.format(customer=given))
        return named
    if owner is None:
        return failed(NO_CUSTOMER)
    return resolve_customer({**state, "customer": owner[0]}, runtime)


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
