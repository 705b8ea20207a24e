"""The audit log's append on PostgreSQL, at the driver.

``AuditLog`` appends through this when its database is PostgreSQL reached with psycopg and a
plain URL (no query options: those say how to connect, and SQLAlchemy reads them): one
``psycopg`` connection per log and process (made again in a forked child, and after a failed
batch), its statements prepared on the server once. A batch is one transaction in two round
trips, sent in pipeline mode: the tenants' advisory locks and their chain heads (the head is
read by a statement that starts after the lock is held, so it sees every committed append),
then the insert of the linked records and the commit. Through SQLAlchemy the same batch took
six round trips (a pool checkout's reset among them) and most of a served read's time.

The rows, the chain, the locks and the checks are exactly those of the SQLAlchemy path (a
restarted chain still uses that one). Durability is the server's: the commit returns once
PostgreSQL has made it durable (``synchronous_commit`` as configured). A driver error is raised
as SQLAlchemy's (``DBAPIError`` and its subclasses), as the other path raises it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from tools.access.audit_chain import ChainHead

if TYPE_CHECKING:  # psycopg is the ``postgres`` extra's: imported only when a log is on PostgreSQL
    import psycopg

#: The columns an append writes, in the insert's order.
COLUMNS = ("at", "tenant", "user_name", "role", "scope", "interface", "customer_id", "slice", "decision", "outcome",
           "latency_ms", "detail", "seq", "prev_hash", "hash")
_VALUES = itemgetter(*COLUMNS)
_INSERT = f"INSERT INTO audit_log ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"
_LOCK = "SELECT pg_advisory_xact_lock(%s, hashtext(%s))"
# the unique (tenant, seq) index answers both: no scan, whatever the log's size
_HEAD = "SELECT seq, hash, at FROM audit_log WHERE tenant = %s AND seq IS NOT NULL ORDER BY seq DESC LIMIT 1"
_HASH_AT = "SELECT hash FROM audit_log WHERE tenant = %s AND seq = %s"


def postgres_conninfo(engine: Engine) -> str | None:
    """The libpq URL of a plain ``postgresql+psycopg://`` engine; None for any other database or
    driver, or a URL with options."""
    url = engine.url
    if url.get_backend_name() != "postgresql" or url.get_driver_name() != "psycopg" or url.query:
        return None
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class PostgresAppender:
    """Appends audit rows to one PostgreSQL database (see the module doc). Thread-safe: one batch
    at a time (a process's appends of a tenant are group committed before they get here)."""

    def __init__(self, conninfo: str, lock_namespace: int):
        self.conninfo, self.lock_namespace = conninfo, lock_namespace
        self._lock = threading.Lock()
        self._con: psycopg.Connection | None = None
        self._pid = 0

    def _connection(self) -> psycopg.Connection:
        import psycopg

        if self._con is None or self._con.closed or self._pid != os.getpid():  # never a parent's
            self._con = psycopg.connect(self.conninfo, prepare_threshold=0)
            self._pid = os.getpid()
        return self._con

    def append(self, by_tenant: dict[str, list[dict[str, Any]]],
               link: Callable[[str, list[dict[str, Any]], ChainHead | None, Callable[[int], str | None]], ChainHead]
               ) -> dict[str, ChainHead]:
        """Write each tenant's rows after its chain head, in one transaction. ``link(tenant, rows,
        head, hash_at)`` checks the head against the anchor (``hash_at(seq)``: the hash of the
        tenant's record ``seq``) and sets each row's seq and hashes; it returns the new head."""
        import psycopg

        heads: dict[str, ChainHead] = {}
        with self._lock:
            con = self._connection()
            try:
                with con.pipeline(), con.transaction():
                    cur = con.cursor()
                    tenants = sorted(by_tenant)  # sorted: two batches never deadlock
                    for tenant in tenants:
                        cur.execute(_LOCK, (self.lock_namespace, tenant))
                    found: dict[str, Sequence[Any] | None] = {}
                    for tenant in tenants:
                        found[tenant] = con.execute(_HEAD, (tenant,)).fetchone()  # the first fetch syncs
                    out: list[Sequence[Any]] = []
                    for tenant, rows in by_tenant.items():
                        row = found[tenant]
                        head = ChainHead(row[0], row[1], row[2]) if row else None

                        def hash_at(seq: int, tenant: str = tenant) -> str | None:
                            got = con.execute(_HASH_AT, (tenant, seq)).fetchone()
                            return str(got[0]) if got else None

                        heads[tenant] = link(tenant, rows, head, hash_at)
                        out.extend(_VALUES(r) for r in rows)
                    cur.executemany(_INSERT, out)
            except psycopg.Error as exc:
                self._drop(con)
                raise DBAPIError.instance(_INSERT, None, exc, psycopg.Error) from exc
            except BaseException:
                self._drop(con)
                raise
        return heads

    def _drop(self, con: psycopg.Connection) -> None:
        """A failed batch's connection is not used again (its transaction rolled back on close)."""
        try:
            con.close()
        finally:
            self._con = None
