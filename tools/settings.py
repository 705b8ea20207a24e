"""Settings: ``CUSTCTX_*`` environment variables, a data home, per-source URLs.

Precedence: an explicit argument > the environment > the default. Nested values use
``__``, e.g. ``CUSTCTX_SOURCES__CRM__URL=postgresql+psycopg://...`` or
``CUSTCTX_THRESHOLDS__INACTIVE_DAYS=45``.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import types
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from tools.settings_groups import (
    ChurnWeights,
    GuardSettings,
    McpSettings,
    SourceConfig,
    Thresholds,
    WebhookSettings,
    WorkerSettings,
)

__all__ = ["DEFAULT_MAPPINGS", "DEFAULT_TTLS", "EMBEDDED_SOURCES", "OPTIONAL_SOURCES", "SOURCE_NAMES", "ChurnWeights",
           "GuardSettings", "McpSettings", "Settings", "SourceConfig", "Thresholds", "WebhookSettings",
           "WorkerSettings", "settings_error"]

SOURCE_NAMES: tuple[str, ...] = (
    "crm", "billing", "product", "support", "email",
    "calendar", "chat", "documents", "calls", "research", "commerce",
)
"""Every source, in the priority order of the customer-context skill (CRM first,
external research last; billing, product and support follow CRM because the
support use case needs them most). Commerce (a store's orders, refunds, cards and
addresses) comes last: it is an optional source (see :data:`OPTIONAL_SOURCES`)."""

OPTIONAL_SOURCES: frozenset[str] = frozenset({"commerce"})
"""Sources the embedded fixture warehouse does not hold: connected only with their own URL,
and their slices are part of "every slice" only while connected (a store-less business is
not missing its orders)."""

EMBEDDED_SOURCES: tuple[str, ...] = tuple(s for s in SOURCE_NAMES if s not in OPTIONAL_SOURCES)
"""The sources the embedded fixture warehouse holds."""

DEFAULT_MAPPINGS: dict[str, str] = {
    "crm": "hubspot",
    "billing": "stripe",
    "product": "segment",
    "support": "zendesk",
    "email": "email",
    "calendar": "calendar",
    "chat": "chat",
    "documents": "documents",
    "calls": "calls",
    "research": "news",
    "commerce": "shopify",
}


DEFAULT_TTLS: dict[str, int] = {
    "crm.account": 3600, "crm.contacts": 3600, "crm.opportunities": 3600, "crm.activities": 3600,
    "billing.status": 86400, "billing.invoices": 86400,
    "product.usage": 900,
    "support.summary": 0, "support.tickets": 0,
    "email.threads": 900, "calendar.meetings": 900, "chat.mentions": 900,
    "docs.documents": 3600, "calls.highlights": 3600, "research.news": 86400,
    "commerce.orders": 900, "commerce.refunds": 900, "commerce.payment_methods": 3600,
    "commerce.addresses": 3600,
}


def _default_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "custctx"


class Settings(BaseSettings):
    """All settings of a custctx process."""

    model_config = SettingsConfigDict(env_prefix="CUSTCTX_", env_nested_delimiter="__", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="Data home: embedded warehouse and state.")
    embedded: bool | Literal["auto"] = Field(
        default="auto",
        description="Use the embedded fixture warehouse (created and seeded on first use) for every "
        "source without its own URL: auto (the default) only while no source has its own URL, so the "
        "demo customers are never mixed into a real warehouse; true mixes them in explicitly.",
    )
    warehouse_url: str | None = Field(default=None, description="Override the embedded warehouse URL.")
    state_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the product's own state: identity index, long-term memory.")
    audit_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the audit log (SQLite or PostgreSQL; e.g. a database where the "
        "application's role may only INSERT and SELECT). Unset: the state database.")
    tenant: str = Field(default="default", description="Tenant whose memory namespace this process uses.")
    role: str | None = Field(
        default=None, description="Role of a call that names no principal (the CLI without --as). Unset: "
        "admin for the local CLI, support_agent for servers (docs/ACCESS.md).")
    user: str | None = Field(default=None, description="User of a call that names none. Unset: the OS login.")
    policy: Path | None = Field(
        default=None, description="Access policy YAML (roles → slices, masked fields, row filters); "
        "unset: the packaged tools/access/policies/default.yaml.")
    seed_customers: int = Field(default=200, description="Background customers seeded on first use.")
    seed: int = 7
    as_of: datetime | None = Field(
        default=None,
        description="Pin the clock used for day counts. Unset: the fixture as-of date when the "
        "embedded fixture warehouse is in use, otherwise now.",
    )
    sources: dict[str, SourceConfig] = Field(default_factory=dict)
    guard: GuardSettings = Field(default_factory=GuardSettings)
    faults: str | None = Field(
        default=None,
        description='Fault injection, e.g. "billing=down,product=slow:3s,support=flaky:0.5,crm=corrupt".',
    )
    thresholds: Thresholds = Field(default_factory=Thresholds)
    churn_weights: ChurnWeights = Field(default_factory=ChurnWeights)
    ttls: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_TTLS))
    model: str = Field(
        default="offline",
        description='Chat model: "offline" (the offline deterministic model: rules and templates, no '
        "network) or the name of a model on an OpenAI-compatible endpoint (OPENAI_API_KEY, OPENAI_BASE_URL).",
    )
    model_timeout_s: float = Field(default=60.0, description="Timeout of one call to a real model.")
    model_max_retries: int = Field(
        default=2, ge=0, le=10, description="Retries of a real model's request on 429, 408, 409, 5xx, timeouts "
        "and connection errors (the openai client's exponential backoff, honouring Retry-After); never on "
        "other 4xx. A request is sent at most this plus one times.")
    model_requests_per_second: float | None = Field(
        default=None, gt=0, description="Requests per second this process sends a real model at most, shared "
        "by every concurrent call (a token bucket, no bursts); unset: no limit.")
    max_plan_steps: int = Field(
        default=3, ge=0, le=20, description="Tool-calling rounds a model may take per question; the model "
        "calls per question are at most this plus one (the answer).")
    max_tool_calls: int = Field(
        default=8, ge=0, le=100, description="Tool calls per question, valid or not; beyond it a call is "
        "answered with a budget error and the model must answer from what it has.")
    max_prompt_tokens: int = Field(
        default=24000, ge=1000, description="Prompt tokens per question, summed over its model calls; when "
        "reached, the next call must answer.")
    currency: str = "USD"
    output_format: Literal["json", "markdown"] = "markdown"
    mcp: McpSettings = Field(default_factory=McpSettings)
    api_keys_file: Path | None = Field(
        default=None, description="YAML/JSON file mapping API keys (SHA-256 hex digests) to principals for "
        "`custctx serve api`; unset: every data request is refused with 401.")
    refresh_workers: int = Field(
        default=0, ge=0, le=64,
        description="Worker processes of a full or incremental refresh (0: one per core, up to 4, "
                    "from 2,000 customers on; 1: none).")
    serve_max_concurrency: int = Field(
        default=8, ge=1, description="Requests the API and MCP servers work on at once; the rest wait their turn.")
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)

    @field_validator("ttls")
    @classmethod
    def _known_slices_over_defaults(cls, ttls: dict[str, int]) -> dict[str, int]:
        """Slice names must be known (a misspelt one would silently do nothing) and TTLs >= 0;
        the slices given override the catalogue's TTLs, the others keep theirs."""
        unknown = sorted(set(ttls) - set(DEFAULT_TTLS))
        if unknown:
            raise ValueError(f"unknown slice{'s' if len(unknown) > 1 else ''} {_named(unknown, DEFAULT_TTLS)}; "
                             f"the slices are {', '.join(DEFAULT_TTLS)}")
        negative = sorted(name for name, seconds in ttls.items() if seconds < 0)
        if negative:
            raise ValueError(f"a TTL is seconds >= 0 (0: always read live), not {ttls[negative[0]]} for {negative[0]}")
        return {**DEFAULT_TTLS, **ttls}

    @field_validator("embedded", mode="before")
    @classmethod
    def _auto_or_bool(cls, value: Any) -> Any:
        """auto, or a boolean as pydantic reads one; anything else is one error, not one per type."""
        if isinstance(value, str):
            text = value.strip().lower()
            if text == "auto":
                return "auto"
            if text in ("true", "1", "yes", "on", "false", "0", "no", "off"):
                return text in ("true", "1", "yes", "on")
            raise ValueError("unknown value")
        return value

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, sources: dict[str, SourceConfig]) -> dict[str, SourceConfig]:
        """Source names must be known: a misspelt one would configure nothing."""
        unknown = sorted(set(sources) - set(SOURCE_NAMES))
        if unknown:
            raise ValueError(f"unknown source{'s' if len(unknown) > 1 else ''} {_named(unknown, SOURCE_NAMES)}; "
                             f"the sources are {', '.join(SOURCE_NAMES)}")
        return sources

    def source(self, name: str) -> SourceConfig:
        """The configuration of source ``name``, with defaults filled in (made once per configuration
        and kept: a request asks several times; never change what it returns). Whether a SQLite
        source's file exists is checked on every call."""
        cfg = self.sources.get(name)
        key = (name, cfg and (cfg.url, cfg.mapping, cfg.enabled, cfg.timeout_s), self.embedded_on, self.warehouse_url,
               self.home, self.guard.timeout_s)
        made = _SOURCES_MADE.get(key)
        if made is None:
            if len(_SOURCES_MADE) >= 4096:
                _SOURCES_MADE.clear()
            made = _SOURCES_MADE[key] = self._source(name, cfg or SourceConfig())
        out, file = made
        if file is not None and not os.path.exists(file):
            # Connecting would create an empty file and answer "no customer" for every lookup.
            return out.model_copy(update={"url": None, "problem": (
                f"CUSTCTX_SOURCES__{name.upper()}__URL names the SQLite file {file}, which does not exist (a source "
                "is read, never created): check the path")})
        return out

    def _source(self, name: str, cfg: SourceConfig) -> tuple[SourceConfig, str | None]:
        """A source's configuration, and the SQLite file its own URL names (None: none to check)."""
        url = cfg.url
        if url is None and self.embedded_on and name not in OPTIONAL_SOURCES:
            url = self.embedded_warehouse_url
        file = _sqlite_path(cfg.url) if cfg.url is not None and cfg.enabled else None
        return SourceConfig(url=url if cfg.enabled else None, mapping=cfg.mapping or DEFAULT_MAPPINGS[name],
                            enabled=cfg.enabled, timeout_s=cfg.timeout_s or self.guard.timeout_s), file

    @property
    def embedded_on(self) -> bool:
        """Whether sources without their own URL read the embedded fixture warehouse: ``embedded``
        true, or auto while no enabled source has its own URL."""
        if self.embedded == "auto":
            return not any(c.url and c.enabled for c in self.sources.values())
        return bool(self.embedded)

    @property
    def embedded_warehouse_url(self) -> str:
        return self.warehouse_url or f"sqlite:///{self.home / 'warehouse.sqlite'}"

    @property
    def state_db_url(self) -> str:
        return self.state_url or f"sqlite:///{self.home / 'state.sqlite'}"


#: Settings.source's configurations, by everything that makes one (so settings objects of one
#: configuration share them, and a changed setting makes another).
_SOURCES_MADE: dict[tuple[Any, ...], tuple[SourceConfig, str | None]] = {}

_SQLITE_FILE = re.compile(r"^sqlite(\+\w+)?:///(?P<path>[^?]+)(?P<query>\?.*)?$")


@functools.lru_cache(maxsize=256)
def _sqlite_path(url: str) -> str | None:
    """The file a plain ``sqlite:///path`` URL opens; None for anything else (another
    database, ``:memory:``, a ``file:`` URI or query options, which say how to open it)."""
    m = _SQLITE_FILE.match(url)
    if m is None or m.group("query") or m.group("path") in (":memory:", "") or m.group("path").startswith("file:"):
        return None
    return m.group("path")


def _named(unknown: list[str], known: Mapping[str, Any] | tuple[str, ...]) -> str:
    """``'billng.status' (did you mean billing.status?)``, for each unknown name."""
    def one(name: str) -> str:
        close = difflib.get_close_matches(name, list(known), n=1)
        return f"{name[:60]!r}" + (f" (did you mean {close[0]}?)" if close else "")

    return ", ".join(one(n) for n in unknown)


# ------------------------------------------------------------------ errors
# What a setting accepts, by its type, for the one-line error of a bad value.
_ACCEPTS: dict[Any, str] = {
    float: "a number, e.g. 2.5", int: "a whole number, e.g. 3", bool: "true or false", str: "text",
    datetime: "an ISO date/time, e.g. 2026-01-15T12:00:00Z", Path: "a file path",
}
_FIELD_ACCEPTS = {
    "embedded": "auto, true or false",
    "ttls": 'a JSON object of slice name to seconds, e.g. {"billing.status": 600}',
    "sources": 'a JSON object of source name to {url, mapping, enabled, timeout_s}, or '
               "CUSTCTX_SOURCES__<SOURCE>__URL=...",
}


def _annotation_at(loc: tuple[int | str, ...]) -> Any:
    """The type the setting at ``loc`` (an error's location in Settings) is declared with."""
    model: Any = Settings
    annotation: Any = None
    rest = list(loc)
    while rest:
        part = rest.pop(0)
        fields = getattr(model, "model_fields", None)
        if not isinstance(fields, dict) or part not in fields:
            return annotation
        annotation = fields[part].annotation
        while True:
            args = [a for a in get_args(annotation) if a is not type(None)]
            if get_origin(annotation) in (Union, types.UnionType) and len(args) == 1:
                annotation = args[0]
            elif get_origin(annotation) is dict and rest:
                annotation, rest = get_args(annotation)[1], rest[1:]  # a dict key: its value type
            else:
                break
        model = annotation
    return annotation


def _accepts(loc: tuple[int | str, ...]) -> str | None:
    if len(loc) == 1 and loc[0] in _FIELD_ACCEPTS:
        return _FIELD_ACCEPTS[str(loc[0])]
    annotation = _annotation_at(loc)
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"a JSON object with {', '.join(annotation.model_fields)}"
    return _ACCEPTS.get(annotation)


def _variable(loc: tuple[int | str, ...], environ: Mapping[str, str], msg: str) -> tuple[str, str | None, str]:
    """The environment variable a setting came from (the longest prefix of its location that
    is set; nested settings use ``__``), its value, and the part of the location inside it.
    A refused key of a nested setting (``CUSTCTX_SOURCES__SUPORT__URL``) is found by the
    quoted name the message gives."""
    upper = {k.upper(): v for k, v in environ.items()}
    parts = [str(p) for p in loc]
    for n in range(len(parts), 0, -1):
        name = "CUSTCTX_" + "__".join(p.upper() for p in parts[:n])
        if name in upper:
            return name, upper[name], ".".join(parts[n:])
    name = "CUSTCTX_" + "__".join(p.upper() for p in parts)
    quoted = {q.upper() for q in re.findall(r"'([^']+)'", msg)}
    nested = sorted(k for k in upper if k.startswith(name + "__") and k[len(name) + 2:].split("__")[0] in quoted)
    if nested:
        return nested[0], upper[nested[0]], ""
    return name, None, ""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "…"


def settings_error(exc: BaseException, environ: Mapping[str, str] | None = None) -> str | None:
    """One line for a settings error (a CUSTCTX_* value that cannot be used): which variable,
    its value, what is wrong and what it accepts; None when ``exc`` is no settings error.

    Example: ``CUSTCTX_GUARD__TIMEOUT_S='abc': Input should be a valid number, unable to parse
    string as a number (expects a number, e.g. 2.5)``.
    """
    environ = os.environ if environ is None else environ
    if isinstance(exc, SettingsError):  # pydantic-settings could not even decode the value (JSON)
        m = re.search(r'field "([^"]+)"', str(exc))
        if not m:
            return f"a CUSTCTX_ setting cannot be read: {' '.join(str(exc).split())}"
        name, value, _ = _variable((m.group(1),), environ, "")
        accepts = _accepts((m.group(1),))
        return (f"{name}{'=' + _shown(value) if value is not None else ''} cannot be read: "
                f"{' '.join(str(exc.__cause__ or 'not valid JSON').split())}"
                + (f" (expects {accepts})" if accepts else ""))
    if not isinstance(exc, ValidationError) or exc.title != Settings.__name__:
        return None
    lines = []
    for e in exc.errors():
        msg = " ".join(str(e["msg"]).removeprefix("Value error, ").split())
        name, value, inner = _variable(tuple(e["loc"]), environ, msg)
        shown = _shown(value) if value is not None else _shown(e.get("input"))
        accepts = _accepts(tuple(e["loc"]))
        lines.append(f"{name}={shown}: {inner + ': ' if inner else ''}{msg}"
                     + (f" (expects {accepts})" if accepts else ""))
    return "; ".join(lines)
