"""Long-term customer context: slices in a LangGraph ``BaseStore``, apart from
conversation state.

Namespace ``("customers", tenant, customer_id)``, key = slice name, value = the slice
with its provenance and when it was stored. A slice is *fresh* while younger than
its TTL (``Settings.ttls``; 0 = always read live); older snapshots are kept so a
failing source can be answered with the last snapshot, marked stale with its age.

This lives in ``tools/`` (DESIGN draws it under ``agent/``) because the tool guard's
stale-while-revalidate needs it and ``tools/`` must not import ``agent/``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from sqlalchemy.engine import make_url

from tools.slices import Slice, parse_slice
from tools.sources.base import utcnow

if TYPE_CHECKING:  # LangGraph (and LangChain under it) loads with the store, in open_store
    from langgraph.store.base import BaseStore

NAMESPACE_ROOT = "customers"


@dataclass(frozen=True)
class CachedSlice:
    slice: Slice
    age_seconds: float
    fresh: bool


class _StoreHandle:
    """A store, or how to open one on first use. With ``sqlite_path`` (LangGraph's SqliteStore
    on that file), reads go straight to the store's table until the store is opened — so a
    warm read (everything fresh in memory) never loads LangGraph at all."""

    def __init__(self, store: BaseStore | None, opener: Callable[[], BaseStore] | None, sqlite_path: str | None):
        self.store, self.opener, self.sqlite_path = store, opener, sqlite_path
        self.lock = threading.Lock()
        self.reader: sqlite3.Connection | None = None

    def get(self) -> BaseStore:
        with self.lock:
            if self.store is None:
                if self.opener is None:
                    raise ValueError("this long-term memory has no store")
                self.store = self.opener()
            return self.store

    def direct_rows(self, prefix: str) -> list[tuple[str, str]] | None:
        """The rows of ``prefix`` read from the SQLite file itself, or None when the store is
        already open (its own connection answers) or its table does not exist yet."""
        if self.sqlite_path is None or self.store is not None:
            return None
        with self.lock:
            try:
                if self.reader is None:
                    self.reader = sqlite3.connect(f"file:{self.sqlite_path}?mode=ro", uri=True,
                                                  check_same_thread=False)
                return self.reader.execute("SELECT key, value FROM store WHERE prefix = ?", (prefix,)).fetchall()
            except sqlite3.OperationalError:  # no file or no table yet: the store creates them
                return None


class ContextMemory:
    """Per-tenant slice snapshots in a BaseStore."""

    def __init__(self, store: BaseStore | None, tenant: str, ttls: dict[str, int],
                 clock: Callable[[], datetime] = utcnow, *, opener: Callable[[], BaseStore] | None = None,
                 sqlite_path: str | None = None, _handle: _StoreHandle | None = None):
        if not tenant:
            raise ValueError("a tenant is required for long-term memory")
        self._handle = _handle or _StoreHandle(store, opener, sqlite_path)
        self.tenant, self.ttls, self.clock = tenant, ttls, clock

    @property
    def store(self) -> BaseStore:
        """The LangGraph store (opened now if it was opened lazily)."""
        return self._handle.get()

    def namespace(self, customer_id: str) -> tuple[str, ...]:
        """The one place memory namespaces are built, from trusted context only."""
        return (NAMESPACE_ROOT, self.tenant, customer_id)

    def for_tenant(self, tenant: str) -> ContextMemory:
        """The same store seen from another tenant's namespace (a principal's tenant wins over
        the process's)."""
        return ContextMemory(None, tenant, self.ttls, self.clock, _handle=self._handle)

    def put(self, customer_id: str, s: Slice) -> None:
        if s.provenance.masked_fields:  # memory is full fidelity; masking happens per reader
            raise ValueError(f"refusing to store a masked copy of {s.name} in long-term memory")
        self.store.put(self.namespace(customer_id), s.name,
                       {"slice": s.model_dump(mode="json"), "stored_at": self.clock().isoformat()}, index=False)

    def get(self, customer_id: str, name: str) -> CachedSlice | None:
        return self.get_many(customer_id, [name]).get(name)

    def get_many(self, customer_id: str, names: Iterable[str]) -> dict[str, CachedSlice]:
        """The snapshots memory holds of ``names`` for one customer, in one store batch (one
        query on the SQLite and PostgreSQL stores): what a warm context read costs."""
        ns = self.namespace(customer_id)
        names = list(names)
        rows = self._handle.direct_rows(".".join(ns))
        if rows is None:
            rows = _sqlite_rows(self.store, ns)
        if rows is not None:  # the SQLite store: its rows read directly, without a transaction
            wanted = set(names)
            return {k: self._cached(k, orjson.loads(v)) for k, v in rows if k in wanted}
        from langgraph.store.base import GetOp, Item

        items = self.store.batch([GetOp(ns, n, refresh_ttl=False) for n in names])
        # a GetOp's result is the Item, or None when memory has no such key
        return {n: self._cached(n, item.value) for n, item in zip(names, items, strict=True)
                if isinstance(item, Item)}

    def _cached(self, name: str, value: dict) -> CachedSlice:
        s = parse_slice(name, value["slice"])
        age = max(0.0, (self.clock() - s.provenance.fetched_at).total_seconds())
        return CachedSlice(slice=s, age_seconds=age, fresh=age < self.ttls.get(name, 0))


def _sqlite_rows(store: BaseStore, namespace: tuple[str, ...]) -> list[tuple[str, str]] | None:
    """(key, JSON value) of every item in ``namespace`` of a LangGraph ``SqliteStore`` (its
    ``store`` table, one index range), or None for any other store or one with TTLs (whose
    reads must go through the store's API)."""
    from langgraph.store.sqlite import SqliteStore

    if type(store) is not SqliteStore or store.ttl_config or not store.is_setup:
        return None
    with store.lock:
        return store.conn.execute("SELECT key, value FROM store WHERE prefix = ?", (".".join(namespace),)).fetchall()


def state_backend(url: str, what: str) -> tuple[str, str]:
    """("sqlite", file path — its directory created) or ("postgresql", libpq URL) for a state
    URL, as LangGraph's SQLite and PostgreSQL stores and checkpointers take them."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        path = u.database or ":memory:"
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return "sqlite", path
    if u.get_backend_name() == "postgresql":
        return "postgresql", u.set(drivername="postgresql").render_as_string(hide_password=False)
    raise ValueError(f"{what} needs SQLite or PostgreSQL, not {u.get_backend_name()}")


@contextmanager
def open_store(url: str) -> Iterator[BaseStore]:
    """A SqliteStore (``sqlite:///path``) or PostgresStore (``postgresql+psycopg://...``), set up."""
    backend, target = state_backend(url, "long-term memory")
    if backend == "sqlite":
        from langgraph.store.sqlite import SqliteStore

        conn = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        try:
            store = SqliteStore(conn)
            store.setup()
            yield store
        finally:
            conn.close()
    else:
        from langgraph.store.postgres import PostgresStore

        with PostgresStore.from_conn_string(target) as pg_store:
            pg_store.setup()
            yield pg_store
