"""The audit log: one append-only record per slice read, in the state database.

Every read made for a principal — from a source, from long-term memory (fresh, stale or
read back by a graph), a denial, a row check — appends a record: when, who (tenant,
user, role, scope), through which interface, which customer and slice, the decision
(allowed / masked / denied), the outcome (``source``, ``memory``, ``stale``, a gap kind,
``row_filter``) and the latency. There is no code path that updates or deletes a
record, and the database refuses to: a trigger on SQLite and on PostgreSQL aborts any
UPDATE, DELETE (and TRUNCATE on PostgreSQL) of ``audit_log``. In production, grant the
application's database role only INSERT and SELECT on the table as well.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import (
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Engine

from tools.sources.base import utcnow
from tools.sources.registry import engine_for

Decision = Literal["allowed", "masked", "denied"]

metadata = MetaData()
audit_log_table = Table(
    "audit_log", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime, nullable=False),
    Column("tenant", String(100), nullable=False),
    Column("user_name", String(100), nullable=False),
    Column("role", String(50), nullable=False),
    Column("scope", String(50), nullable=False),
    Column("interface", String(20), nullable=False),
    Column("customer_id", String(40), nullable=False),
    Column("slice", String(40), nullable=False),
    Column("decision", String(10), nullable=False),
    Column("outcome", String(20), nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("detail", Text),
    Index("ix_audit_log_tenant_at", "tenant", "at"),
    Index("ix_audit_log_tenant_customer_at", "tenant", "customer_id", "at"),
)

_APPEND_ONLY = "audit_log is append-only"
_SQLITE_TRIGGERS = [
    f"CREATE TRIGGER IF NOT EXISTS audit_log_no_{op.lower()} BEFORE {op} ON audit_log "
    f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END"
    for op in ("UPDATE", "DELETE")
]
_POSTGRES_TRIGGERS = [
    "CREATE OR REPLACE FUNCTION custctx_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    f"$$ BEGIN RAISE EXCEPTION '{_APPEND_ONLY}'; END $$",
    "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'audit_log_append_only') THEN "
    "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log "
    "FOR EACH STATEMENT EXECUTE FUNCTION custctx_audit_append_only(); END IF; END $$",
]


@dataclass(frozen=True)
class AuditRecord:
    """One read, as the audit log keeps it."""

    at: datetime
    tenant: str
    user_name: str
    role: str
    scope: str
    interface: str
    customer_id: str
    slice: str
    decision: Decision
    outcome: str
    latency_ms: float
    detail: str | None = None


class AuditLog:
    """Append and query the audit log of one state database."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._setup()

    def _setup(self) -> None:
        metadata.create_all(self.engine, checkfirst=True)
        statements = {"sqlite": _SQLITE_TRIGGERS, "postgresql": _POSTGRES_TRIGGERS}.get(self.engine.dialect.name, [])
        with self.engine.begin() as conn:
            for stmt in statements:
                conn.execute(text(stmt))

    def append(self, records: Sequence[AuditRecord]) -> None:
        """Append records in one transaction (a failure raises: no read goes unrecorded)."""
        if records:
            with self.engine.begin() as conn:
                conn.execute(insert(audit_log_table), [r.__dict__ for r in records])  # flat: no deep copy

    def query(self, tenant: str, customer_id: str | None = None, since: datetime | None = None,
              limit: int | None = 100) -> list[AuditRecord]:
        """A tenant's records, newest first (optionally one customer's, since a time)."""
        c = audit_log_table.c
        stmt = select(audit_log_table).where(c.tenant == tenant)
        if customer_id:
            stmt = stmt.where(c.customer_id == customer_id)
        if since is not None:
            stmt = stmt.where(c.at >= since)
        stmt = stmt.order_by(c.at.desc(), c.id.desc())
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).mappings().all()
        return [AuditRecord(**{k: v for k, v in r.items() if k != "id"}) for r in rows]


_logs: dict[str, AuditLog] = {}
_lock = threading.Lock()


def audit_log(url: str) -> AuditLog:
    """The audit log of the state database at ``url`` (set up once per process)."""
    with _lock:
        if url not in _logs:
            _logs[url] = AuditLog(engine_for(url))
        return _logs[url]


_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """``30m``, ``1h``, ``2d``, ``1w`` (before now) or an ISO date / time (UTC when naive).

    Raises:
        ValueError: anything else, with the accepted forms in the message.
    """
    if m := _RELATIVE.match(value or ""):
        return (now or utcnow()) - timedelta(**{_UNITS[m.group(2).lower()]: int(m.group(1))})
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since {value!r}: give an ISO date or time (2026-01-15, 2026-01-15T12:00) "
                         "or an age such as 30m, 1h, 2d, 1w") from None
    return when if when.tzinfo is None else when.astimezone(UTC).replace(tzinfo=None)
