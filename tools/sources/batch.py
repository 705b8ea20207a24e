"""Bulk reads: one source's slices for a chunk of customers in a few queries.

A reader's ``read_<slice>`` method asks for rows through :meth:`SourceReader.lookup`
(or :meth:`SourceReader.batched` for its own query). Read for one customer, that is an
ordinary query. Inside :meth:`SourceReader.read_many`, a :class:`RowBatch` is active
instead: every customer's method runs until it asks for rows the batch has not loaded
yet, which raises :class:`NeedRows` after noting the keys it wanted; then one query per
kind of lookup loads the keys of *all* the customers that stopped, and the stopped
methods run again. A method with N dependent lookups (tickets, then their history)
takes N + 1 rounds, whatever the number of customers, so a chunk of 100 customers costs
a few dozen queries instead of thousands, and each slice is built by the same code as a
single read.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from contextvars import ContextVar
from typing import Any

from sqlalchemy.engine import Connection

Fetch = Callable[[Connection, Sequence[Any]], dict[Any, Any]]


class NeedRows(BaseException):  # noqa: N818 - a control-flow signal, not an error; no reader may catch it
    """A method in a batch asked for rows that are not loaded yet (noted; it is run again)."""


class RowBatch:
    """What one bulk read has loaded, per kind of lookup (its signature) and key."""

    def __init__(self) -> None:
        self.loaded: dict[Hashable, dict[Any, Any]] = {}
        self.wanted: dict[Hashable, set[Any]] = {}
        self.fetchers: dict[Hashable, Fetch] = {}
        self.kept: set[Hashable] = set()

    def get(self, sig: Hashable, keys: Iterable[Any], fetch: Fetch, keep: bool = False) -> dict[Any, Any]:
        """The loaded values of ``keys``, or NeedRows after noting the missing ones.

        ``keep``: the values do not depend on the customers (a time window of a whole
        table), so they are kept for every later chunk the batch is used for."""
        if keep:
            self.kept.add(sig)
        got = self.loaded.get(sig, {})
        try:
            return {k: got[k] for k in keys}  # the common case: all loaded
        except KeyError:
            pass
        self.wanted.setdefault(sig, set()).update(k for k in keys if k not in got)
        self.fetchers[sig] = fetch
        raise NeedRows(sig)

    def load(self, conn: Connection) -> None:
        """Run one fetch per kind of lookup for every key noted since the last load."""
        wanted, self.wanted = self.wanted, {}
        for sig, keys in wanted.items():
            ordered = sorted(keys, key=repr)  # deterministic queries
            got = self.fetchers[sig](conn, ordered)
            store = self.loaded.setdefault(sig, {})
            for k in ordered:
                store[k] = got[k]

    def next_chunk(self) -> None:
        """Forget what was loaded for the last chunk's customers (kept lookups stay)."""
        self.loaded = {sig: v for sig, v in self.loaded.items() if sig in self.kept}


ROW_BATCH: ContextVar[RowBatch | None] = ContextVar("custctx_row_batch", default=None)

#: Rounds a bulk read may take (a method's chain of dependent lookups, plus one).
MAX_ROUNDS = 12


def in_batch() -> bool:
    """Whether the current read is part of a bulk read."""
    return ROW_BATCH.get() is not None
