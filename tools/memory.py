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
        if s.provenance.masked_fields:  # memory is full fidelity; masking happens per reader
            raise ValueError(f"refusing to store a masked copy of {s.name} in long-term memory")
        data, stored_at = s.model_dump(mode="json"), self.clock().isoformat()
        checksum = slice_checksum(self._handle.key, self.tenant, customer_id, s.name, stored_at, data)
        value = {"slice": data, "stored_at": stored_at, "checksum": checksum}
        if (config := self._handle.fingerprint(s.source)) is not None:
            value["config"] = config
        self.store.put(self.namespace(customer_id), s.name, value, index=False)

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
            values = [(k, orjson.loads(v)) for k, v in rows if k in wanted]
        else:
            from langgraph.store.base import GetOp, Item

            items = self.store.batch([GetOp(ns, n, refresh_ttl=False) for n in names])
            # a GetOp's result is the Item, or None when memory has no such key
            values = [(n, item.value) for n, item in zip(names, items, strict=True) if isinstance(item, Item)]
        return {k: self._cached(k, v) for k, v in values
                if self._intact(customer_id, k, v) and self._same_config(customer_id, k, v)}

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
