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

from sqlalchemy import bindparam, func, select, type_coerce
from sqlalchemy.engine import Connection
from sqlalchemy.types import NullType

from tools.mapping.engine import IN_CHUNK, ROW_TAMPER, SKIP_TALLY, Entity, EntityPart, Fetched

Fetch = Callable[[Connection, Sequence[Any]], dict[Any, Any]]
#: Rows fetched from the driver at a time by a set-based statement (streamed, not loaded whole).
STREAM_ROWS = 2_000


class NeedRows(BaseException):  # noqa: N818 - a control-flow signal, not an error; no reader may catch it
    """A method in a batch asked for rows that are not loaded yet (noted; it is run again)."""


class RowBatch:
    """What one bulk read has loaded, per kind of lookup (its signature) and key."""

    def __init__(self) -> None:
        self.loaded: dict[Hashable, dict[Any, Any]] = {}
        self.wanted: dict[Hashable, set[Any]] = {}
        self.fetchers: dict[Hashable, Fetch] = {}
        self.kept: set[Hashable] = set()
        self.missed = False  # a lookup was answered by a placeholder this run (see :meth:`get`)

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
        empty = getattr(fetch, "empty", None)
        if empty is None:
            raise NeedRows(sig)
        # A set-based lookup: answer with empty placeholders and let the method run on, so
        # every lookup it makes that does not depend on this one is noted in the same run
        # (one run per chain of dependent lookups, not one per lookup); its result is thrown
        # away (``missed``) and it runs again once the batch has loaded.
        self.missed = True
        return {k: got[k] if k in got else empty() for k in keys}

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


class SetLookup:
    """The set-based statement behind one kind of :meth:`SourceReader.lookup` in a bulk read.

    ``field IN (keys of the whole chunk)``, the lookup's ``where`` and ``window`` pushed
    down, only the ``fields`` the slice reads, and — when the lookup orders and limits —
    ``ROW_NUMBER() OVER (PARTITION BY field ORDER BY ...) <= limit`` so the database keeps
    the newest N of every key instead of sending all of them; rows are streamed back
    (``yield_per``) and converted into a :class:`Fetched` per key. A per-customer read of
    one key is the same statement with one key, so both paths see the same rows.
    """

    empty = Fetched

    def __init__(self, entity: Entity, field: str, where: Sequence[tuple[str, Any]] = (),
                 window: tuple[str, Any, Any] | None = None, fields: Sequence[str] | None = None,
                 order_by: str | None = None, descending: bool = True, limit: int | None = None):
        self.entity, self.field, self.where, self.window = entity, field, tuple(where), window
        self.fields, self.order_by, self.descending, self.limit = fields, order_by, descending, limit

    def statement(self, p: EntityPart, names: list[str]) -> Any:
        """The part's statement, its keys the expanding parameter ``keys``."""
        key = type_coerce(p.col(self.field), NullType()).label("_key_")
        keys: Any = bindparam("keys", expanding=True)
        stmt = self.entity.select(names, p).add_columns(key).where(p.col(self.field).in_(keys))
        for k, v in self.where:
            stmt = stmt.where(p.eq(k, v))
        if self.window:
            stmt = stmt.where(*p.within(*self.window))
        if self.limit is None:
            return stmt
        if self.order_by and p.maps(self.order_by):  # an optional order field left out: no order (as single reads)
            c = p.col(self.order_by)
            order = c.desc().nulls_last() if self.descending else c.asc().nulls_first()
            rank = func.row_number().over(partition_by=p.col(self.field), order_by=order)
        else:
            rank = func.row_number().over(partition_by=p.col(self.field))
        ranked = stmt.add_columns(rank.label("_rank_")).subquery("ranked")
        cols = [ranked.c[n] for n in names]
        return select(*cols, ranked.c["_key_"]).where(ranked.c["_rank_"] <= self.limit)

    def _statement(self, i: int, p: EntityPart, names: list[str]) -> Any:
        """The statement of part ``i``, built once per shape for the entity (see ``Entity.statements``)."""
        shape = ("set", i, self.field, self.where, self.window, tuple(names), self.order_by, self.descending,
                 self.limit)
        stmt = self.entity.statements.get(shape)
        if stmt is None:
            stmt = self.entity.statements[shape] = self.statement(p, names)
        return stmt

    def __call__(self, conn: Connection, values: Sequence[Any]) -> dict[Any, Fetched]:
        out: dict[Any, Fetched] = {}
        tamper = ROW_TAMPER.get()
        token = SKIP_TALLY.set(None)  # counted against each customer by the lookup that takes the rows
        try:
            for i, p in enumerate(self.entity.parts):
                names = list(self.fields or p.names)  # optional fields left out come back as null keys
                conv = p.converter(names)
                by_raw: dict[str, list[Any]] = {}  # raw keys compared as text, as the driver returns them
                raws: list[Any] = []
                for v, raw in p.fields[self.field].in_source(values):
                    if str(raw) not in by_raw:
                        raws.append(raw)
                    by_raw.setdefault(str(raw), []).append(v)
                if not raws:
                    continue
                stmt = self._statement(i, p, names)
                for j in range(0, len(raws), IN_CHUNK):
                    result = conn.execute(stmt, {"keys": raws[j:j + IN_CHUNK]},
                                          execution_options={"yield_per": STREAM_ROWS})
                    for rows in result.partitions():  # streamed, a driver fetch at a time
                        for raw in rows:
                            row = raw[:-1]
                            for v in by_raw.get(str(raw[-1]), ()):
                                fetched = out.get(v)
                                if fetched is None:
                                    fetched = out[v] = Fetched()
                                fetched.add_converted(conv, tamper(p.table, names, row) if tamper else row)
        finally:
            SKIP_TALLY.reset(token)
        # a key without rows: one shared empty result (lookups copy what they take, never change it)
        none = Fetched()
        return {v: out.get(v, none) for v in values}


class SetAggregate:
    """The set-based statement behind a declared aggregate in a bulk read (``Entity.aggregate``):
    one ``GROUP BY`` statement per chunk of keys, so the rows are summed, counted or compared
    by the database and never shipped to Python; a single customer's read runs the same
    statement with one key. Placeholder-aware like :class:`SetLookup` (no round of its own)."""

    def __init__(self, entity: Entity, name: str):
        self.entity, self.name = entity, name

    @staticmethod
    def empty() -> None:
        """A placeholder while a bulk read notes what its methods need (never in a slice)."""
        return None

    def __call__(self, conn: Connection, values: Sequence[Any]) -> dict[Any, Any]:
        return self.entity.aggregate(conn, self.name, values)
