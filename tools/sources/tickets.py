"""Tickets to triage: read from the support source (Zendesk, ...) or from a JSON file.

The support source is read through its configured URL and mapping (entity
``ticket_request``: a ticket joined to its requester). Ticket text is written by
customers: untrusted data, never instructions.

Which tickets wait for triage: statuses ``new``, ``open`` and ``pending`` (the
mapping's ``triage_statuses`` setting). ``hold`` tickets wait on a third party and
``solved`` / ``closed`` ones are done, so neither is triaged again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from pydantic import BaseModel, Field, ValidationError, field_validator
from sqlalchemy import Select, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from tools.guard import summarize
from tools.mapping.conversions import MappingError, RowError
from tools.mapping.engine import Entity, EntityPart
from tools.settings import Settings
from tools.sources.base import is_email
from tools.sources.registry import reader

TRIAGE_STATUSES: tuple[str, ...] = ("new", "open", "pending")
"""Default statuses of tickets waiting for triage (overridden by the mapping's ``triage_statuses``)."""

TICKET_ENTITY = "ticket_request"
_STREAM_BATCH = 500

MAX_JSON_BYTES = 1_048_576
"""Largest JSON document accepted as input (a ticket file, an HTTP API body): 1 MiB."""
MAX_JSON_DEPTH = 32
"""Deepest nesting of objects and arrays accepted in JSON input (a ticket needs 1, an API body 2)."""
MAX_SUBJECT_CHARS = 1_000
"""Longest subject of a ticket given as input (a file, an API body, an MCP call)."""
MAX_DESCRIPTION_CHARS = 65_536
"""Longest description of a ticket given as input; Zendesk caps a comment at 64 KiB too."""
MAX_EMAIL_CHARS = 320
"""Longest requester email of a ticket given as input (an address has at most 254)."""


class TicketSourceUnavailable(RuntimeError):
    """The support source is not connected, or cannot be read; the message says which and why."""


class TicketNotFound(LookupError):
    """No ticket with that id in the support source — or none the caller may see: a ticket of a customer
    the caller's row filter hides, or of another customer than the one the caller named, is reported
    with this same error and message."""

    def __init__(self, ticket_id: str, hint: str = ""):
        self.ticket_id = ticket_id
        super().__init__(f"no ticket {ticket_id} in the support source{hint}")


class JsonInputError(ValueError):
    """JSON input that cannot be used: not JSON, NaN or Infinity, too large or too deeply
    nested. The message is one line; ``too_large`` tells a size refusal (HTTP 413) apart."""

    def __init__(self, message: str, too_large: bool = False):
        super().__init__(message)
        self.too_large = too_large


class TicketInput(BaseModel):
    """A support ticket to triage. Subject and description are untrusted customer text."""

    id: str | None = Field(default=None, description="Ticket id in the support source; None for a ticket "
                           "that is not stored anywhere yet.")
    subject: str = Field(default="", description="Subject line, as the requester wrote it (untrusted text).")
    description: str = Field(default="", description="Body, as the requester wrote it (untrusted text).")
    requester_email: str | None = Field(default=None, description="Email address of the person asking.")
    requester_name: str | None = Field(default=None, description="Name of the person asking.")
    created_at: datetime | None = Field(default=None, description="When the ticket was opened (UTC).")
    status: str | None = Field(default=None, description="Support-source status: new, open, pending, ...")
    issue_type: str | None = Field(
        default=None, description="What the requester picked in the ticket form (billing, bug, sso, ...): "
        "source data and a weak hint, not the triage category.")
    organization_id: str | None = Field(default=None, description="Support-source organization of the requester.")
    via: str | None = Field(default=None, description="Channel the ticket came in by: email, web, chat, api.")

    @field_validator("id", "organization_id", mode="before")
    @classmethod
    def _id_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("created_at")
    @classmethod
    def _naive_utc(cls, v: datetime | None) -> datetime | None:
        return v.astimezone(UTC).replace(tzinfo=None) if v is not None and v.tzinfo else v

    @property
    def text(self) -> str:
        """Subject and description together: what the triage rules read."""
        return f"{self.subject}\n{self.description}".strip()

    def customer_refs(self) -> list[str]:
        """The references that say whose ticket this is, in order: the requester's email, then the
        requester's support organization (``support:<id>``). A ticket belongs to the customer the
        first of them resolves to; callers resolve them as their principal may (a hidden customer's
        ticket is not found, like a missing one)."""
        refs = [self.requester_email, f"support:{self.organization_id}" if self.organization_id else None]
        return [r for r in refs if r]


# ------------------------------------------------------------------- support source
def _ticket_entity(settings: Settings) -> tuple[Entity, Any]:
    rdr = reader(settings, "support")
    if rdr is None:
        raise TicketSourceUnavailable(
            "the support source is not connected, so tickets cannot be read: set CUSTCTX_SOURCES__SUPPORT__URL "
            "(and __MAPPING) or pass the ticket as a JSON file")
    try:
        return rdr.mapping.entity(TICKET_ENTITY), rdr
    except MappingError as exc:
        raise TicketSourceUnavailable(f"the support mapping cannot read tickets: {exc}") from None


def _statuses(rdr: Any) -> list[str]:
    return list(rdr.mapping.settings.get("triage_statuses", TRIAGE_STATUSES))


def _to_ticket(row: dict[str, Any]) -> TicketInput:
    return TicketInput(
        id=row["id"], subject=row.get("subject") or "", description=row.get("description") or "",
        requester_email=row.get("requester_email"), requester_name=row.get("requester_name"),
        created_at=row.get("created_at"), status=row.get("status"), issue_type=row.get("issue_type"),
        organization_id=row.get("organization_id"), via=row.get("via"))


def get_ticket(settings: Settings, ticket_id: str) -> TicketInput:
    """One ticket with its requester's email and name and its organization id.

    Raises:
        TicketNotFound: the id is not a ticket id, or no such ticket exists.
        TicketSourceUnavailable: the support source is not connected or fails.
    """
    ref = str(ticket_id).strip().removeprefix("#")
    if not re.fullmatch(r"[0-9]{1,19}", ref):
        raise TicketNotFound(repr(str(ticket_id)), " (ticket ids are numbers, e.g. 1001)")
    entity, rdr = _ticket_entity(settings)
    try:
        with rdr.engine.connect() as conn:
            fetched = entity.rows(conn, where=lambda p: [p.eq("id", ref)], limit=1)
    except SQLAlchemyError as exc:
        raise TicketSourceUnavailable(f"the support source failed reading ticket {ref}: {summarize(exc)}") from None
    if not fetched.rows:
        hint = f" (its row is malformed: {fetched.errors[0]})" if fetched.errors else ""
        raise TicketNotFound(ref, hint)
    return _to_ticket(fetched.rows[0])


def open_tickets(settings: Settings, limit: int | None = None) -> Iterator[TicketInput]:
    """Tickets waiting for triage (new, open, pending), oldest first, streamed from the source.

    The query runs at once, so a source that is not connected or fails raises here, not
    at the first ``next``; rows are then fetched in batches as the iterator is consumed
    (malformed rows are skipped). The connection is released when the iterator is
    exhausted, closed or garbage-collected.

    Raises:
        TicketSourceUnavailable: the support source is not connected or fails.
    """
    entity, rdr = _ticket_entity(settings)
    if len(entity.parts) > 1:
        raise TicketSourceUnavailable(f"the support mapping's {TICKET_ENTITY!r} entity must be one table")
    part = entity.part
    stmt = entity.select(list(part.fields)).where(part.in_("status", _statuses(rdr))) \
        .order_by(part.col("created_at").asc(), part.col("id").asc())
    if limit is not None:
        stmt = stmt.limit(max(0, limit))
    stream = _stream(rdr.engine, part, stmt)
    next(stream)  # connect and execute now
    return cast(Iterator[TicketInput], stream)


def _stream(engine: Engine, part: EntityPart, stmt: Select[Any]) -> Iterator[TicketInput | None]:
    """Yields None once the query has run (see ``open_tickets``), then the tickets."""
    names = list(part.fields)
    try:
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=_STREAM_BATCH).execute(stmt)
            yield None
            for raw in result:
                try:
                    row = {n: part.fields[n].to_python(v) for n, v in zip(names, raw, strict=True)}
                except RowError:
                    continue
                yield _to_ticket(row)
    except SQLAlchemyError as exc:
        raise TicketSourceUnavailable(f"the support source failed listing open tickets: {summarize(exc)}") from None


def count_open_tickets(settings: Settings) -> int:
    """How many tickets wait for triage (for progress bars)."""
    entity, rdr = _ticket_entity(settings)
    part = entity.part
    stmt = select(func.count()).select_from(part.from_clause).where(part.in_("status", _statuses(rdr)))
    try:
        with rdr.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())
    except SQLAlchemyError as exc:
        raise TicketSourceUnavailable(f"the support source failed counting open tickets: {summarize(exc)}") from None


# ------------------------------------------------------------------------ files
def ticket_from_file(path: Path) -> TicketInput:
    """A ticket from a JSON file ``{"subject": ..., "description": ..., "requester_email": ...}``.

    At least one of subject and description must be non-empty; the other keys are the
    fields of :class:`TicketInput`.

    Raises:
        ValueError: one line naming the file and what is wrong with it.
    """
    path = Path(path)
    try:
        if path.stat().st_size > MAX_JSON_BYTES:  # not read at all: the file could be anything
            raise ValueError(f"{path}: the ticket file is larger than {MAX_JSON_BYTES:,} bytes")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the ticket file: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = load_json_input(text)
    except JsonInputError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with subject and description, got {type(data).__name__}")
    unknown = sorted(set(data) - set(TicketInput.model_fields))
    if unknown:
        shown = ", ".join(repr(k[:40]) for k in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise ValueError(f"{path}: unknown key(s) {shown}; known: {', '.join(TicketInput.model_fields)}")
    try:
        ticket = TicketInput.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'ticket'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{path}: {problems}") from None
    try:
        check_ticket_input(ticket)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return ticket


def check_ticket_input(ticket: TicketInput) -> None:
    """Refuse a ticket given as input (not read from the support source) that cannot be triaged:
    no subject and no description, text over the limits, a requester email that is not one.

    Raises:
        ValueError: one line saying what is wrong.
    """
    if not ticket.subject.strip() and not ticket.description.strip():
        raise ValueError("the ticket needs a subject or a description")
    for name, text, limit in (("subject", ticket.subject, MAX_SUBJECT_CHARS),
                              ("description", ticket.description, MAX_DESCRIPTION_CHARS),
                              ("requester_email", ticket.requester_email or "", MAX_EMAIL_CHARS)):
        if len(text) > limit:
            raise ValueError(f"the ticket's {name} has {len(text):,} characters; at most {limit:,} are accepted")
    if ticket.requester_email is not None and not is_email(ticket.requester_email):
        raise ValueError(f"requester_email {ticket.requester_email!r} is not an email address")


# ------------------------------------------------------------------- JSON input
def _refuse_constant(name: str) -> Any:
    raise JsonInputError(f"{name} is not a JSON number: send finite numbers only")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise JsonInputError(f"the number {text[:40]} is too large: send finite numbers only")
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_structure(data: Any, max_depth: int) -> None:
    """Refuse nesting deeper than ``max_depth`` and strings that are not text (an unpaired
    surrogate such as ``"\\ud800"`` cannot be stored, matched or encoded as UTF-8)."""
    stack = [(data, 1)] if isinstance(data, str | dict | list) else []
    while stack:  # iterative: a deep document must not exhaust Python's recursion here either
        value, depth = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise JsonInputError("a JSON string holds an unpaired surrogate (e.g. \\ud800): send valid text")
            continue
        if depth > max_depth:  # only strings, objects and arrays are on the stack
            raise JsonInputError(f"the JSON document nests deeper than {max_depth} levels")
        children = [*value, *value.values()] if isinstance(value, dict) else value
        stack.extend((child, depth + 1) for child in children if isinstance(child, str | dict | list))


def load_json_input(text: str | bytes, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON that came from outside (a ticket file, an HTTP API body) within limits.

    Refused, each with a one-line :class:`JsonInputError`: more than ``max_bytes`` bytes,
    objects and arrays nested deeper than ``max_depth``, ``NaN`` / ``Infinity`` / a number
    too large for a float (Python's json accepts them; JSON does not), integers too long
    to convert, text that is not JSON.
    """
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise JsonInputError(f"the JSON document has {size:,} bytes; at most {max_bytes:,} are accepted",
                             too_large=True)
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except JsonInputError:
        raise
    except json.JSONDecodeError as exc:
        raise JsonInputError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:  # the C scanner stops at the interpreter's limit, far beyond max_depth
        raise JsonInputError(f"the JSON document nests deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:  # e.g. an integer of more than 4,300 digits
        raise JsonInputError(f"not valid JSON: {' '.join(str(exc).split())[:200]}") from None
    _check_structure(data, max_depth)
    return data
