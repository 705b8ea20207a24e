"""Health of every configured source: reachable, how fast, how fresh."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from tools.guard import SourceGuard
from tools.settings import SOURCE_NAMES, Settings
from tools.sources.faults import parse_faults
from tools.sources.registry import REMEDIES, reader


class SourceHealth(BaseModel):
    source: str
    status: str  # ok | not_connected | unavailable | timeout | circuit_open
    system: str | None = None
    url: str | None = None
    latency_ms: float | None = None
    rows: int | None = None
    newest_row: datetime | None = None
    breaker: str | None = None
    fault: str | None = None
    detail: str | None = None


def safe_url(url: str) -> str:
    """The URL with its password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def check_sources(settings: Settings, guard: SourceGuard) -> list[SourceHealth]:
    """Ping every source through the guard (faults, timeouts and breakers apply)."""
    faults = parse_faults(settings.faults)
    out = []
    for source in SOURCE_NAMES:
        cfg = settings.source(source)
        rdr = reader(settings, source)
        if rdr is None:
            out.append(SourceHealth(source=source, status="not_connected", detail=REMEDIES[source]))
            continue
        result, outcome, _ = guard.call(source, "ping", rdr.ping, cfg.timeout_s)
        fault = faults.get(source)
        out.append(SourceHealth(
            source=source, system=rdr.mapping.system, url=safe_url(cfg.url or ""), status=outcome.status,
            latency_ms=outcome.latency_ms, rows=result[0] if result else None,
            newest_row=result[1] if result else None, breaker=guard.breaker(source).state,
            fault=str(fault) if fault else None, detail=outcome.error,
        ))
    return out
