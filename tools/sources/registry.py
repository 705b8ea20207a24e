"""Which sources exist, how each is connected, and the embedded default warehouse."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from sqlalchemy import column, create_engine, event, inspect, select, table
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from tools.guard import deadline_passed
from tools.mapping.loader import load_mapping
from tools.settings import SOURCE_NAMES, Settings
from tools.sources.base import SourceReader, utcnow
from tools.sources.billing import BillingReader
from tools.sources.calendar import CalendarReader
from tools.sources.calls import CallsReader
from tools.sources.chat import ChatReader
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
              CalendarReader, ChatReader, DocumentsReader, CallsReader, ResearchReader)
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


def reader(settings: Settings, source: str) -> SourceReader | None:
    """The reader of ``source`` (behind its injected fault, if any), or None when not connected."""
    cfg = settings.source(source)
    if not cfg.url:
        return None
    assert cfg.mapping is not None
    rdr = READERS[source](load_mapping(cfg.mapping), engine_for(cfg.url))
    fault = parse_faults(settings.faults).get(source)
    return FaultyReader(rdr, fault, settings.seed) if fault else rdr


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
