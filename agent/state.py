"""Graph state: conversation state for the checkpointer — never slice data.

Slices live in long-term memory (the Store); the state keeps *references* to the slices
each turn used (name, source, record ids, when fetched, or the gap), the resolved
customer and the plan. Lists that grow over turns use an explicit ``operator.add``
reducer; everything else is last-write-wins.

Each graph publishes its own input and output schema (``AssistantInput`` …), so LangGraph
Studio and clients see what it takes and returns. ``typing_extensions.TypedDict``: LangGraph
cannot build schemas from ``typing.TypedDict`` on Python < 3.12.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict

from agent.results import AnswerResult, ReviewResult, TriageResult


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


class ModelCall(TypedDict):
    """One model call of a turn and its tokens (the model's usage; the offline model counts
    exactly what a hosted model would be sent, tool definitions included)."""

    turn: int
    purpose: str  # "tools" (tools bound), "answer" (no tools: the answer), "structured", "retry"
    input_tokens: int
    output_tokens: int


class FetchJob(TypedDict):
    """One slice to fetch for the current step (the payload of a ``Send``)."""

    customer_id: str
    slice: str
    turn: int
    step: int
    tool_call_id: str | None


# ------------------------------------------------------------------ inputs
class AssistantInput(TypedDict, total=False):
    """A question about a customer."""

    messages: Annotated[list[AnyMessage], add_messages]  # the user's question (a human message)
    customer: str  # email, domain, id or name; optional on a thread that already has one


class TriageInput(TypedDict, total=False):
    """A ticket to triage."""

    ticket: dict[str, Any]  # a TicketInput as JSON: subject, description, requester_email, organization_id, …
    customer: str  # optional: the customer, when the ticket's requester is not enough


class ReviewInput(TypedDict):
    """An account to review."""

    customer: str  # email, domain, id or name


# ------------------------------------------------------------------ outputs
class _Outcome(TypedDict, total=False):
    customer_id: str | None
    customer_name: str | None
    error: str | None  # why the run could not start (unknown customer, …); result is None then


class AssistantOutput(_Outcome, total=False):
    """The turn's answer with its citations, slices, gaps and plan."""

    result: AnswerResult | None


class TriageOutput(_Outcome, total=False):
    """The triage decision with its evidence."""

    result: TriageResult | None


class ReviewOutput(_Outcome, total=False):
    """The account review as markdown and JSON."""

    result: ReviewResult | None


class State(TypedDict, total=False):
    """Everything a graph keeps per thread."""

    messages: Annotated[list[AnyMessage], add_messages]
    customer: str
    ticket: dict[str, Any]
    customer_id: str | None
    customer_name: str | None
    result: dict[str, Any] | None
    error: str | None
    matched_by: str | None
    resolved_ref: str | None  # the reference `customer_id` was resolved from
    turn: int
    step: int  # planning steps taken in this turn
    plan: Annotated[list[PlanStep], operator.add]
    refs: Annotated[list[SliceRef], operator.add]
    pending: list[FetchJob]  # fetch jobs of the current step (the fixed-step workflows)
    calls: Annotated[list[ModelCall], operator.add]  # every model call, with its turn and tokens
    tool_calls_used: int  # tool calls of this turn, valid or not
    ended_by: str | None  # the budget that ended this turn's tool calling, if one did
