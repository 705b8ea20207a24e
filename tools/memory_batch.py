"""Long-term memory's batch writes: many snapshots (``ContextMemory`` values) written in one
transaction — what a refresh chunk ends with (``ContextMemory.put_many``, the refresh's write
buffer in ``tools.refresh.bulk``).

A LangGraph store writes a batch of ``PutOp``\\ s by validating each op, de-duplicating them and
building one statement with a placeholder group per item; for the two stores this project opens
(``open_store``: ``SqliteStore``, ``PostgresStore``) the same rows are written here straight into
the store's own ``store`` table, one prepared statement run for every row (``executemany``) —
the columns, the JSON encoding and the upsert of the store's own put path
(langgraph-checkpoint-sqlite 3.1 ``_prepare_batch_PUT_queries``, -postgres 3.2 likewise):

* SQLite: ``value`` is ``orjson.dumps(value)`` (bytes), ``created_at``/``updated_at`` the current
  timestamp, no expiry; where the store's ``INSERT OR REPLACE`` deletes the old row and inserts a
  new one, this upsert updates the row in place to the same column values (no index churn);
* PostgreSQL: ``value`` as ``jsonb`` (the same JSON, encoded once by orjson), ``ON CONFLICT
  (prefix, key) DO UPDATE`` exactly as the store's.

Only a store without a TTL or an index (vector search) configuration is written directly — those
are what ``open_store`` makes; any other store (``InMemoryStore``, a store with TTLs, a
``PostgresStore`` over a pool or in pipeline mode) gets ``PutOp``\\ s through its own ``batch``.
Reads are unaffected: ``ContextMemory.get_many`` reads these rows back exactly as if the store
had written them (``tests/test_refresh_write_path.py`` checks it on SQLite and PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from langgraph.store.base import BaseStore

    from tools.slices import Slice

#: One snapshot to write: (namespace, key, the value ``ContextMemory`` stores).
Put = tuple[tuple[str, ...], str, dict[str, Any]]
#: One snapshot to remove: (namespace, key).
Delete = tuple[tuple[str, ...], str]

_SQLITE_UPSERT = (
    "INSERT INTO store (prefix, key, value, created_at, updated_at, expires_at, ttl_minutes) "
    "VALUES (?, ?, ?, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, NULL, NULL) "
    "ON CONFLICT (prefix, key) DO UPDATE SET value = excluded.value, created_at = excluded.created_at, "
    "updated_at = excluded.updated_at, expires_at = excluded.expires_at, ttl_minutes = excluded.ttl_minutes")
_SQLITE_DELETE = "DELETE FROM store WHERE prefix = ? AND key = ?"
_PG_UPSERT = (
    "INSERT INTO store (prefix, key, value, created_at, updated_at, expires_at, ttl_minutes) "
    "VALUES (%s, %s, %s, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, NULL, NULL) "
    "ON CONFLICT (prefix, key) DO UPDATE SET value = EXCLUDED.value, updated_at = CURRENT_TIMESTAMP, "
    "expires_at = EXCLUDED.expires_at, ttl_minutes = EXCLUDED.ttl_minutes")
_PG_DELETE = "DELETE FROM store WHERE prefix = %s AND key = %s"


class SnapshotSink:
    """A store view that takes snapshots with the slices they were made from (a refresh's write
    buffer): ``ContextMemory.put`` hands them to :meth:`hold` instead of ``store.put``."""

    def hold(self, namespace: tuple[str, ...], key: str, value: dict[str, Any], s: Slice) -> None:
        raise NotImplementedError


def write_snapshots(store: BaseStore, puts: Sequence[Put], deletes: Sequence[Delete] = ()) -> None:
    """Write ``puts`` and remove ``deletes`` in one transaction (one namespace/key at most once
    in all: the caller keeps the last write of each)."""
    if not puts and not deletes:
        return
    kind = direct_kind(store)
    if kind == "sqlite":
        _sqlite(store, puts, deletes)
    elif kind == "postgres":
        _postgres(store, puts, deletes)
    else:
        from langgraph.store.base import PutOp

        ttl = (store.ttl_config or {}).get("default_ttl")  # what store.put would give each item
        store.batch([*(PutOp(ns, key, None) for ns, key in deletes),
                     *(PutOp(ns, key, value, index=False, ttl=ttl) for ns, key, value in puts)])


def direct_kind(store: BaseStore) -> str | None:
    """"sqlite" or "postgres" when ``store`` is written directly (see the module docstring), else None."""
    from langgraph.store.sqlite import SqliteStore

    if type(store) is SqliteStore:
        return None if store.ttl_config or store.index_config else "sqlite"
    try:
        from langgraph.store.postgres import PostgresStore
        from psycopg import Connection
    except ImportError:  # pragma: no cover - the PostgreSQL extra is installed with the package
        return None
    if type(store) is PostgresStore and store.pipe is None and isinstance(store.conn, Connection):
        return None if store.ttl_config or store.index_config else "postgres"
    return None


def _sqlite(store: Any, puts: Sequence[Put], deletes: Sequence[Delete]) -> None:
    rows = [(".".join(ns), key, orjson.dumps(value)) for ns, key, value in puts]
    if not store.is_setup:
        store.setup()
    with store.lock:  # the store's connection is in autocommit mode: one explicit transaction
        conn = store.conn
        conn.execute("BEGIN")
        try:
            if deletes:
                conn.executemany(_SQLITE_DELETE, [(".".join(ns), key) for ns, key in deletes])
            if rows:
                conn.executemany(_SQLITE_UPSERT, rows)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def _raw(data: bytes) -> bytes:
    return data


def _postgres(store: Any, puts: Sequence[Put], deletes: Sequence[Delete]) -> None:
    from psycopg.types.json import Jsonb

    rows = [(".".join(ns), key, Jsonb(orjson.dumps(value), dumps=_raw)) for ns, key, value in puts]
    with store.lock, store.conn.transaction(), store.conn.cursor() as cur:
        if deletes:
            cur.executemany(_PG_DELETE, [(".".join(ns), key) for ns, key in deletes])
        if rows:
            cur.executemany(_PG_UPSERT, rows)
