"""What every source reader shares: the customer it reads for, the clock, provenance."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine

from tools.guard import DEADLINE, MalformedSource
from tools.mapping import SKIP_TALLY, Mapping
from tools.settings import Settings
from tools.slices import Provenance, Slice


@dataclass(frozen=True)
class CustomerRef:
    """A resolved customer: the canonical id and the keys each source knows it by."""

    customer_id: str
    name: str
    anchors: dict[str, str] = field(default_factory=dict)  # source -> that source's record id
    domains: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()

    @property
    def primary_domain(self) -> str | None:
        return self.domains[0] if self.domains else None


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class ReadContext:
    """The clock and settings a read runs under."""

    as_of: datetime
    settings: Settings
    now: Callable[[], datetime] = utcnow


class SliceNotFound(LookupError):
    """The source is connected but holds nothing for this customer."""


class SourceReader:
    """Reads the slices of one source through its mapping.

    Subclasses define ``source`` and one ``read_<slice suffix>`` method per slice,
    e.g. ``read_account`` for ``crm.account``.
    """

    source: ClassVar[str]

    def __init__(self, mapping: Mapping, engine: Engine) -> None:
        if mapping.source != self.source:
            raise ValueError(f"mapping {mapping.name!r} is for {mapping.source}, not {self.source}")
        self.mapping = mapping
        self.engine = engine

    def read(self, slice_name: str, customer: CustomerRef, ctx: ReadContext) -> Slice:
        method = getattr(self, "read_" + slice_name.split(".", 1)[1])
        tally = [0]
        token = SKIP_TALLY.set(tally)
        try:
            with self.engine.connect() as conn:
                self._apply_deadline(conn)
                return method(conn, customer, ctx)
        except SliceNotFound:
            if tally[0]:
                raise MalformedSource(f"{tally[0]} malformed {self.source} rows skipped; "
                                      f"no usable record left for {customer.name}") from None
            raise
        finally:
            SKIP_TALLY.reset(token)

    def ping(self) -> tuple[int, datetime | None]:
        """Row count and newest row of the source's main entity: proof it answers."""
        m = self.mapping
        part = m.entity(m.anchor[0] or next(iter(m.entities))).parts[0]
        has_updated = "updated_at" in part.fields
        cols = [func.count(), func.max(part.col("updated_at")) if has_updated else func.count()]
        with self.engine.connect() as conn:
            self._apply_deadline(conn)
            count, newest = conn.execute(select(*cols).select_from(part.from_clause)).one()
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

    def provenance(
        self,
        ctx: ReadContext,
        rows: Iterable[dict[str, Any]] = (),
        id_field: str = "id",
        skipped: int = 0,
        extra_ids: Iterable[str] = (),
    ) -> Provenance:
        rows = list(rows)
        ids = [str(r[id_field]) for r in rows if r.get(id_field) is not None]
        ids.extend(extra_ids)
        updated = [r["updated_at"] for r in rows if r.get("updated_at") is not None]
        return Provenance(
            source=self.source,
            system=self.mapping.system,
            record_ids=list(dict.fromkeys(ids)),
            source_updated_at=max(updated) if updated else None,
            fetched_at=ctx.now(),
            as_of=ctx.as_of,
            skipped_rows=skipped,
        )


def first(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    return rows[0] if rows else None


def require_domains(customer: CustomerRef, source: str) -> tuple[str, ...]:
    """Domain-keyed sources need at least one domain for the customer."""
    if not customer.domains:
        raise SliceNotFound(f"no domain known for {customer.name}, so no {source} records can be matched")
    return customer.domains
