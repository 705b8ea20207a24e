"""Which sources exist, how each is connected, and the embedded default warehouse."""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import column, create_engine, event, inspect, select, table
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from tools.guard import deadline_passed
from tools.mapping.check import mapping_file
from tools.mapping.conversions import MappingError
from tools.mapping.loader import load_mapping
from tools.settings import OPTIONAL_SOURCES, SOURCE_NAMES, Settings
from tools.slices import SLICE_MODELS, SLICE_NAMES
from tools.sources.base import SourceReader, utcnow
from tools.sources.billing import BillingReader
from tools.sources.calendar import CalendarReader
from tools.sources.calls import CallsReader
from tools.sources.chat import ChatReader
from tools.sources.commerce import CommerceReader
from tools.sources.crm import CrmReader
from tools.sources.documents import DocumentsReader
from tools.sources.email import EmailReader
from tools.sources.faults import FaultyReader, parse_faults
from tools.sources.product import ProductReader
from tools.sources.research import ResearchReader
from tools.sources.support import SupportReader

READERS: dict[str, type[SourceReader]] = {
    r.source: r
    for r in (CrmReader, BillingReader, ProductReader, SupportReader, EmailReader,
              CalendarReader, ChatReader, DocumentsReader, CallsReader, ResearchReader, CommerceReader)
}
assert tuple(READERS) == SOURCE_NAMES

REMEDIES: dict[str, str] = {
    "crm": "Connect a CRM source (HubSpot, Salesforce, …) to include account and opportunity context.",
    "billing": "Connect a billing source (Stripe, …) to include payment status, invoices and revenue.",
    "product": "Connect a product analytics source (Segment, …) to include active users, logins and usage trend.",
    "support": "Connect a support source (Zendesk, Intercom, …) to include ticket history and satisfaction.",
    "email": "Connect an email source to include recent email context.",
    "calendar": "Connect a calendar source to include meeting context.",
    "chat": "Connect a chat source to include internal discussion context.",
    "documents": "Connect a documents source (Google Drive, …) to include shared document context.",
    "calls": "Connect a conversation intelligence source (Gong, Chorus, …) to include call analytics.",
    "research": "Connect an external research source to include recent company news.",
    "commerce": "Connect a commerce source (Shopify, or your store's tables through a mapping) to include "
                "orders, refunds, cards on file and addresses.",
}

#: Written by the fixture generator (evals/fixtures); read here without importing it.
FIXTURE_META = table("_custctx_meta", column("key"), column("value"))

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def engine_for(url: str) -> Engine:
    """One pooled engine per URL for the life of the process."""
    with _lock:
        eng = _engines.get(url)
        if eng is None:
            kwargs = {"connect_args": {"check_same_thread": False}} if url.startswith("sqlite") else {}
            eng = create_engine(url, **kwargs)
            if eng.dialect.name == "sqlite":
                # SQLite has no statement timeout: interrupt a query once the guarded
                # call's deadline has passed (checked every few thousand VM steps).
                event.listen(eng, "connect", _install_interrupt)
            _engines[url] = eng
        return eng


def _install_interrupt(dbapi_conn, _record) -> None:  # noqa: ANN001
    dbapi_conn.set_progress_handler(lambda: 1 if deadline_passed() else 0, 5_000)


def dispose_engines() -> None:
    with _lock:
        for eng in _engines.values():
            eng.dispose()
        _engines.clear()


class SourceMisconfigured(MappingError):
    """A source's configuration cannot be used as it is (e.g. its URL names a SQLite file that
    does not exist): one line that says which setting and why."""


def reader(settings: Settings, source: str) -> SourceReader | None:
    """The reader of ``source`` (behind its injected fault, if any), or None when not connected.

    Raises:
        SourceMisconfigured: the source is configured, but its URL cannot be used.
    """
    cfg = settings.source(source)
    if cfg.problem:
        raise SourceMisconfigured(cfg.problem)
    if not cfg.url:
        return None
    assert cfg.mapping is not None
    rdr = READERS[source](load_mapping(cfg.mapping), engine_for(cfg.url))
    fault = parse_faults(settings.faults).get(source)
    return FaultyReader(rdr, fault, settings.seed) if fault else rdr


def default_slices(settings: Settings, names: Iterable[str] = SLICE_NAMES,
                   forbidden: Callable[[str], bool] | None = None) -> list[str]:
    """``names`` without the slices of optional sources (commerce) that are not connected: "every
    slice" of a business without a store has no orders to miss. Slices asked for by name are
    read as asked (a ``not_connected`` gap says why there are none). ``forbidden``: the slices the
    caller's role may not read stay, so they come back ``forbidden`` whatever is connected, as every
    slice the policy denies does."""
    return [n for n in names
            if SLICE_MODELS[n].source not in OPTIONAL_SOURCES or settings.source(SLICE_MODELS[n].source).url
            or (forbidden is not None and forbidden(n))]


def config_fingerprint(settings: Settings, source: str) -> str | None:
    """A short hash of what ``source`` reads — its URL and its mapping file's content — or None
    when it is not connected. Long-term memory stamps each snapshot with it: a snapshot read
    under another configuration (a changed URL or mapping) is never served."""
    cfg = settings.source(source)
    if not cfg.url or not cfg.mapping:
        return None
    path = mapping_file(cfg.mapping)
    try:
        st = path.stat()
        version: tuple[int, int] = (st.st_mtime_ns, st.st_size)
    except OSError:
        version = (0, 0)
    return _fingerprint(cfg.url, str(path), version)


@functools.lru_cache(maxsize=256)
def _fingerprint(url: str, path: str, version: tuple[int, int]) -> str:
    # the URL and the mapping's content, not where the file lies: the same mapping read from
    # another install of the package is the same configuration (path and version key the cache)
    digest = hashlib.sha256(f"{url}\n".encode())
    try:
        digest.update(Path(path).read_bytes())
    except OSError:
        digest.update(b"<missing>")
    return digest.hexdigest()[:16]


def uses_embedded(settings: Settings) -> bool:
    url = settings.embedded_warehouse_url
    return any(settings.source(s).url == url for s in SOURCE_NAMES)


def fixture_meta(url: str) -> dict[str, str]:
    """The fixture generator's metadata of a warehouse, {} if it is not a fixture warehouse."""
    eng = engine_for(url)
    try:
        if not inspect(eng).has_table(FIXTURE_META.name):
            return {}
        with eng.connect() as conn:
            return {k: v for k, v in conn.execute(select(FIXTURE_META.c.key, FIXTURE_META.c.value))}
    except SQLAlchemyError:
        return {}


def resolve_as_of(settings: Settings) -> datetime:
    """The clock for day counts: the setting, else the fixture's as-of date, else now."""
    if settings.as_of is not None:
        a = settings.as_of
        return a if a.tzinfo is None else a.astimezone(UTC).replace(tzinfo=None)
    if uses_embedded(settings):
        meta = fixture_meta(settings.embedded_warehouse_url)
        if "as_of" in meta:
            return datetime.fromisoformat(meta["as_of"]).replace(tzinfo=None)
    return utcnow()
