"""The audit log's append on a SQLite file, at the driver.

``AuditLog`` appends through this when its database is a plain SQLite file: one ``sqlite3``
connection per log and process (made again in a forked child), the statements prepared once
(the driver's statement cache), one ``BEGIN IMMEDIATE`` transaction per batch in which the
chain head is read with one indexed statement, the records linked and inserted with one
``executemany``. The rows, the chain and the checks are exactly those of the SQLAlchemy path
(PostgreSQL, and a restarted chain, use that one): a served read appends on every request, and
through SQLAlchemy the append cost five times what it costs here.

Durability is the SQLAlchemy path's: on a database in WAL mode (the state database) a commit
does not wait for the disk (``synchronous=NORMAL``) — an acknowledged append survives the
process being killed, not a power cut. A driver error is raised as SQLAlchemy's (``DBAPIError``
and its subclasses), as the other path raises it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from operator import itemgetter
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from tools.access.audit_chain import ChainHead

#: The columns an append writes, in the insert's order.
COLUMNS = ("at", "tenant", "user_name", "role", "scope", "interface", "customer_id", "slice", "decision", "outcome",
           "latency_ms", "detail", "seq", "prev_hash", "hash")
_AFTER_AT = itemgetter(*COLUMNS[1:])  # a row's values after its time, in the insert's order
_INSERT = f"INSERT INTO audit_log ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
# the unique (tenant, seq) index answers both: no scan, whatever the log's size
_HEAD = "SELECT seq, hash, at FROM audit_log WHERE tenant = ? AND seq IS NOT NULL ORDER BY seq DESC LIMIT 1"
_HASH_AT = "SELECT hash FROM audit_log WHERE tenant = ? AND seq = ?"


def sqlite_file(engine: Engine) -> str | None:
    """The file of a plain ``sqlite:///path`` engine; None for any other database, an in-memory
    one or a URL with options (those say how to open it: SQLAlchemy does)."""
    url = engine.url
    db = url.database
    if url.get_backend_name() != "sqlite" or url.query or not db or db == ":memory:" or db.startswith("file:"):
        return None
    return db


def _stored(at: datetime) -> str:
    """A naive-UTC time as SQLAlchemy's SQLite ``DateTime`` stores it (and parses it back)."""
    return at.isoformat(sep=" ", timespec="microseconds")


class SqliteAppender:
    """Appends audit rows to one SQLite file (see the module doc). Thread-safe: one batch at a time."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._con: sqlite3.Connection | None = None
        self._pid = 0

    def _connection(self) -> sqlite3.Connection:
        if self._con is None or self._pid != os.getpid():  # a forked child never shares its parent's
            con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0,
                                  cached_statements=32)
            if str(con.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
                con.execute("PRAGMA synchronous=NORMAL")
            self._con, self._pid = con, os.getpid()
        return self._con

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            con = self._connection()
            statement = "BEGIN IMMEDIATE"
            try:
                con.execute(statement)  # the write lock before the head is read
                try:
                    yield con
                    statement = "COMMIT"
                    con.execute(statement)
                except BaseException:
                    if con.in_transaction:
                        con.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise DBAPIError.instance(statement, None, exc, sqlite3.Error) from exc

    def append(self, by_tenant: dict[str, list[dict[str, Any]]],
               link: Callable[[str, list[dict[str, Any]], ChainHead | None, Callable[[int], str | None]], ChainHead]
               ) -> dict[str, ChainHead]:
        """Write each tenant's rows after its chain head, in one transaction. ``link(tenant, rows,
        head, hash_at)`` checks the head against the anchor (``hash_at(seq)``: the hash of the
        tenant's record ``seq``) and sets each row's seq and hashes; it returns the new head."""
        heads: dict[str, ChainHead] = {}
        with self._transaction() as con:
            out: list[Sequence[Any]] = []
            for tenant, rows in by_tenant.items():
                found = con.execute(_HEAD, (tenant,)).fetchone()
                head = ChainHead(found[0], found[1], _parse_at(found[2])) if found else None

                def hash_at(seq: int, tenant: str = tenant) -> str | None:
                    row = con.execute(_HASH_AT, (tenant, seq)).fetchone()
                    return row[0] if row else None

                heads[tenant] = link(tenant, rows, head, hash_at)
                at, stored = None, ""
                for r in rows:
                    if r["at"] is not at:  # a batch's records share one time: stored once
                        at = r["at"]
                        stored = _stored(at)
                    out.append((stored, *_AFTER_AT(r)))
            con.executemany(_INSERT, out)
        return heads


def _parse_at(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))
