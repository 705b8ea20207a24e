"""Long-term customer context: slices in a LangGraph ``BaseStore``, apart from
conversation state.

Namespace ``("customers", tenant, customer_id)``, key = slice name, value = the slice
with its provenance, when it was stored and a checksum: an HMAC-SHA256, keyed by the
installation's secret (``memory.key`` in the data home, 0600, created on first use), over
the tenant, customer, slice name, stored-at time and the slice's canonical JSON. A
snapshot whose checksum fails — edited in the store's table, copied to another customer,
or written before checksums — is treated as absent (logged and counted in ``rejected``):
the read path reads the source instead, or reports a gap. Each snapshot is also stamped with
its source's configuration fingerprint (URL + mapping file): one written under another
configuration is a miss, never served (``ContextMemory.of`` sets it). A slice is *fresh* while younger than
its TTL (``Settings.ttls``; 0 = always read live); older snapshots are kept so a
failing source can be answered with the last snapshot, marked stale with its age.

This lives in ``tools/`` (DESIGN draws it under ``agent/``) because the tool guard's
stale-while-revalidate needs it and ``tools/`` must not import ``agent/``.
"""

from __future__ import annotations

import functools
import hmac
import logging
import os
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy.engine import make_url

from tools.memory_batch import SnapshotSink, write_snapshots
from tools.slices import SLICE_MODELS, Slice, parse_slice
from tools.sources.base import utcnow

if TYPE_CHECKING:
    from langgraph.store.base import BaseStore

    from tools.settings import (
        Settings,  # LangGraph (and LangChain under it) loads with the store, in open_store
    )

NAMESPACE_ROOT = "customers"
KEY_FILE = "memory.key"
OTHER_CONFIG_TEMPLATE = ("long-term memory: snapshot {key} of {namespace} was read under another configuration of "
                         "its source (URL or mapping): a miss")
REJECTED_TEMPLATE = ("long-term memory: snapshot {key} of {namespace} {why}: treated as absent "
                     "(read from the source instead)")

#: Stored text of the snapshots a memory keeps verified and parsed (past it, it starts again empty).
#: Parsed slices take several times their text in Python objects: 4 MB of text (a few thousand
#: snapshots, the hot customers of a served read) holds a process's growth to some 20 MB.
PARSED_BYTES = 4_000_000

log = logging.getLogger(__name__)
_keys: dict[tuple[str | None, ...], bytes] = {}
_keys_lock = threading.Lock()


def installation_key(home: Path | None = None) -> bytes:
    """The secret that signs memory snapshots: ``memory.key`` in ``home`` (default: the data
    home, ``CUSTCTX_HOME``), 32 random bytes as hex, readable only by the user, created on first
    use. Every process of an installation must see the same file (copy it to every host that
    shares a PostgreSQL store).

    Raises:
        ValueError: the file exists but holds no key.
    """
    env = (os.environ.get("CUSTCTX_HOME"), os.environ.get("XDG_DATA_HOME"), os.environ.get("HOME"))
    cache = (str(home), *env) if home is not None else env
    with _keys_lock:
        if cache not in _keys:
            if home is None:
                from tools.settings import Settings

                home = Settings().home
            _keys[cache] = _load_or_create_key(Path(home) / KEY_FILE)
        return _keys[cache]


def _load_or_create_key(path: Path) -> bytes:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic, and never over a key another process made meanwhile
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 32:
        raise ValueError(f"{path} holds no memory key (64 hex digits); remove it to have a new one made "
                         "(every snapshot in long-term memory is then read from its source again)")
    return key


def slice_checksum(key: bytes, tenant: str, customer_id: str, name: str, stored_at: str, slice_json: object) -> str:
    """HMAC-SHA256 (hex) of a snapshot: its place (tenant, customer, slice name), when it was
    stored and the slice as canonical JSON (orjson, keys sorted)."""
    msg = orjson.dumps([tenant, customer_id, name, stored_at, slice_json], option=orjson.OPT_SORT_KEYS)
    return hmac.digest(key, msg, "sha256").hex()  # one-shot (OpenSSL): a warm read checks every slice


@dataclass(frozen=True)
class CachedSlice:
    slice: Slice
    age_seconds: float
    fresh: bool


class _StoreHandle:
    """A store, or how to open one on first use. With ``sqlite_path`` (LangGraph's SqliteStore
    on that file), reads go straight to the store's table until the store is opened — so a
    warm read (everything fresh in memory) never loads LangGraph at all."""

    def __init__(self, store: BaseStore | None, opener: Callable[[], BaseStore] | None, sqlite_path: str | None,
                 key: bytes | None = None):
        self.store, self.opener, self.sqlite_path = store, opener, sqlite_path
        self.lock = threading.Lock()
        self.reader: sqlite3.Connection | None = None
        self._key = key
        self.rejected = 0  # snapshots not served because their checksum failed
        #: source → the fingerprint of its configuration (URL + mapping); None: snapshots unstamped
        self.config: Callable[[str], str | None] | None = None
        self._configs: dict[str, str | None] = {}
        self.other_config = 0  # snapshots not served because another configuration wrote them
        #: (tenant, customer, slice) → (the stored value, the slice it verified and parsed to)
        self.parsed: dict[tuple[str, str, str], tuple[object, Slice]] = {}
        self._parsed_size = 0

    def keep(self, place: tuple[str, str, str], held: tuple[object, Slice], size: int) -> None:
        """Remember a verified, parsed snapshot (past ``PARSED_BYTES`` of stored text, start again)."""
        with self.lock:
            if self._parsed_size + size > PARSED_BYTES:
                self.parsed.clear()
                self._parsed_size = 0
            self.parsed[place] = held
            self._parsed_size += size

    def fingerprint(self, source: str) -> str | None:
        """The configuration fingerprint of ``source`` (worked out once per memory: its settings
        and mapping files are those of the process)."""
        if self.config is None:
            return None
        if source not in self._configs:
            self._configs[source] = self.config(source)
        return self._configs[source]

    @property
    def key(self) -> bytes:
        if self._key is None:
            self._key = installation_key()
        return self._key

    def get(self) -> BaseStore:
        with self.lock:
            if self.store is None:
                if self.opener is None:
                    raise ValueError("this long-term memory has no store")
                self.store = self.opener()
            return self.store

    def direct_rows(self, prefix: str, names: list[str]) -> list[tuple[str, str]] | None:
        """The rows ``names`` of ``prefix`` read from the SQLite file itself, or None when the store
        is already open (its own connection answers) or its table does not exist yet."""
        if self.sqlite_path is None or self.store is not None:
            return None
        with self.lock:
            try:
                if self.reader is None:
                    self.reader = sqlite3.connect(f"file:{self.sqlite_path}?mode=ro", uri=True,
                                                  check_same_thread=False)
                return self.reader.execute(_rows_sql(len(names)), (prefix, *names)).fetchall()
            except sqlite3.OperationalError:  # no file or no table yet: the store creates them
                return None


class ContextMemory:
    """Per-tenant slice snapshots in a BaseStore, each signed and checked on read.

    ``key``: the HMAC key of the snapshots (default: :func:`installation_key`, resolved on
    first use). ``config``: a source's configuration fingerprint (URL + mapping file, see
    ``tools.sources.registry.config_fingerprint``); each snapshot is stamped with its source's,
    and one stamped under another configuration is a miss — never served, not even stale — so a
    changed URL or mapping never answers with the old one's data (:meth:`of` sets it)."""

    def __init__(self, store: BaseStore | None, tenant: str, ttls: dict[str, int],
                 clock: Callable[[], datetime] = utcnow, *, opener: Callable[[], BaseStore] | None = None,
                 sqlite_path: str | None = None, key: bytes | None = None, _handle: _StoreHandle | None = None,
                 config: Callable[[str], str | None] | None = None):
        if not tenant:
            raise ValueError("a tenant is required for long-term memory")
        self._handle = _handle or _StoreHandle(store, opener, sqlite_path, key)
        if config is not None:
            self._handle.config = config
            self._handle.parsed.clear()  # verified under the configuration it replaces
        self.tenant, self.ttls, self.clock = tenant, ttls, clock

    @classmethod
    def of(cls, store: BaseStore | None, settings: Settings, clock: Callable[[], datetime] = utcnow,
           **kw: Any) -> ContextMemory:
        """Long-term memory as ``settings`` configure it: their tenant and TTLs, and the
        installation key in their data home — so every process of an installation, however
        it was configured (environment or code), signs and checks snapshots alike; snapshots
        stamped with the configuration of their source in ``settings``."""
        from tools.sources.registry import config_fingerprint

        kw.setdefault("config", functools.partial(config_fingerprint, settings))
        return cls(store, settings.tenant, settings.ttls, clock, key=installation_key(settings.home), **kw)

    @property
    def config(self) -> Callable[[str], str | None] | None:
        """A source's configuration fingerprint (a copy of this memory over another store must use it)."""
        return self._handle.config

    @property
    def other_config(self) -> int:
        """Snapshots not served since this memory was opened because another configuration wrote them."""
        return self._handle.other_config

    @property
    def key(self) -> bytes:
        """The key snapshots are signed with (a copy of this memory over another store must use it)."""
        return self._handle.key

    @property
    def rejected(self) -> int:
        """Snapshots not served since this memory was opened because their checksum failed."""
        return self._handle.rejected

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
        """Keep a snapshot of ``s`` (a refresh's write buffer, a ``SnapshotSink``, holds it for its
        chunk's batch)."""
        ns, value, store = self.namespace(customer_id), self.snapshot(customer_id, s), self.store
        if isinstance(store, SnapshotSink):
            store.hold(ns, s.name, value, s)
        else:
            store.put(ns, s.name, value, index=False)

    def put_many(self, items: Iterable[tuple[str, Slice]]) -> None:
        """Keep snapshots of many ``(customer id, slice)`` in one batch, one transaction (written
        straight into the store's table for the SQLite and PostgreSQL stores:
        ``tools.memory_batch``), all stamped with one reading of the clock."""
        store, stored_at = self.store, self.clock().isoformat()
        if isinstance(store, SnapshotSink):
            for cid, s in items:
                store.hold(self.namespace(cid), s.name, self.snapshot(cid, s, stored_at), s)
            return
        last = {(cid, s.name): (cid, s) for cid, s in items}  # one write per snapshot: the last wins
        write_snapshots(store, [(self.namespace(cid), s.name, self.snapshot(cid, s, stored_at))
                                for cid, s in last.values()])

    def snapshot(self, customer_id: str, s: Slice, stored_at: str | None = None) -> dict[str, Any]:
        """The value memory stores for ``s``: the slice's JSON, when it was stored (now, or
        ``stored_at``), its checksum and its source's configuration fingerprint."""
        if s.provenance.masked_fields:  # memory is full fidelity; masking happens per reader
            raise ValueError(f"refusing to store a masked copy of {s.name} in long-term memory")
        data = orjson.loads(s.model_dump_json())  # = model_dump(mode="json"), a quarter faster
        stored_at = stored_at or self.clock().isoformat()
        checksum = slice_checksum(self._handle.key, self.tenant, customer_id, s.name, stored_at, data)
        value = {"slice": data, "stored_at": stored_at, "checksum": checksum}
        if (config := self._handle.fingerprint(s.source)) is not None:
            value["config"] = config
        return value

    def get(self, customer_id: str, name: str) -> CachedSlice | None:
        return self.get_many(customer_id, [name]).get(name)

    def get_many(self, customer_id: str, names: Iterable[str]) -> dict[str, CachedSlice]:
        """The snapshots memory holds of ``names`` for one customer, in one store batch (one
        query on the SQLite and PostgreSQL stores): what a warm context read costs."""
        return self.snapshots(customer_id, self.rows(customer_id, names))

    def rows(self, customer_id: str, names: Iterable[str]) -> list[tuple[str, Any]]:
        """``(slice name, JSON text or the store's value)`` of ``names``: read, not yet checked."""
        ns, names = self.namespace(customer_id), list(dict.fromkeys(names))
        if not names:
            return []
        rows: list[tuple[str, Any]] | None = self._handle.direct_rows(".".join(ns), names)
        if rows is None and (rows := _sqlite_rows(self.store, ns, names)) is None and (
                rows := _postgres_rows(self.store, ns, names)) is None:  # through the store's API
            from langgraph.store.base import GetOp, Item

            items = self.store.batch([GetOp(ns, n, refresh_ttl=False) for n in names])
            # a GetOp's result is the Item, or None when memory has no such key
            rows = [(n, item.value) for n, item in zip(names, items, strict=True) if isinstance(item, Item)]
        return rows

    def snapshots(self, customer_id: str, rows: Iterable[tuple[str, Any]]) -> dict[str, CachedSlice]:
        """The :meth:`rows` that pass their checksum and their configuration's check, as snapshots."""
        now = self.clock()
        return {k: c for k, v in rows if (c := self._snapshot(customer_id, k, v, now)) is not None}

    def _snapshot(self, customer_id: str, name: str, stored: object, now: datetime) -> CachedSlice | None:
        """A stored value as a snapshot, or None (its checksum fails; another configuration wrote it).
        The very same value verified and parsed before is not again (a served read asks for the same
        customers again and again); the slice returned is always a copy."""
        place = (self.tenant, customer_id, name)
        held = self._handle.parsed.get(place)
        if held is None or held[0] != stored:
            value: Any = orjson.loads(stored) if isinstance(stored, str | bytes) else stored
            if not (self._intact(customer_id, name, value) and self._same_config(customer_id, name, value)):
                return None
            held = (stored, parse_slice(name, value["slice"]))
            self._handle.keep(place, held, len(stored) if isinstance(stored, str | bytes) else 2_000)
        s = held[1]
        s = s.model_copy(update={"provenance": s.provenance.model_copy()})  # the caller may stamp its own
        age = max(0.0, (now - s.provenance.fetched_at).total_seconds())
        return CachedSlice(slice=s, age_seconds=age, fresh=age < self.ttls.get(name, 0))

    def _same_config(self, customer_id: str, name: str, value: dict) -> bool:
        """Whether a snapshot was read under its source's current configuration. A memory
        without ``config`` takes every snapshot as it is; one with it refuses an unstamped
        snapshot too (written before snapshots were stamped: which configuration it came from
        is unknown)."""
        if self._handle.config is None or (model := SLICE_MODELS.get(name)) is None:
            return True
        if value.get("config") == self._handle.fingerprint(model.source):
            return True
        with self._handle.lock:
            self._handle.other_config += 1
        log.debug(OTHER_CONFIG_TEMPLATE.format(key=name, namespace=".".join(self.namespace(customer_id))))
        return False

    def _intact(self, customer_id: str, name: str, value: object) -> bool:
        """Whether a stored value is a snapshot this installation wrote, unchanged, for this place."""
        if isinstance(value, dict) and isinstance(sig := value.get("checksum"), str) and isinstance(
                at := value.get("stored_at"), str):
            want = slice_checksum(self._handle.key, self.tenant, customer_id, name, at, value.get("slice"))
            if hmac.compare_digest(sig.encode(), want.encode()):
                return True
            why, level = "failed its checksum (changed in the store, or copied from elsewhere)", logging.WARNING
        else:
            why, level = "has no checksum (written before checksums, or tampered with)", logging.INFO
        with self._handle.lock:
            self._handle.rejected += 1
        log.log(level, REJECTED_TEMPLATE.format(key=name, namespace=".".join(self.namespace(customer_id)), why=why))
        return False



@functools.lru_cache(maxsize=64)
def _rows_sql(n: int) -> str:  # n keys of one namespace: a primary-key lookup each
    return f"SELECT key, value FROM store WHERE prefix = ? AND key IN ({', '.join('?' * n)})"


def _sqlite_rows(store: BaseStore, namespace: tuple[str, ...], names: list[str]) -> list[tuple[str, str]] | None:
    """(key, JSON value) of the items ``names`` in ``namespace`` of a LangGraph ``SqliteStore`` (its
    ``store`` table), or None for any other store or one with TTLs (whose reads must go through
    the store's API)."""
    from langgraph.store.sqlite import SqliteStore

    if type(store) is not SqliteStore or store.ttl_config or not store.is_setup:
        return None
    with store.lock:
        return store.conn.execute(_rows_sql(len(names)), (".".join(namespace), *names)).fetchall()


_PG_ROWS_SQL = "SELECT key, value::text FROM store WHERE prefix = %s AND key = ANY(%s)"


def _postgres_rows(store: BaseStore, namespace: tuple[str, ...], names: list[str]) -> list[tuple[str, str]] | None:
    """(key, JSON text) of the items ``names`` in ``namespace`` of a LangGraph ``PostgresStore`` on
    one connection (its ``store`` table; one prepared statement, one round trip: its own batch
    also builds and runs a TTL-refreshing update), or None for any other store, a pool, a
    pipeline, TTLs or a custom value loader (those reads go through the store's API)."""
    if type(store).__name__ != "PostgresStore":  # (psycopg and its store are the ``postgres`` extra's)
        return None
    from langgraph.store.postgres import PostgresStore
    from psycopg import Connection
    from psycopg.rows import tuple_row

    if (type(store) is not PostgresStore or store.ttl_config or store.pipe is not None
            or store._deserializer is not None or not isinstance(store.conn, Connection)):
        return None
    with store.lock, store.conn.cursor(row_factory=tuple_row) as cur:
        return cur.execute(_PG_ROWS_SQL, (".".join(namespace), names)).fetchall()


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
