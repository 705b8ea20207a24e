"""Graph state: conversation state for the checkpointer — never slice data.

Slices live in long-term memory (the Store); the state keeps *references* to the slices
each turn used (name, source, record ids, when fetched, or the gap), the resolved
customer and the plan. Lists that grow over turns use an explicit ``operator.add``
reducer; everything else is last-write-wins.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal, TypedDict

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages


class SliceRef(TypedDict, total=False):
    """A reference to a slice read in a turn (its data stays in long-term memory)."""

    turn: int
    step: int
    slice: str
    source: str
    system: str | None
    status: Literal["ok", "stale", "gap"]
    served_from: str | None  # "source" or "memory"
    record_ids: list[str]
    fetched_at: str | None
    source_updated_at: str | None
    age_seconds: float | None
    gap: dict[str, Any] | None  # the SourceGap when status == "gap"
    tool_call_id: str | None


class PlanStep(TypedDict):
    """One step of a turn's plan: the slices it asked for and who planned it."""

    turn: int
    step: int
    name: str
    slices: list[str]
    planned_by: str


class InputState(TypedDict, total=False):
    """What a caller sends."""

    messages: Annotated[list[AnyMessage], add_messages]  # assistant: the user's question
    customer: str  # email, domain, id or name; kept for follow-ups
    ticket: dict[str, Any]  # triage: a TicketInput as JSON


class OutputState(TypedDict, total=False):
    """What a caller gets back."""

    customer_id: str | None
    customer_name: str | None
    result: dict[str, Any] | None  # the turn's answer / decision / review
    error: str | None


class State(InputState, OutputState, total=False):
    """Everything the graph keeps per thread."""

    matched_by: str | None
    resolved_ref: str | None  # the reference `customer_id` was resolved from
    turn: int
    step: int  # planning steps taken in this turn
    plan: Annotated[list[PlanStep], operator.add]
    refs: Annotated[list[SliceRef], operator.add]
    pending: list[dict[str, Any]]  # fetch jobs of the current step
