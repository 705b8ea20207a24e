"""What every source reader shares: the customer it reads for, the clock, provenance."""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Iterable, Sequence
from collections.abc import Mapping as MappingOf
from contextlib import nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine

from tools.guard import DEADLINE, MalformedSource
from tools.mapping.engine import IN_CHUNK, SKIP_TALLY, Fetched, Mapping, count_skipped, order_rows
from tools.settings import Settings
from tools.slices import Provenance, Slice
from tools.sources.batch import MAX_ROUNDS, ROW_BATCH, Fetch, NeedRows, RowBatch, SetLookup

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True)
class CustomerRef:
    """A resolved customer: the canonical id and the keys each source knows it by."""

    customer_id: str
    name: str
    anchors: dict[str, str] = field(default_factory=dict)  # source -> that source's record id
    domains: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    #: source -> the ids of the person records it knows the customer by (a person-customer's
    #: own; an account's: the persons riding with it alone): a support requester id, an
    #: application user id. Read by a source that has no account record (anchor) for them.
    person_ids: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def primary_domain(self) -> str | None:
        return self.domains[0] if self.domains else None


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class ReadClock:
    """When a read happens: the as-of date day counts and windows are measured from, the wall
    clock provenance is stamped with, and the settings whose thresholds a reader applies."""

    as_of: datetime
    settings: Settings
    now: Callable[[], datetime] = utcnow


@dataclass(frozen=True)
class _At:
    """A clock that always reads ``t``: the one time of a bulk read."""

    t: datetime

    def __call__(self) -> datetime:
        return self.t


#: Connections the reads of one customer's slices share, by engine (``tools.context.read`` binds one
#: per local SQLite engine while it reads a customer's slices inline): one checkout and one read
#: transaction for them all, instead of one per slice.
SHARED_CONNECTIONS: ContextVar[dict[Engine, Connection] | None] = ContextVar("custctx_shared_connections",
                                                                             default=None)


class SliceNotFound(LookupError):
    """The source is connected but holds nothing for this customer."""


class SourceReader:
    """Reads the slices of one source through its mapping.

    Subclasses define ``source`` and one ``read_<slice suffix>`` method per slice,
    e.g. ``read_account`` for ``crm.account``.
    """

    #: The source read: set on each reader class; a reader with a fault in front
    #: (``tools.sources.faults``) takes its inner reader's.
    source: str

    def __init__(self, mapping: Mapping, engine: Engine) -> None:
        if mapping.source != self.source:
            raise ValueError(f"mapping {mapping.name!r} is for {mapping.source}, not {self.source}")
        self.mapping = mapping
        self.engine = engine

    def read(self, slice_name: str, customer: CustomerRef, clock: ReadClock) -> Slice:
        method = getattr(self, "read_" + slice_name.split(".", 1)[1])
        tally = [0]
        token = SKIP_TALLY.set(tally)
        try:
            shared = SHARED_CONNECTIONS.get()
            with nullcontext(shared[self.engine]) if shared and self.engine in shared else self.engine.connect() as conn:
                self._apply_deadline(conn)
                return counted(method(conn, customer, clock), tally)
        except SliceNotFound:
            if tally[0]:
                raise MalformedSource(f"{tally[0]} malformed {self.source} rows skipped; "
                                      f"no usable record left for {customer.name}") from None
            raise
        finally:
            SKIP_TALLY.reset(token)

    #: Whether :meth:`read_many` reads in bulk (a reader with a fault in front reads one by one).
    batchable: ClassVar[bool] = True

    def read_many(self, wanted: MappingOf[str, Sequence[CustomerRef]], clock: ReadClock,
                  batch: RowBatch | None = None) -> dict[tuple[str, str], Slice | Exception]:
        """Slices of many customers in bulk (see ``tools.sources.batch``): ``{slice name: customers}``
        → ``{(customer id, slice name): slice, or the exception its read raised}``.

        A failure of the source itself (a query that fails) raises, as :meth:`read` does;
        what one customer's read raises (``SliceNotFound``, malformed rows) is its result.
        ``batch``: one kept across chunks, so lookups that do not depend on the customers
        are loaded once.
        """
        batch = batch or RowBatch()
        batch.next_chunk()
        clock = replace(clock, now=_At(clock.now()))  # the bulk read's slices are all fetched now
        out: dict[tuple[str, str], Slice | Exception] = {}
        pending = [(name, c) for name, customers in wanted.items() for c in customers]
        methods = {name: getattr(self, "read_" + name.split(".", 1)[1]) for name in wanted}
        token = ROW_BATCH.set(batch)
        try:
            with self.engine.connect() as conn:
                self._apply_deadline(conn)
                for _ in range(MAX_ROUNDS):
                    again = []
                    for name, customer in pending:
                        method = methods[name]
                        tally = [0]
                        tally_token = SKIP_TALLY.set(tally)
                        batch.missed = False
                        try:
                            result = counted(method(conn, customer, clock), tally)
                            if batch.missed:  # ran on placeholders: noted what it needs, runs again
                                raise NeedRows(name)
                            out[customer.customer_id, name] = result
                        except NeedRows:
                            again.append((name, customer))
                        except Exception as exc:  # noqa: BLE001 - one customer's garbage, read again alone
                            if batch.missed:
                                again.append((name, customer))
                                continue
                            # without its traceback: it would keep this frame, and the chunk's results, alive
                            # as cyclic garbage
                            exc = exc.with_traceback(None)
                            exc.__context__ = exc.__cause__ = None
                            if isinstance(exc, SliceNotFound) and tally[0]:
                                exc = MalformedSource(f"{tally[0]} malformed {self.source} rows skipped; "
                                                      f"no usable record left for {customer.name}")
                            out[customer.customer_id, name] = exc
                        finally:
                            SKIP_TALLY.reset(tally_token)
                    if not again:
                        return out
                    batch.load(conn)
                    pending = again
        finally:
            ROW_BATCH.reset(token)
        raise RuntimeError(f"{self.source}: a bulk read needed more than {MAX_ROUNDS} rounds")

    def batched(self, conn: Connection, sig: Hashable, keys: Sequence[Any], fetch: Fetch,
                keep: bool = False) -> dict[Any, Any]:
        """``fetch(conn, keys)`` (→ a value per key) — or, in a bulk read, the values loaded
        for every customer of the batch at once (``keep``: for every chunk of it)."""
        batch = ROW_BATCH.get()
        return fetch(conn, keys) if batch is None else batch.get((self.source, sig), keys, fetch, keep)

    def lookup(self, conn: Connection, entity: str, field: str, values: Iterable[Any], *,
               where: Sequence[tuple[str, Any]] = (), window: tuple[str, Any, Any] | None = None,
               fields: Sequence[str] | None = None, order_by: str | None = None, descending: bool = True,
               limit: int | None = None) -> Fetched:
        """Rows of ``entity`` whose ``field`` is one of ``values``, whose ``where`` fields equal
        their values and whose ``window`` field lies in ``(after, until]``; ordered, limited.

        One query for one customer; in a bulk read, one set-based query for the whole batch
        (``tools.sources.batch.SetLookup``: the newest ``limit`` rows of every key, ranked by
        the database), merged, ordered and limited here per customer.
        """
        ent = self.mapping.entity(entity)
        values = list(dict.fromkeys(values))
        batch = ROW_BATCH.get()
        if batch is None and len(values) <= IN_CHUNK:
            return ent.lookup_rows(conn, field, values, tuple(where), window, fields, order_by, descending, limit)
        # set-based: the chunk's keys in one statement, fields, window, order and limit pushed down
        sig = ("lookup", entity, field, tuple(where), window, tuple(fields or ()), order_by, descending, limit)
        loaded = batch.loaded.get((self.source, sig)) if batch is not None else None
        try:  # the common case in a bulk read: loaded already (no statement object made)
            got = [loaded[v] for v in values] if loaded is not None else None
        except KeyError:
            got = None
        if got is None:
            by_key = self.batched(conn, sig, values, SetLookup(ent, field, where, window, fields, order_by,
                                                                descending, limit))
            got = [by_key[v] for v in values]
        if len(got) == 1:
            one = got[0]
            out = Fetched(list(one.rows), one.skipped, list(one.errors), list(one.skipped_raw))
        else:
            out = Fetched()
            for f in got:
                out.rows.extend(f.rows)
                out.skipped += f.skipped
                out.errors.extend(f.errors)
                out.skipped_raw.extend(f.skipped_raw)
        count_skipped(out.skipped)  # loaded without a tally (Entity.rows_by): this read's skips
        if order_by:
            order_rows(out.rows, order_by, descending, limit)
        elif limit is not None:
            del out.rows[limit:]
        return out

    def ping(self) -> tuple[int, datetime | None]:
        """Row count and newest row of the source's main entity: proof it answers."""
        m = self.mapping
        part = m.entity(m.anchor[0] or next(iter(m.entities))).parts[0]
        has_updated = "updated_at" in part.fields
        newest_col = func.max(part.col("updated_at")) if has_updated else func.count()
        with self.engine.connect() as conn:
            self._apply_deadline(conn)
            count, newest = conn.execute(select(func.count(), newest_col).select_from(part.from_clause)).one()
        return int(count), part.fields["updated_at"].to_python(newest) if has_updated and newest is not None else None

    @staticmethod
    def _apply_deadline(conn: Connection) -> None:
        """PostgreSQL enforces the call's remaining budget itself (SQLite: see registry)."""
        d = DEADLINE.get()
        if d is not None and conn.dialect.name == "postgresql":
            ms = max(1, int(d.remaining() * 1000))
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}")

    def anchor(self, customer: CustomerRef) -> str:
        """This source's record id for the customer, or SliceNotFound."""
        try:
            return customer.anchors[self.source]
        except KeyError:
            raise SliceNotFound(f"no {self.source} record for {customer.name}") from None

    def account_or_persons(self, customer: CustomerRef) -> tuple[str | None, tuple[str, ...]]:
        """``(account record id, ())`` when this source has the customer's account record, else
        ``(None, person record ids)``: an account's context stays the account's; a customer
        this source knows only as people (a person-customer, a shopper) is read by person.
        SliceNotFound when it knows neither."""
        if self.source in customer.anchors:
            return customer.anchors[self.source], ()
        if people := customer.person_ids.get(self.source):
            return None, people
        return self.anchor(customer), ()

    def provenance(
        self,
        clock: ReadClock,
        rows: Iterable[dict[str, Any]] = (),
        id_field: str = "id",
        extra_ids: Iterable[str] = (),
    ) -> Provenance:
        """Provenance of a slice built from ``rows``; its ``skipped_rows`` is set when the read
        ends (:func:`counted`), from everything the read skipped.

        In a bulk read whose lookups were answered by placeholders this run, the method stops
        here (``NeedRows``): the slice would be thrown away, and it runs again once loaded."""
        batch = ROW_BATCH.get()
        if batch is not None and batch.missed:
            raise NeedRows("provenance")
        rows = rows if isinstance(rows, list) else list(rows)
        ids = [str(i) for r in rows if (i := r.get(id_field)) is not None]
        ids.extend(extra_ids)
        updated = [u for r in rows if (u := r.get("updated_at")) is not None]
        return Provenance(
            source=self.source,
            system=self.mapping.system,
            record_ids=list(dict.fromkeys(ids)),
            source_updated_at=max(updated) if updated else None,
            fetched_at=clock.now(),
            as_of=clock.as_of,
        )


def counted(result: Slice, tally: list[int]) -> Slice:
    """The slice a read built, with every row and nested value the read skipped as malformed
    counted in its provenance: those of every lookup it made (the rows that name the
    customer's records, the records, their participants ...), not only the main one — a
    list that comes back short or empty because rows failed is never taken for a clean one."""
    result.provenance.skipped_rows = tally[0]
    return result


def first(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    return rows[0] if rows else None


def is_email(text: str) -> bool:
    """Whether ``text`` looks like one email address (something@domain.tld)."""
    return bool(_EMAIL.match(text.strip()))


def require_domains(customer: CustomerRef, source: str) -> tuple[str, ...]:
    """Domain-keyed sources need at least one domain for the customer."""
    if not customer.domains:
        raise SliceNotFound(f"no domain known for {customer.name}, so no {source} records can be matched")
    return customer.domains
