"""Facts a user supplies about a customer ("their onboarding finished last week").

No connected source holds some context a conversation needs (onboarding status, NPS, budget);
the assistant asks for it, and what the user tells us is kept in long-term memory next to the
customer's slices — the same LangGraph store, in a namespace of its own under the principal's
tenant and the customer (``ContextMemory.namespace`` + ``("user_facts",)``), one item per fact —
with provenance ``user``: who said it and when. Facts are untrusted text: shown quoted, never
followed as instructions.

One item per fact, never a list read, extended and written back: two notes recorded at the same
moment (two threads, two processes, two servers on one store) are two puts of two keys, so
neither overwrites the other. Keys sort by when the fact was told (then by a nanosecond stamp and
a random suffix), so listing the namespace and sorting its keys gives the facts oldest first.
Facts an older version kept as one list under the customer's ``user_facts`` key are moved to
items of their own on the first read or write (deterministic keys: two processes moving them at
once write the same items; the list is deleted after). A read asks the store once: the old list's
key and the first page of items in one store batch.

Both ways go through the access gate: the customer must have been resolved in the same scope
(so the row filter judged it: a hidden customer is not found), and every write and read appends
one audit record (slice ``user_facts``). Facts never expire (no TTL): they are the user's word,
dated, and shown with their date.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal, cast

from langgraph.store.base import BaseStore, GetOp, Item, PutOp, SearchOp
from pydantic import BaseModel, Field

from tools.context.assembly import CustomerContext
from tools.context.scope import ReadScope
from tools.context.view import ToldContext
from tools.memory import ContextMemory

USER_FACTS_KEY = "user_facts"  # the audit records' slice, the facts' namespace label, the old list's key
MAX_FACT_CHARS = 1000
MAX_FACTS = 200  # per customer and tenant: the newest are shown, the oldest dropped beyond it
_PAGE = 500  # items per store search while listing a customer's facts
EMPTY_FACT = "a fact needs some text, e.g. custctx note <customer> \"their onboarding finished last week\""
LONG_FACT = f"a fact is at most {MAX_FACT_CHARS} characters; split it into shorter notes"
NO_MEMORY = "user facts need long-term memory (CUSTCTX_STATE_URL); this read scope has none"
NOT_RESOLVED = "resolve the customer in this scope first (the row check decides whether the principal may see it)"


class FactError(ValueError):
    """A fact that cannot be recorded: the message says what was wrong and what to do."""


class UserFact(BaseModel):
    """One fact a user supplied, with its provenance."""

    text: str = Field(description="What the user said, as they said it (untrusted text).")
    by: str = Field(description="Who said it: the principal's user name.")
    role: str = Field(description="The principal's role when they said it.")
    at: datetime = Field(description="When it was recorded (UTC, wall clock).")
    provenance: Literal["user"] = "user"


def facts_namespace(memory: ContextMemory, customer_id: str) -> tuple[str, ...]:
    """The namespace of one customer's facts: the customer's memory namespace plus ``user_facts``."""
    return (*memory.namespace(customer_id), USER_FACTS_KEY)


def _stamp(at: datetime) -> str:
    """``at`` in UTC as text that sorts as time does (a naive time is taken as UTC)."""
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return at.strftime("%Y%m%dT%H%M%S%fZ")


def fact_key(at: datetime) -> str:
    """A new fact's key: when it was told, then the wall clock in nanoseconds (facts told at one
    instant of a fixed clock keep the order they were recorded in), then a random suffix (two
    processes in the same nanosecond still write two keys)."""
    return f"{_stamp(at)}-{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"


def _legacy_key(at: datetime, i: int, raw: dict[str, Any]) -> str:
    """The key of the ``i``-th fact of an old single-key list: the same in every process (so two
    migrations write the same items), before any new fact told at the same instant."""
    digest = hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{_stamp(at)}-{i:020d}-{digest}"


def _check(scope: ReadScope, customer_id: str) -> None:
    if scope.memory is None:
        raise FactError(NO_MEMORY)
    if scope.access is not None and scope.access.verdict(customer_id) is not True:
        raise FactError(NOT_RESOLVED)


def _migrate(store: BaseStore, memory: ContextMemory, customer_id: str) -> None:
    """Move an old single-key list of facts (``user_facts`` in the customer's namespace) to one item
    per fact, then delete the list. Idempotent: the items' keys are derived from the facts."""
    ns = memory.namespace(customer_id)
    item = store.get(ns, USER_FACTS_KEY, refresh_ttl=False)
    if item is None:
        return
    raw_facts = item.value.get("facts")
    ops: list[PutOp] = []
    for i, raw in enumerate(raw_facts if isinstance(raw_facts, list) else []):
        try:
            fact = UserFact.model_validate(raw)
        except ValueError:  # a damaged entry was never shown; it is not carried over either
            continue
        ops.append(PutOp(facts_namespace(memory, customer_id), _legacy_key(fact.at, i, raw),
                         fact.model_dump(mode="json"), index=False))
    store.batch([*ops, PutOp(ns, USER_FACTS_KEY, None)])  # the items first, then the list goes


def _items(store: BaseStore, memory: ContextMemory, customer_id: str,
           first: list[Item] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(key, value) of every fact item of the customer, oldest first (``first``: the first page,
    already searched)."""
    ns = facts_namespace(memory, customer_id)
    found: dict[str, dict[str, Any]] = {}
    offset = 0
    while True:
        page = first if first is not None and not offset else store.search(ns, limit=_PAGE, offset=offset,
                                                                           refresh_ttl=False)
        found.update((it.key, it.value) for it in page if tuple(it.namespace) == ns)
        if len(page) < _PAGE:
            break
        offset += _PAGE
    return sorted(found.items())


def _read_items(memory: ContextMemory, customer_id: str) -> list[tuple[str, dict[str, Any]]]:
    """:func:`_items` for a read: the old list's key and the first page of items asked in one store
    batch (one transaction); only when an old list is there is it moved and the items listed again."""
    store = memory.store
    legacy, page = store.batch([GetOp(memory.namespace(customer_id), USER_FACTS_KEY, refresh_ttl=False),
                                SearchOp(facts_namespace(memory, customer_id), limit=_PAGE, refresh_ttl=False)])
    if legacy is not None:
        _migrate(store, memory, customer_id)
        return _items(store, memory, customer_id)
    return _items(store, memory, customer_id, first=cast(list[Item], page))


def record_fact(scope: ReadScope, customer_id: str, text: str) -> UserFact:
    """Keep ``text`` as a fact about the customer, by the scope's principal, audited.

    One new item in the customer's facts namespace: a concurrent note cannot overwrite it. Beyond
    :data:`MAX_FACTS` the oldest items are deleted (deleting one twice is harmless).

    Raises:
        FactError: empty or too long text; no long-term memory; the customer was not resolved
            (row-checked) in this scope.
    """
    text = " ".join((text or "").split())
    if not text:
        raise FactError(EMPTY_FACT)
    if len(text) > MAX_FACT_CHARS:
        raise FactError(LONG_FACT)
    _check(scope, customer_id)
    memory = scope.memory
    assert memory is not None
    store = memory.store
    p = scope.principal
    at = (scope.access.clock() if scope.access is not None else datetime.now(UTC))
    fact = UserFact(text=text, by=p.user if p else "custctx", role=p.role if p else "system", at=at)
    _migrate(store, memory, customer_id)
    ns = facts_namespace(memory, customer_id)
    store.put(ns, fact_key(at), fact.model_dump(mode="json"), index=False)
    if len(items := _items(store, memory, customer_id)) > MAX_FACTS:
        store.batch([PutOp(ns, key, None) for key, _ in items[:-MAX_FACTS]])
    if scope.access is not None:
        scope.access.record(customer_id, USER_FACTS_KEY, "allowed", "recorded", 0.0,
                            f"user fact recorded ({len(text)} characters)")
    return fact


def user_facts(scope: ReadScope, customer_id: str) -> list[UserFact]:
    """The facts users supplied about the customer, oldest first (the newest :data:`MAX_FACTS`);
    one audit record when there are any.

    A customer not resolved in this scope (or a scope without memory) has none to show.
    """
    if scope.memory is None or (scope.access is not None and scope.access.verdict(customer_id) is not True):
        return []
    facts = []
    for _, raw in _read_items(scope.memory, customer_id)[-MAX_FACTS:]:
        try:
            facts.append(UserFact.model_validate(raw))
        except ValueError:  # a damaged entry is left out, never shown half-read
            continue
    if facts and scope.access is not None:
        scope.access.record(customer_id, USER_FACTS_KEY, "allowed", "memory", 0.0, f"{len(facts)} user fact(s)")
    return facts


def with_facts(scope: ReadScope, ctx: CustomerContext, facts: Sequence[UserFact] | None = None) -> ToldContext:
    """``ctx`` with the facts users supplied about its customer — ``facts`` when given (already read),
    else read now through the gate (audited): the reference view then shows them as ``user_facts``."""
    if facts is None:
        facts = user_facts(scope, ctx.customer_id)
    return ToldContext.model_construct(**dict(ctx), user_facts=[f.model_dump(mode="json") for f in facts])
