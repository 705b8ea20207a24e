"""Identity resolutions cached per process, invalidated by the identity index's generation.

Resolving a reference costs two to four indexed queries on the state database; a served read
of a customer asked for again and again repeats them on every request. :class:`CachedIndex`
answers ``resolve``, ``get`` and ``closest_names`` from a process-wide cache instead, entry by
entry stamped with the index **generation** it was computed under and only served while that
is still the index's generation.

The generation is one row, ``identity_generation.n``, that database triggers bump on every
change of the index tables (``identity_customer``, ``identity_key``, ``identity_meta``: a full
rebuild, an incremental update, a refresh in another process), so no writer has to remember
to; checking it is one primary-key read per request (a per-thread SQLite connection, or a
pooled one). A reference resolved under an older generation is resolved again.

Not-found and ambiguous answers are cached as well, and entries are kept apart per principal
whose row filter hides customers: a hidden customer must cost what a missing one does, which
it would not if another user's recent request had warmed the answer for it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from tools.identity import (
    AmbiguousCustomer,
    BadReference,
    CustomerNotFound,
    IdentityIndex,
    ReferenceError_,
    state,
)
from tools.sources.base import CustomerRef

#: Entries the process keeps (all partitions); past it the cache starts again empty.
MAX_ENTRIES = 100_000
#: The index tables whose every change bumps the generation.
INDEX_TABLES = ("identity_customer", "identity_key", "identity_meta")

_GENERATION_TABLE = ("CREATE TABLE IF NOT EXISTS identity_generation "
                     "(id INTEGER PRIMARY KEY, n BIGINT NOT NULL)")
_SQLITE_SEED = "INSERT OR IGNORE INTO identity_generation (id, n) VALUES (1, 0)"
_SQLITE_TRIGGERS = [
    f"CREATE TRIGGER IF NOT EXISTS {table}_generation_{op.lower()} AFTER {op} ON {table} "
    "BEGIN UPDATE identity_generation SET n = n + 1 WHERE id = 1; END"
    for table in INDEX_TABLES for op in ("INSERT", "UPDATE", "DELETE")
]
_POSTGRES_SEED = "INSERT INTO identity_generation (id, n) VALUES (1, 0) ON CONFLICT (id) DO NOTHING"
_POSTGRES_FUNCTION = ("CREATE OR REPLACE FUNCTION custctx_identity_generation() RETURNS trigger LANGUAGE plpgsql "
                      "AS $$ BEGIN UPDATE identity_generation SET n = n + 1 WHERE id = 1; RETURN NULL; END $$")
_POSTGRES_TRIGGER = ("CREATE TRIGGER {table}_generation AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table} "
                     "FOR EACH STATEMENT EXECUTE FUNCTION custctx_identity_generation()")
_POSTGRES_LOCK = "SELECT pg_advisory_xact_lock(1667462260, 1734700654)"  # "cctx", "geng": set-up, one at a time
_READ = "SELECT n FROM identity_generation WHERE id = 1"

_ready: set[tuple[str, tuple[str, int, int] | None]] = set()
_ready_lock = threading.Lock()
_local = threading.local()


_keys: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()


def _key(engine: Engine) -> str:
    key = _keys.get(engine)
    if key is None:  # an engine's URL never changes: rendered once
        key = _keys[engine] = engine.url.render_as_string(hide_password=False)
    return key


def install_generation(engine: Engine) -> None:
    """The generation row and the triggers that bump it, on the index's database (idempotent,
    safe when several processes do it at once)."""
    state.create_all(engine, checkfirst=True)
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            for stmt in (_GENERATION_TABLE, _SQLITE_SEED, *_SQLITE_TRIGGERS):
                conn.execute(text(stmt))
        else:
            conn.execute(text(_POSTGRES_LOCK))
            conn.execute(text(_GENERATION_TABLE))
            conn.execute(text(_POSTGRES_SEED))
            conn.execute(text(_POSTGRES_FUNCTION))
            for table in INDEX_TABLES:
                exists = conn.execute(text("SELECT 1 FROM pg_trigger WHERE tgname = :name"),
                                      {"name": f"{table}_generation"}).first()
                if exists is None:
                    conn.execute(text(_POSTGRES_TRIGGER.format(table=table)))
        conn.commit()


def _stat(path: str) -> tuple[str, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return path, st.st_dev, st.st_ino


def generation(engine: Engine) -> int:
    """The index's current generation (set up on first use in this process, and again for a
    SQLite file created anew)."""
    path = engine.url.database if engine.dialect.name == "sqlite" else None
    st = _stat(path) if path else None
    key = (_key(engine), st)
    if key not in _ready:
        with _ready_lock:
            if key not in _ready:
                install_generation(engine)
                _ready.add(key)
    if path and path != ":memory:" and st is not None:
        # a per-thread connection (no pool checkout, no transaction), per file: a database
        # deleted and created again at the same path is another file
        conns: dict[tuple[str, int, int], sqlite3.Connection] = _local.__dict__.setdefault("conns", {})
        if (con := conns.get(st)) is None:
            con = conns[st] = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
        row = con.execute(_READ).fetchone()
    else:
        with engine.connect() as conn:
            row = conn.execute(text(_READ)).first()
    return int(row[0]) if row else 0


_cache: dict[Hashable, tuple[int, Any]] = {}
_cache_lock = threading.Lock()
stats = {"hits": 0, "misses": 0}  # the tests and the benchmark read these


def clear() -> None:
    """Forget every cached resolution (tests)."""
    with _cache_lock:
        _cache.clear()


class CachedIndex:
    """An :class:`~tools.identity.IdentityIndex` answered from the process's cache while the
    index's generation stands (checked once, when this object is made: one per request).

    ``partition``: whose answers these are — None for principals that see every customer,
    else the principal (its tenant, user and role)."""

    def __init__(self, index: IdentityIndex, partition: Hashable = None):
        self.index, self.engine = index, index.engine
        self._prefix = (_key(index.engine), partition)
        self.generation = generation(index.engine)

    def resolve(self, query: str) -> tuple[CustomerRef, str]:
        """As ``IdentityIndex.resolve`` (same errors), cached."""
        return self._cached(("resolve", query.strip()), lambda: self.index.resolve(query))

    def get(self, customer_id: str) -> CustomerRef | None:
        return self._cached(("get", customer_id), lambda: self.index.get(customer_id))

    def closest_names(self, norm: str, n: int = 3) -> list[str]:
        return list(self._cached(("closest", norm, n), lambda: tuple(self.index.closest_names(norm, n))))

    def _cached(self, what: tuple[Hashable, ...], compute: Callable[[], Any]) -> Any:
        key = (*self._prefix, *what)
        hit = _cache.get(key)
        if hit is not None and hit[0] == self.generation:
            stats["hits"] += 1
            return _answer(hit[1])
        stats["misses"] += 1
        try:
            value: Any = compute()
        except ReferenceError_ as exc:
            value = exc
        with _cache_lock:
            if len(_cache) >= MAX_ENTRIES:
                _cache.clear()
            _cache[key] = (self.generation, value)
        return _answer(value)


def _answer(value: Any) -> Any:
    """A cached value, or a fresh copy of a cached lookup error raised (never the same object
    in two threads)."""
    if isinstance(value, CustomerNotFound):
        raise CustomerNotFound(value.query, list(value.suggestions))
    if isinstance(value, AmbiguousCustomer):
        raise AmbiguousCustomer(value.query, list(value.candidates))
    if isinstance(value, ReferenceError_):
        raise BadReference(str(value))
    return value
