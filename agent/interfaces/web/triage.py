"""The triage queue (open tickets the user may see, each with its decision, sortable by priority)
and the triage of a pasted ticket."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from agent.interfaces.service import ContextService, WorkflowFailed, ticket_input
from agent.interfaces.web.render import call, page
from agent.interfaces.web.session import User, check_csrf
from tools.access.principal import Principal

router = APIRouter()
QUEUE_LIMIT = 60
SORTS = {"priority": "priority, then oldest first", "oldest": "oldest first"}


def _queue(s: ContextService, principal: Principal, limit: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for position, ticket in enumerate(s.open_tickets(limit, principal=principal)):
        try:
            decision: dict[str, Any] | None = s.triage(ticket, principal=principal)
            problem = None
        except WorkflowFailed as exc:  # e.g. no customer known for the requester: shown on its row
            decision, problem = None, str(exc).splitlines()[0]
        rows.append({"ticket": ticket, "decision": decision, "problem": problem, "position": position})
    return rows


def _sorted(rows: list[dict[str, Any]], sort: str) -> list[dict[str, Any]]:
    if sort == "priority":
        return sorted(rows, key=lambda r: ((r["decision"] or {}).get("priority") or "P9", r["position"]))
    return rows


@router.get("/triage", response_class=HTMLResponse, include_in_schema=False)
async def queue(request: Request, user: User, sort: str = "priority") -> Response:
    """Open tickets waiting for triage, only those of customers the user may see."""
    sort = sort if sort in SORTS else "priority"
    rows = await call(request, lambda s: _queue(s, user.principal, QUEUE_LIMIT))
    return page(request, "triage.html", rows=_sorted(rows, sort), sort=sort, sorts=SORTS, limit=QUEUE_LIMIT,
                pasted=None, form={})


@router.post("/triage", response_class=HTMLResponse, include_in_schema=False)
async def triage_pasted(request: Request, user: User, subject: Annotated[str, Form()] = "",
                        description: Annotated[str, Form()] = "", requester_email: Annotated[str, Form()] = "",
                        customer: Annotated[str, Form()] = "", csrf: Annotated[str, Form()] = "") -> Response:
    """Triage a ticket pasted into the form (subject, text, the requester's email or the customer)."""
    check_csrf(user, csrf)
    fields = {"subject": subject.strip() or None, "description": description.strip() or None,
              "requester_email": requester_email.strip() or None}

    def work(s: ContextService) -> dict[str, Any]:
        ticket = ticket_input(s.settings, None, fields)
        return s.triage(ticket, customer.strip() or None, principal=user.principal)

    decision = await call(request, work)
    return page(request, "triage.html", rows=None, sort="priority", sorts=SORTS, limit=QUEUE_LIMIT,
                pasted=decision, form={**fields, "customer": customer})
