"""What the reads of one request share (``tools.context.read`` uses these; ``ReadScope.memo`` holds
them): the source readers it built, the snapshots its row check read from long-term memory, and one
connection per local warehouse while it reads a customer's slices inline.

A served read of a cached customer is a row check (its ``crm.account``) and a few slices from memory:
the row check reads the slices the request reads next (:func:`will_read`) in the same query, and
checks and parses only the account until the customer is seen; the slices' read takes those rows
(once) instead of reading memory again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from tools.context.scope import ReadScope
from tools.memory import CachedSlice
from tools.settings import SourceConfig
from tools.slices import SLICE_MODELS
from tools.sources.base import SHARED_CONNECTIONS, CustomerRef, SourceReader
from tools.sources.registry import reader


def will_read(scope: ReadScope, names: Iterable[str]) -> None:
    """Tell the request which slices it reads next: its row check reads their snapshots together
    with the ``crm.account`` it judges, in one query — and checks and parses only that one, the
    others once the customer is seen (a hidden customer costs what a missing one does)."""
    scope.memo[_WANT] = [n for n in names if n != "crm.account" and scope.allows(n)]


@dataclass(frozen=True)
class Held:
    """What a row check read from memory: its ``crm.account`` as a snapshot, the slices the request
    reads next as read (``asked``: every name the query asked for; absent from ``rows``: none held)."""

    parsed: dict[str, CachedSlice]
    rows: list[tuple[str, Any]]
    asked: frozenset[str]


def row_check_read(scope: ReadScope, customer_id: str) -> Held:
    """The row check's one memory query: the customer's ``crm.account`` (checked and parsed) and
    the slices :func:`will_read` named (only read)."""
    assert scope.memory is not None
    want = ["crm.account", *scope.memo.get(_WANT, ())]  # type: ignore[misc]
    rows = scope.memory.rows(customer_id, want)
    return Held(scope.memory.snapshots(customer_id, [r for r in rows if r[0] == "crm.account"]),
                 [r for r in rows if r[0] != "crm.account"], frozenset(want))


def scope_reader(scope: ReadScope, source: str) -> SourceReader | None:
    """``registry.reader`` of a source, built once per request (the row check and the slices share
    it). A reader with an injected fault is built for every read, as it counts its calls."""
    if scope.settings.faults:
        return reader(scope.settings, source)
    key = (_READER, source)
    if key not in scope.memo:
        scope.memo[key] = reader(scope.settings, source)
    return scope.memo[key]  # type: ignore[return-value]


def snapshots(scope: ReadScope, customer: CustomerRef, names: list[str]) -> dict[str, CachedSlice]:
    """The customer's snapshots of ``names`` in memory: what the request's row check read just
    before (taken, once), the rest in one query."""
    memory, cid = scope.memory, customer.customer_id
    assert memory is not None
    held: Held | None = scope.memo.pop((_HELD, cid), None)  # type: ignore[assignment]
    if held is None:
        return memory.get_many(cid, names)
    out = {n: c for n, c in held.parsed.items() if n in names}
    out.update(memory.snapshots(cid, [(k, v) for k, v in held.rows if k in names and k not in out]))
    if rest := [n for n in names if n not in held.asked]:
        out.update(memory.get_many(cid, rest))
    return out


def source_config(scope: ReadScope, source: str) -> SourceConfig:
    """``Settings.source`` of a source, looked up once per request."""
    key = (_SOURCE, source)
    if key not in scope.memo:
        scope.memo[key] = scope.settings.source(source)
    return scope.memo[key]  # type: ignore[return-value]


def hand_on(scope: ReadScope, customer_id: str, held: Held) -> None:
    """Keep what the row check read for the request's read of the customer's slices."""
    scope.memo[_HELD, customer_id] = held


def forget(scope: ReadScope, customer_id: str) -> None:
    """Drop what the row check read (a live read is writing newer snapshots)."""
    scope.memo.pop((_HELD, customer_id), None)


_HELD, _READER, _SOURCE, _WANT = "held", "reader", "source", "want"  # keys of ReadScope.memo


@contextmanager
def one_connection(readers: dict[str, SourceReader | None], live: list[str]) -> Iterator[None]:
    """While inline reads run: one connection per local SQLite engine that two or more of them
    read (sources in one warehouse), shared by those reads (``SHARED_CONNECTIONS``)."""
    engines = Counter(r.engine for n in live if (r := readers.get(SLICE_MODELS[n].source)) is not None)
    with ExitStack() as stack:
        shared = {e: stack.enter_context(e.connect()) for e, k in engines.items() if k > 1 and e.dialect.name == "sqlite"}
        token = SHARED_CONNECTIONS.set(shared or None)
        try:
            yield
        finally:
            SHARED_CONNECTIONS.reset(token)
