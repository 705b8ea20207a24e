"""The audit log: one hash-chained, append-only record per slice read.

Every read made for a principal — from a source, from long-term memory (fresh, stale or
read back by a graph), a denial, a row check — appends a record: when, who (tenant,
user, role, scope), through which interface, which customer and slice, the decision
(allowed / masked / denied), the outcome (``source``, ``memory``, ``stale``, a gap kind,
``row_filter``) and the latency.

Tamper evidence, in three layers (docs/ACCESS.md, "The audit log"):

- **One chain per tenant.** A record carries its tenant's sequence number (1, 2, …), the
  hash of the tenant's previous record and its own SHA-256 over a canonical serialisation
  of every field (:func:`record_hash`). A batch reads its tenant's chain head once, inside
  a transaction that serialises appenders (SQLite ``BEGIN IMMEDIATE``; PostgreSQL a
  transaction-scoped advisory lock per tenant), and a unique (tenant, seq) index refuses
  a fork outright. :meth:`AuditLog.verify` walks the chains.
- **An anchor outside the table.** After each commit the heads (seq, hash) are written to
  ``audit-anchor.json`` in the data home (:class:`AuditAnchor`). Verify compares; an
  append refuses (:class:`AuditChainBroken`) while its tenant's table holds fewer records
  than the anchor — a dropped, emptied or truncated log is never silently restarted.
- **The database refuses changes.** Triggers abort UPDATE and DELETE (and TRUNCATE on
  PostgreSQL); in production the application's role is granted only INSERT and SELECT.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    bindparam,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Engine

from tools.access.audit_chain import (
    _FIELDS,
    ANCHOR_FILE,
    BROKEN_TEMPLATE,
    GENESIS,
    AuditAnchor,
    AuditChainBroken,
    AuditRecord,
    ChainHead,
    ChainProblem,
    ChainReport,
    Decision,
    ProblemKind,
    _compare_anchor,
    _row,
    _walk,
    at_hash_form,
    audit_log_table,
    audit_row,
    log_identity,
    metadata,
    record_hash,
)
from tools.access.audit_postgres import PostgresAppender, postgres_conninfo
from tools.access.audit_sqlite import SqliteAppender, sqlite_file
from tools.access.group_commit import GroupCommit
from tools.settings import Settings
from tools.sources.base import utcnow
from tools.sources.registry import engine_for

__all__ = [
    "ADVISORY_NAMESPACE", "ANCHOR_FILE", "BROKEN_TEMPLATE", "GENESIS", "AuditAnchor", "AuditChainBroken", "AuditLog",
    "AuditRecord", "ChainHead", "ChainProblem", "ChainReport", "Decision", "ProblemKind", "audit_log", "audit_log_for",
    "audit_log_table", "audit_row", "audit_url", "log_identity", "metadata", "parse_since", "record_hash",
]

ADVISORY_NAMESPACE = 0x63636175  # "ccau": first key of the audit's advisory locks (threads use "cctx")
_SETUP_LOCK_KEY = 0x73657475  # "setu": second key of the lock that serialises creating the tables

_HEAD = (select(audit_log_table.c.seq, audit_log_table.c.hash, audit_log_table.c.at)  # built once: per append
         .where(audit_log_table.c.tenant == bindparam("tenant"), audit_log_table.c.seq.is_not(None))
         .order_by(audit_log_table.c.seq.desc()).limit(1))
_INSERT = insert(audit_log_table)
_CHAIN_COLUMNS = {"seq": "BIGINT", "prev_hash": "VARCHAR(64)", "hash": "VARCHAR(64)"}

_APPEND_ONLY = "audit_log is append-only"
_SQLITE_TRIGGERS = [
    f"CREATE TRIGGER IF NOT EXISTS audit_log_no_{op.lower()} BEFORE {op} ON audit_log "
    f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END"
    for op in ("UPDATE", "DELETE")
]
_POSTGRES_TRIGGER_EXISTS = ("SELECT 1 FROM pg_trigger WHERE tgname = 'audit_log_append_only' "
                            "AND tgrelid = 'audit_log'::regclass")
_POSTGRES_TRIGGERS = [
    "CREATE OR REPLACE FUNCTION custctx_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    f"$$ BEGIN RAISE EXCEPTION '{_APPEND_ONLY}'; END $$",
    "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log "
    "FOR EACH STATEMENT EXECUTE FUNCTION custctx_audit_append_only()",
]


def _commit_without_fsync(conn: Connection) -> None:
    """On a SQLite database in WAL mode (the state database: the checkpointer sets it), commit
    without waiting for the disk (``synchronous=NORMAL``): a committed append survives the
    process being killed (``tests/test_served_read.py`` kills one), not a power cut — an fsync per
    commit cost more than the rest of a served read. Power-loss durability is PostgreSQL's,
    where group commit spreads each flush over every request of the batch."""
    info = conn.connection.info
    if not info.get("custctx_audit_sync"):
        mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        if str(mode).lower() == "wal":
            conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
        info["custctx_audit_sync"] = True


class AuditLog:
    """Append to, query and verify the audit log of one database."""

    def __init__(self, engine: Engine, anchor: AuditAnchor | Path | None = None):
        self.engine = engine
        self.anchor = AuditAnchor(anchor, log_identity(engine, anchor)) if isinstance(anchor, Path) else anchor
        self._checked: set[str] = set()  # tenants whose anchored record was compared (once per process)
        self.table_missing = False
        self._groups: dict[str, GroupCommit[dict[str, Any]]] = {}  # per tenant: concurrent appends, one commit
        self._groups_lock = threading.Lock()
        path = sqlite_file(engine)
        conninfo = postgres_conninfo(engine)
        # appends at the driver: a SQLite file (audit_sqlite), PostgreSQL with psycopg (audit_postgres)
        self._driver: SqliteAppender | PostgresAppender | None = (
            SqliteAppender(path) if path is not None
            else PostgresAppender(conninfo, ADVISORY_NAMESPACE) if conninfo is not None else None)
        self._setup()

    def _setup(self) -> None:
        # One creator at a time: two processes opening a brand-new database would otherwise both
        # find no table and the second CREATE (table, index, column or trigger) would fail.
        with self._setup_lock() as conn:
            insp = inspect(conn)
            if not insp.has_table("audit_log"):
                if self.anchor is not None and self.anchor.heads():
                    self.table_missing = True  # never recreate a lost log as if nothing happened
                    return
                metadata.create_all(conn, checkfirst=True)
            elif missing := [c for c in _CHAIN_COLUMNS if c not in {x["name"] for x in insp.get_columns("audit_log")}]:
                for col in missing:  # a log from before the chain: its records stay unchained
                    conn.execute(text(f"ALTER TABLE audit_log ADD COLUMN {col} {_CHAIN_COLUMNS[col]}"))
                next(i for i in audit_log_table.indexes if i.unique).create(conn, checkfirst=True)
            if self.engine.dialect.name == "sqlite":
                for stmt in _SQLITE_TRIGGERS:
                    conn.execute(text(stmt))
            elif self.engine.dialect.name == "postgresql" and conn.execute(text(_POSTGRES_TRIGGER_EXISTS)).first() is None:
                for stmt in _POSTGRES_TRIGGERS:  # the owner's job: an insert-only role finds them there
                    conn.execute(text(stmt))

    @contextmanager
    def _setup_lock(self) -> Iterator[Connection]:
        """One transaction that holds the database's write lock (SQLite) or the audit's set-up
        advisory lock (PostgreSQL) from the first look at the schema to the last CREATE."""
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            elif self.engine.dialect.name == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(ADVISORY_NAMESPACE, _SETUP_LOCK_KEY)))
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    # -------------------------------------------------------------- append
    def append(self, records: Sequence[AuditRecord]) -> None:
        """Append records, each linked to its tenant's chain, and return once they are committed
        (a failure raises: no read goes unrecorded). Concurrent appends of one tenant are group
        committed: whoever finds no write in progress writes every record queued meanwhile in
        one transaction (``tools.access.group_commit``).

        Raises:
            AuditChainBroken: the log lost records its anchor holds.
        """
        self.append_rows([_row(r) for r in records])

    def append_rows(self, rows: list[dict[str, Any]]) -> None:
        """:meth:`append` of records built as rows (:func:`audit_row`: the access gate's, without an
        :class:`AuditRecord` per read). The rows are this call's: linking sets their seq and hashes."""
        if not rows:
            return
        tenant = rows[0]["tenant"]
        if self.table_missing:
            assert self.anchor is not None
            raise AuditChainBroken(self._broken(tenant, "no audit_log table", self.anchor.heads().get(tenant)))
        if any(row["tenant"] != tenant for row in rows):  # a rare mixed call: its own transaction
            self._write(rows, restart=False)
            return
        self.group(tenant).submit(rows)

    def group(self, tenant: str) -> GroupCommit[dict[str, Any]]:
        """The group commit of one tenant's appends in this process."""
        with self._groups_lock:
            if tenant not in self._groups:
                self._groups[tenant] = GroupCommit(partial(self._write, restart=False))
            return self._groups[tenant]

    def restart_chain(self, tenant: str, reason: str, by: AuditRecord) -> ChainHead:
        """Start a new chain after a break, on purpose: one ``chain_restart`` record (the
        principal of ``by``, the reason) linked to the anchored head, so appends work again
        and verify keeps reporting the records lost before it."""
        if self.table_missing:
            self.table_missing = False
            metadata.create_all(self.engine, checkfirst=True)
            self._setup()
        row = _row(replace(by, tenant=tenant, customer_id="-", slice="audit.chain", decision="allowed",
                           outcome="chain_restart", latency_ms=0.0, detail=f"chain restarted on purpose: {reason}"))
        return self._write([row], restart=True)[tenant]

    def _write(self, rows: list[dict[str, Any]], restart: bool) -> dict[str, ChainHead]:
        by_tenant: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_tenant.setdefault(row["tenant"], []).append(row)
        anchored = self.anchor.heads() if self.anchor else {}

        def link(tenant: str, mine: list[dict[str, Any]], head: ChainHead | None,
                 hash_at: Callable[[int], str | None]) -> ChainHead:
            if restart:  # continue after whichever is further on: the log or its anchor
                head = max((h for h in (head, anchored.get(tenant)) if h), key=lambda h: h.seq, default=None)
            else:
                self._check_anchor(tenant, head, anchored.get(tenant), hash_at)
            return _link(mine, head)

        if self._driver is not None and not restart:  # at the driver (audit_sqlite, audit_postgres)
            heads = self._driver.append(by_tenant, link)
        else:
            heads = {}
            with self._serialised(sorted(by_tenant)) as conn:
                for tenant, mine in by_tenant.items():
                    heads[tenant] = link(tenant, mine, self._head(conn, tenant), partial(_hash_at, conn, tenant))
                conn.execute(_INSERT, rows)
        if self.anchor is not None:  # after the commit: an anchor may lag the log, never lead it
            self.anchor.advance(heads)
        self._checked.update(heads)
        return heads

    @contextmanager
    def _serialised(self, tenants: Sequence[str]) -> Iterator[Connection]:
        """One transaction in which no other appender of these tenants reads or moves a head."""
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "sqlite":
                _commit_without_fsync(conn)
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock before the head is read
            for tenant in tenants:
                if self.engine.dialect.name == "postgresql":  # sorted: two batches never deadlock
                    conn.execute(select(func.pg_advisory_xact_lock(ADVISORY_NAMESPACE, func.hashtext(tenant))))
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    @staticmethod
    def _head(conn: Connection, tenant: str) -> ChainHead | None:
        row = conn.execute(_HEAD, {"tenant": tenant}).first()
        return ChainHead(row.seq, row.hash, row.at) if row else None

    def _check_anchor(self, tenant: str, head: ChainHead | None, anchored: ChainHead | None,
                      hash_at: Callable[[int], str | None]) -> None:
        """Refuse to append to a chain that lost or rewrote what the anchor holds (the head is
        compared every batch; a log ahead of its anchor, once per process, at the anchored seq:
        ``hash_at(seq)`` reads that record's hash in the append's transaction)."""
        if anchored is None:
            return
        if head is not None and head.seq > anchored.seq and tenant not in self._checked:
            got = hash_at(anchored.seq)
            head = ChainHead(anchored.seq, got) if got else None
        if head is None or head.seq < anchored.seq or (head.seq == anchored.seq and head.hash != anchored.hash):
            held = "no records" if head is None else f"head seq {head.seq} (hash {head.hash[:12]}…)"
            raise AuditChainBroken(self._broken(tenant, held, anchored))
        self._checked.add(tenant)

    def _broken(self, tenant: str, held: str, anchored: ChainHead | None) -> str:
        assert self.anchor is not None
        if anchored is None:  # the table is gone, and this tenant never had records
            anchored = max(self.anchor.heads().values(), key=lambda h: h.seq)
        return BROKEN_TEMPLATE.format(tenant=tenant, log=log_identity(self.engine), held=held,
                                      anchor=self.anchor.path, seq=anchored.seq, hash=anchored.hash[:12],
                                      at=f"{anchored.at:%Y-%m-%d %H:%M:%S}" if anchored.at else "time unknown")

    # ---------------------------------------------------------------- read
    def query(self, tenant: str, customer_id: str | None = None, since: datetime | None = None,
              limit: int | None = 100) -> list[AuditRecord]:
        """A tenant's records, newest first (optionally one customer's, since a time)."""
        c = audit_log_table.c
        stmt = select(*(c[f] for f in (*_FIELDS, "seq", "hash"))).where(c.tenant == tenant)
        if customer_id:
            stmt = stmt.where(c.customer_id == customer_id)
        if since is not None:
            stmt = stmt.where(c.at >= since)
        stmt = stmt.order_by(c.at.desc(), c.id.desc())
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).mappings().all()
        return [AuditRecord(**r) for r in rows]

    def verify(self, tenant: str | None = None) -> list[ChainReport]:
        """Walk every tenant's chain (or one), compare it with the anchor; a report per tenant."""
        anchored = self.anchor.heads() if self.anchor else {}
        present = not self.table_missing and inspect(self.engine).has_table("audit_log")
        tenants: set[str] = set(anchored)
        if present:
            with self.engine.connect() as conn:
                tenants |= set(conn.execute(select(audit_log_table.c.tenant).distinct()).scalars())
        if tenant is not None:
            tenants = {tenant}
        reports = []
        for t in sorted(tenants):
            rep = ChainReport(t, anchor=anchored.get(t))
            if present:
                _walk(self.engine, rep)
            _compare_anchor(rep, present)
            rep.problems.sort(key=lambda p: p.seq)
            reports.append(rep)
        return reports


def _link(rows: list[dict[str, Any]], head: ChainHead | None) -> ChainHead:
    """Number and hash ``rows`` after ``head`` (in place); the new head."""
    seq, prev = (head.seq, head.hash) if head else (0, GENESIS)
    at, at_iso = None, ""
    for row in rows:
        seq += 1
        row.update(seq=seq, prev_hash=prev)
        if row["at"] is not at:  # a batch's records share one time: its ISO form made once
            at = row["at"]
            at_iso = at_hash_form(at)
        row["hash"] = prev = record_hash(row, at_iso)
    return ChainHead(seq, prev, rows[-1]["at"])


def _hash_at(conn: Connection, tenant: str, seq: int) -> str | None:
    c = audit_log_table.c
    got = conn.execute(select(c.hash).where(c.tenant == tenant, c.seq == seq)).scalar()
    return str(got) if got else None


_logs: dict[tuple[str, Path | None], AuditLog] = {}
_lock = threading.Lock()


def audit_log(url: str, anchor_dir: Path | None = None) -> AuditLog:
    """The audit log of the database at ``url`` (set up once per process), anchored in
    ``anchor_dir`` (None: no anchor — reading and tests)."""
    with _lock:
        key = (url, anchor_dir)
        if key not in _logs:
            _logs[key] = AuditLog(engine_for(url), anchor_dir)
        return _logs[key]


def audit_url(settings: Settings) -> str:
    """``CUSTCTX_AUDIT_URL``, else the state database."""
    return settings.audit_url or settings.state_db_url


_configured: dict[tuple[str | None, str | None, Path], AuditLog] = {}


def audit_log_for(settings: Settings) -> AuditLog:
    """The configured audit log, anchored in the data home: what every interface appends to
    (looked up once per configuration: every request asks)."""
    key = (settings.audit_url, settings.state_url, settings.home)
    log = _configured.get(key)
    if log is None:
        log = _configured[key] = audit_log(audit_url(settings), Path(settings.home))
    return log


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
