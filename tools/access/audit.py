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

import fcntl
import hashlib
import json
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import orjson
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from tools.settings import Settings
from tools.sources.base import utcnow
from tools.sources.registry import engine_for

Decision = Literal["allowed", "masked", "denied"]
ProblemKind = Literal["missing", "altered", "broken_link", "duplicate", "anchor_mismatch"]

GENESIS = "0" * 64  # the previous hash of a chain's first record
ADVISORY_NAMESPACE = 0x63636175  # "ccau": first key of the audit's advisory locks (threads use "cctx")
ANCHOR_FILE = "audit-anchor.json"
_HASH_VERSION = "custctx-audit-v1"

metadata = MetaData()
audit_log_table = Table(
    "audit_log", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("seq", BigInteger),  # per tenant, from 1; NULL: written before the chain existed
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
    Column("prev_hash", String(64)),
    Column("hash", String(64)),
    Index("ix_audit_log_tenant_at", "tenant", "at"),
    Index("ix_audit_log_tenant_customer_at", "tenant", "customer_id", "at"),
    Index("ux_audit_log_tenant_seq", "tenant", "seq", unique=True),
)
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
BROKEN_TEMPLATE = (
    "the audit log of tenant {tenant!r} at {log} has {held}, but its anchor {anchor} records seq {seq} "
    "(hash {hash}…, {at}): records were removed or rewritten. Refusing to append. Restore the audit log, "
    "or start a new chain that records the break: custctx audit restart-chain --tenant {tenant} --reason TEXT")


class AuditChainBroken(SQLAlchemyError):
    """The audit database lost records its anchor holds: appends refuse until it is restored
    or a new chain is started on purpose (a database error: interfaces report it as one)."""


@dataclass(frozen=True)
class AuditRecord:
    """One read, as the audit log keeps it (``seq`` and ``hash`` are set when read back)."""

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
    seq: int | None = None
    hash: str | None = None


_FIELDS = ("at", "tenant", "user_name", "role", "scope", "interface", "customer_id", "slice", "decision",
           "outcome", "latency_ms", "detail")


def record_hash(row: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a record's canonical form: compact UTF-8 JSON (orjson) of an array of the
    version tag, the tenant, seq, every field in a fixed order (time as naive-UTC ISO with
    microseconds, latency as a float) and the previous record's hash."""
    body = [_HASH_VERSION, row["tenant"], int(row["seq"]), _naive_utc(row["at"]).isoformat(timespec="microseconds"),
            row["user_name"], row["role"], row["scope"], row["interface"], row["customer_id"], row["slice"],
            row["decision"], row["outcome"], float(row["latency_ms"]), row["detail"], row["prev_hash"]]
    return hashlib.sha256(orjson.dumps(body)).hexdigest()


def _row(r: AuditRecord) -> dict[str, Any]:
    return {f: getattr(r, f) for f in _FIELDS} | {"at": _naive_utc(r.at)}


def _naive_utc(at: datetime) -> datetime:
    return at if at.tzinfo is None else at.astimezone(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class ChainHead:
    """The last record of one tenant's chain: its seq, hash and time."""

    seq: int
    hash: str
    at: datetime | None = None


class AuditAnchor:
    """The chain heads of audit databases, kept in ``audit-anchor.json`` outside them.

    One file per data home, ``{"logs": {<log id>: {<tenant>: {seq, hash, at}}}}``, mode 0600,
    replaced atomically under an exclusive ``flock`` and only ever moved forward. It holds no
    customer data. It detects what a database writer alone can do — drop or empty the table,
    delete the newest records, rewrite and re-hash the chain — not an attacker who rewrites
    this file as well (keep the head ``custctx audit verify`` prints somewhere else too)."""

    def __init__(self, directory: Path, log_id: str):
        self.path, self.log_id = Path(directory) / ANCHOR_FILE, log_id

    def heads(self) -> dict[str, ChainHead]:
        """The anchored head of every tenant of this log ({} without a file)."""
        try:
            with open(self.path, "rb") as fh:
                fcntl.flock(fh, fcntl.LOCK_SH)
                doc = self._parse(fh.read())
        except FileNotFoundError:
            return {}
        return {t: ChainHead(h["seq"], h["hash"], datetime.fromisoformat(h["at"]) if h.get("at") else None)
                for t, h in doc.get("logs", {}).get(self.log_id, {}).items()}

    def advance(self, heads: Mapping[str, ChainHead]) -> None:
        """Record new heads (a head never moves back: concurrent writers finish in any order)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600), "r+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            raw = fh.read()
            doc = self._parse(raw)
            mine = doc.setdefault("logs", {}).setdefault(self.log_id, {})
            new = {t: {"seq": h.seq, "hash": h.hash, "at": h.at.isoformat() if h.at else None}
                   for t, h in heads.items() if h.seq > mine.get(t, {}).get("seq", 0)}
            if new:
                mine.update(new)
                data = json.dumps({**doc, "version": 1}, indent=1, sort_keys=True).encode()
                # Rewritten in place, padded rather than truncated: ext4 flushes a file truncated and
                # rewritten (or renamed over another) on close, which cost milliseconds per append.
                fh.seek(0)
                fh.write(data.ljust(len(raw)))
                fh.flush()

    def _parse(self, raw: bytes) -> dict[str, Any]:
        try:
            return json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            raise AuditChainBroken(f"the audit anchor {self.path} is unreadable ({exc}): restore it, or move it "
                                   "aside to anchor afresh (verify then cannot tell what came before)") from None


def log_identity(engine: Engine, home: Path | None = None) -> str:
    """Names one audit database whoever connects to it (the owner, an insert-only role); a
    SQLite file inside ``home`` by its path there, so a data home can move."""
    u = engine.url
    if u.get_backend_name() == "sqlite":
        db = u.database or ":memory:"
        if db == ":memory:":
            return "sqlite:///:memory:"
        path = Path(db).resolve()
        if home is not None and path.is_relative_to(base := Path(home).resolve()):
            return f"sqlite:{path.relative_to(base)}"
        return f"sqlite:///{path}"
    return f"{u.get_backend_name()}://{u.host or ''}:{u.port or ''}/{u.database or ''}"


@dataclass(frozen=True)
class ChainProblem:
    """The first thing wrong at one place of a chain."""

    seq: int
    at: datetime | None
    kind: ProblemKind
    message: str


@dataclass
class ChainReport:
    """What :meth:`AuditLog.verify` found in one tenant's chain."""

    tenant: str
    records: int = 0
    head: ChainHead | None = None
    anchor: ChainHead | None = None
    unchained: int = 0  # records from before the chain (NULL seq): not verifiable
    problems: list[ChainProblem] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems


class AuditLog:
    """Append to, query and verify the audit log of one database."""

    def __init__(self, engine: Engine, anchor: AuditAnchor | Path | None = None):
        self.engine = engine
        self.anchor = AuditAnchor(anchor, log_identity(engine, anchor)) if isinstance(anchor, Path) else anchor
        self._checked: set[str] = set()  # tenants whose anchored record was compared (once per process)
        self.table_missing = False
        self._setup()

    def _setup(self) -> None:
        insp = inspect(self.engine)
        if not insp.has_table("audit_log"):
            if self.anchor is not None and self.anchor.heads():
                self.table_missing = True  # never recreate a lost log as if nothing happened
                return
            metadata.create_all(self.engine, checkfirst=True)
        elif missing := [c for c in _CHAIN_COLUMNS if c not in {x["name"] for x in insp.get_columns("audit_log")}]:
            with self.engine.begin() as conn:  # a log from before the chain: its records stay unchained
                for col in missing:
                    conn.execute(text(f"ALTER TABLE audit_log ADD COLUMN {col} {_CHAIN_COLUMNS[col]}"))
                next(i for i in audit_log_table.indexes if i.unique).create(conn, checkfirst=True)
        with self.engine.begin() as conn:
            if self.engine.dialect.name == "sqlite":
                for stmt in _SQLITE_TRIGGERS:
                    conn.execute(text(stmt))
            elif self.engine.dialect.name == "postgresql" and conn.execute(text(_POSTGRES_TRIGGER_EXISTS)).first() is None:
                for stmt in _POSTGRES_TRIGGERS:  # the owner's job: an insert-only role finds them there
                    conn.execute(text(stmt))

    # -------------------------------------------------------------- append
    def append(self, records: Sequence[AuditRecord]) -> None:
        """Append records in one transaction, each linked to its tenant's chain (a failure
        raises: no read goes unrecorded).

        Raises:
            AuditChainBroken: the log lost records its anchor holds.
        """
        if not records:
            return
        if self.table_missing:
            assert self.anchor is not None
            tenant = records[0].tenant
            raise AuditChainBroken(self._broken(tenant, "no audit_log table", self.anchor.heads().get(tenant)))
        self._write([_row(r) for r in records], restart=False)

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
        heads: dict[str, ChainHead] = {}
        with self._serialised(sorted(by_tenant)) as conn:
            for tenant, mine in by_tenant.items():
                head = self._head(conn, tenant)
                if restart:  # continue after whichever is further on: the log or its anchor
                    head = max((h for h in (head, anchored.get(tenant)) if h), key=lambda h: h.seq, default=None)
                else:
                    self._check_anchor(conn, tenant, head, anchored.get(tenant))
                seq, prev = (head.seq, head.hash) if head else (0, GENESIS)
                for row in mine:
                    seq += 1
                    row.update(seq=seq, prev_hash=prev)
                    row["hash"] = prev = record_hash(row)
                heads[tenant] = ChainHead(seq, prev, mine[-1]["at"])
            conn.execute(insert(audit_log_table), rows)
        if self.anchor is not None:  # after the commit: an anchor may lag the log, never lead it
            self.anchor.advance(heads)
        self._checked.update(heads)
        return heads

    @contextmanager
    def _serialised(self, tenants: Sequence[str]) -> Iterator[Connection]:
        """One transaction in which no other appender of these tenants reads or moves a head."""
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "sqlite":
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
        c = audit_log_table.c
        row = conn.execute(select(c.seq, c.hash, c.at).where(c.tenant == tenant, c.seq.is_not(None))
                           .order_by(c.seq.desc()).limit(1)).first()
        return ChainHead(row.seq, row.hash, row.at) if row else None

    def _check_anchor(self, conn: Connection, tenant: str, head: ChainHead | None, anchored: ChainHead | None) -> None:
        """Refuse to append to a chain that lost or rewrote what the anchor holds (the head is
        compared every batch; a log ahead of its anchor, once per process, at the anchored seq)."""
        if anchored is None:
            return
        if head is not None and head.seq > anchored.seq and tenant not in self._checked:
            c = audit_log_table.c
            got = conn.execute(select(c.hash).where(c.tenant == tenant, c.seq == anchored.seq)).scalar()
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


def _walk(engine: Engine, rep: ChainReport) -> None:
    """Check seq continuity, links and hashes of one chain, streaming it in seq order."""
    c = audit_log_table.c
    stmt = select(*(c[f] for f in (*_FIELDS, "seq", "prev_hash", "hash"))).where(c.tenant == rep.tenant)
    expected, prev, last_at = 1, GENESIS, None
    with engine.connect() as conn:
        rep.unchained = conn.execute(select(func.count()).where(c.tenant == rep.tenant, c.seq.is_(None))).scalar() or 0
        rows = conn.execution_options(yield_per=2000).execute(stmt.where(c.seq.is_not(None)).order_by(c.seq))
        for row in rows.mappings():
            seq, at = row["seq"], row["at"]
            problem: tuple[ProblemKind, str] | None = None
            if seq < expected:
                problem = ("duplicate", f"record {seq} appears twice")
            elif seq > expected:
                after = f"after seq {expected - 1} at {last_at:%Y-%m-%d %H:%M:%S}, " if last_at else ""
                problem = ("missing", f"{_span(expected, seq - 1)} missing ({after}before seq {seq} "
                                      f"at {at:%Y-%m-%d %H:%M:%S})")
            elif row["prev_hash"] != prev:
                problem = ("broken_link", f"record {seq} at {at:%Y-%m-%d %H:%M:%S} does not link to record "
                                          f"{seq - 1}: one of them was rewritten, or record {seq} was forged")
            if problem:
                rep.problems.append(ChainProblem(min(seq, expected), last_at if problem[0] == "missing" else at,
                                                 *problem))
            if _rehash(row) != row["hash"]:
                rep.problems.append(ChainProblem(seq, at, "altered", f"record {seq} at {at:%Y-%m-%d %H:%M:%S} "
                                                 "does not match its hash: changed after it was written, or forged"))
            if rep.anchor is not None and seq == rep.anchor.seq and row["hash"] != rep.anchor.hash:
                rep.problems.append(ChainProblem(seq, at, "anchor_mismatch", f"record {seq} differs from the anchored "
                                                 "one (its hash changed): the chain was rewritten and re-hashed"))
            rep.records += 1
            expected, prev, last_at = max(expected, seq + 1), row["hash"], at
            rep.head = ChainHead(seq, row["hash"], at)


def _rehash(row: Mapping[Any, Any]) -> str | None:
    try:
        return record_hash(row)
    except (TypeError, ValueError, AttributeError):  # a forged row with the wrong types: no hash fits it
        return None


def _span(first: int, last: int) -> str:
    return f"record {first}" if first == last else f"records {first}–{last}"


def _compare_anchor(rep: ChainReport, present: bool) -> None:
    a = rep.anchor
    held = rep.head.seq if rep.head else 0
    if a is None or held >= a.seq:
        return
    if not present:
        what = "the audit_log table is missing"
    elif rep.head is None:
        what = "the log has no records of this tenant"
    else:
        what = f"the log ends at seq {held}" + (f" ({rep.head.at:%Y-%m-%d %H:%M:%S})" if rep.head.at else "")
    at = f", at {a.at:%Y-%m-%d %H:%M:%S}" if a.at else ""
    rep.problems.append(ChainProblem(held + 1, rep.head.at if rep.head else None, "missing",
                                     f"{_span(held + 1, a.seq)} missing: {what}, but the anchor records seq "
                                     f"{a.seq} (hash {a.hash[:12]}…{at})"))


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


def audit_log_for(settings: Settings) -> AuditLog:
    """The configured audit log, anchored in the data home: what every interface appends to."""
    return audit_log(audit_url(settings), Path(settings.home))


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
