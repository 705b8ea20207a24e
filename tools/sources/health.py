"""Health of every configured source: reachable, how fast, how fresh."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterable
from datetime import datetime

from pydantic import BaseModel
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from tools.guard import SourceGuard
from tools.mapping.check import (
    FREE_MAIL_DOMAINS,
    SAMPLE_ROWS,
    SHARED_KEY_ANCHORS,
    MappingReport,
    Problem,
    check_mapping,
    file_label,
)
from tools.mapping.conversions import MappingError
from tools.mapping.loader import load_mapping
from tools.settings import SOURCE_NAMES, Settings
from tools.sources.faults import parse_faults
from tools.sources.registry import (
    REMEDIES,
    SourceMisconfigured,
    config_fingerprint,
    engine_for,
    reader,
)


class SourceHealth(BaseModel):
    source: str
    status: str  # ok | not_connected | misconfigured | unavailable | timeout | circuit_open
    system: str | None = None
    url: str | None = None
    latency_ms: float | None = None
    rows: int | None = None
    newest_row: datetime | None = None
    breaker: str | None = None
    fault: str | None = None
    detail: str | None = None
    problems: list[str] = []  # misconfigured: one line per problem (`custctx mappings check`)


def safe_url(url: str) -> str:
    """The URL with its password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def check_sources(settings: Settings, guard: SourceGuard, *, free_domains: Collection[str] = FREE_MAIL_DOMAINS
                  ) -> list[SourceHealth]:
    """Ping every source through the guard (faults, timeouts and breakers apply), and check
    each reachable source's mapping against its tables (:func:`check_mappings`): a source
    whose mapping or URL is wrong is ``misconfigured``, with one line per problem."""
    faults = parse_faults(settings.faults)
    out = []
    for source in SOURCE_NAMES:
        cfg = settings.source(source)
        try:
            rdr = reader(settings, source)
        except MappingError as exc:  # a bad URL or a mapping that does not load
            out.append(SourceHealth(source=source, status="misconfigured", detail=str(exc), problems=[str(exc)],
                                    url=None if isinstance(exc, SourceMisconfigured) else safe_url(cfg.url or "")))
            continue
        if rdr is None:
            out.append(SourceHealth(source=source, status="not_connected", detail=REMEDIES[source]))
            continue
        result, outcome, _ = guard.call(source, "ping", rdr.ping, cfg.timeout_s)
        fault = faults.get(source)
        health = SourceHealth(
            source=source, system=rdr.mapping.system, url=safe_url(cfg.url or ""), status=outcome.status,
            latency_ms=outcome.latency_ms, rows=result[0] if result else None,
            newest_row=result[1] if result else None, breaker=guard.breaker(source).state,
            fault=str(fault) if fault else None, detail=outcome.error,
        )
        if outcome.misconfigured:
            health.status = "misconfigured"
        if outcome.status == "ok" or outcome.misconfigured:
            report = _checked(settings, source, free_domains)
            if report.errors:
                health.status, health.problems = "misconfigured", [p.line for p in report.errors]
                more = len(report.errors) - 1
                health.detail = report.errors[0].line + (f" (+{more} more: custctx mappings check)" if more else "")
        out.append(health)
    return out


#: Seconds a source's mapping check is reused by ``check_sources`` (the API's /v1/sources asks often).
CHECK_REUSE_S = 60.0
_checks: dict[tuple[str, str | None], tuple[float, MappingReport]] = {}
_checks_lock = threading.Lock()


def _checked(settings: Settings, source: str, free_domains: Collection[str]) -> MappingReport:
    """The mapping check of ``source`` (5 sample rows), reused for a minute under the same
    configuration (URL and mapping file)."""
    key, now = (source, config_fingerprint(settings, source)), time.monotonic()
    with _checks_lock:
        hit = _checks.get(key)
    if hit is not None and now - hit[0] < CHECK_REUSE_S:
        return hit[1]
    report = check_mappings(settings, [source], sample=5, free_domains=free_domains)[0]
    with _checks_lock:
        _checks[key] = (now, report)
    return report


def check_mappings(settings: Settings, sources: Iterable[str] | None = None, *, sample: int = SAMPLE_ROWS,
                   shared_limit: int = SHARED_KEY_ANCHORS, free_domains: Collection[str] = FREE_MAIL_DOMAINS
                   ) -> list[MappingReport]:
    """Check the mapping of every connected source (or of ``sources``) against its database
    (``tools.mapping.check``): one report per source, problems as one line each.

    A source that is not connected has no report; one whose URL or mapping cannot be used
    has a report with that one problem.
    """
    reports = []
    for source in sources or SOURCE_NAMES:
        cfg = settings.source(source)
        ref = cfg.mapping or ""
        if cfg.problem:
            reports.append(MappingReport(source, "", problems=[Problem("", "", cfg.problem)]))
            continue
        if not cfg.url:
            continue
        file = file_label(ref)
        try:
            mapping = load_mapping(ref)
            if mapping.source != source:
                raise MappingError(f"mapping is for the {mapping.source} source, not {source}")
            report = check_mapping(mapping, engine_for(cfg.url), file, sample=sample, shared_limit=shared_limit,
                                   free_domains=free_domains)
        except MappingError as exc:
            text = str(exc)
            report = MappingReport(source, file, problems=[Problem("" if file in text else file, "", text)])
        except (SQLAlchemyError, ArgumentError) as exc:
            first = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
            report = MappingReport(source, file, problems=[Problem(
                file, "", f"{safe_url(cfg.url)}: cannot be read: {first[:200]}")])
        reports.append(report)
    return reports
