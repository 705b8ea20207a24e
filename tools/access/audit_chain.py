"""The audit log's records and chains: the table, one record, its hash, the chain heads,
the anchor file outside the database, and the walk that verifies a chain.

:class:`tools.access.audit.AuditLog` appends and verifies with these (docs/ACCESS.md,
"The audit log"); every public name here is importable from ``tools.access.audit`` too.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

Decision = Literal["allowed", "masked", "denied"]
ProblemKind = Literal["missing", "altered", "broken_link", "duplicate", "anchor_mismatch"]

GENESIS = "0" * 64  # the previous hash of a chain's first record
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


def record_hash(row: Mapping[str, Any], at_iso: str | None = None) -> str:
    """SHA-256 (hex) of a record's canonical form: compact UTF-8 JSON (orjson) of an array of the
    version tag, the tenant, seq, every field in a fixed order (time as naive-UTC ISO with
    microseconds, latency as a float) and the previous record's hash. ``at_iso``: that ISO form of
    ``row["at"]`` when the caller has it already (a batch's records share one time)."""
    body = [_HASH_VERSION, row["tenant"], int(row["seq"]), at_iso or at_hash_form(row["at"]),
            row["user_name"], row["role"], row["scope"], row["interface"], row["customer_id"], row["slice"],
            row["decision"], row["outcome"], float(row["latency_ms"]), row["detail"], row["prev_hash"]]
    return hashlib.sha256(orjson.dumps(body)).hexdigest()


def at_hash_form(at: datetime) -> str:
    """A record time as :func:`record_hash` hashes it: naive-UTC ISO with microseconds."""
    return _naive_utc(at).isoformat(timespec="microseconds")


def audit_row(at: datetime, tenant: str, user_name: str, role: str, scope: str, interface: str, customer_id: str,
              slice_name: str, decision: Decision, outcome: str, latency_ms: float, detail: str | None) -> dict[str, Any]:
    """One record to append, as :meth:`AuditLog.append_rows` takes it (the fields of
    :class:`AuditRecord`, the time naive UTC) — what the access gate builds for every read."""
    return {"at": _naive_utc(at), "tenant": tenant, "user_name": user_name, "role": role, "scope": scope,
            "interface": interface, "customer_id": customer_id, "slice": slice_name, "decision": decision,
            "outcome": outcome, "latency_ms": latency_ms, "detail": detail}


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
        self._seen: tuple[tuple[int, int, int], dict[str, ChainHead]] | None = None  # (file state, heads)

    def heads(self) -> dict[str, ChainHead]:
        """The anchored head of every tenant of this log ({} without a file). Parsed again only
        when the file changed (inode, size, modification time): one ``stat`` otherwise — an
        append asks before every batch."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return {}
        if (seen := self._seen) is not None and seen[0] == (st.st_ino, st.st_size, st.st_mtime_ns):
            return dict(seen[1])
        try:
            with open(self.path, "rb") as fh:
                fcntl.flock(fh, fcntl.LOCK_SH)
                st = os.fstat(fh.fileno())
                doc = self._parse(fh.read())
        except FileNotFoundError:
            return {}
        heads = self._remember((st.st_ino, st.st_size, st.st_mtime_ns), doc)
        return dict(heads)

    def _remember(self, state: tuple[int, int, int], doc: dict[str, Any]) -> dict[str, ChainHead]:
        heads = {t: ChainHead(h["seq"], h["hash"], datetime.fromisoformat(h["at"]) if h.get("at") else None)
                 for t, h in doc.get("logs", {}).get(self.log_id, {}).items()}
        self._seen = (state, heads)
        return heads

    def advance(self, heads: Mapping[str, ChainHead]) -> None:
        """Record new heads (a head never moves back: concurrent writers finish in any order).
        The file is read under its lock every time (another process may have moved another
        tenant's or log's head), and what was written is remembered, so the next
        :meth:`heads` finds the file unchanged and parses nothing."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:  # no data home yet
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            raw = os.pread(fd, size, 0) if size else b""
            doc = self._parse(raw)
            mine = doc.setdefault("logs", {}).setdefault(self.log_id, {})
            new = {t: {"seq": h.seq, "hash": h.hash, "at": h.at.isoformat() if h.at else None}
                   for t, h in heads.items() if h.seq > mine.get(t, {}).get("seq", 0)}
            if new:
                mine.update(new)
                doc["version"] = 1
                data = orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
                # Rewritten in place, padded rather than truncated: ext4 flushes a file truncated and
                # rewritten (or renamed over another) on close, which cost milliseconds per append.
                os.pwrite(fd, data.ljust(len(raw)), 0)
            st = os.fstat(fd)
            self._remember((st.st_ino, st.st_size, st.st_mtime_ns), doc)
        finally:
            os.close(fd)  # releases the lock

    def _parse(self, raw: bytes) -> dict[str, Any]:
        try:
            return orjson.loads(raw) if raw.strip() else {}
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
