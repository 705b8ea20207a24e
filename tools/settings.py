"""Settings: ``CUSTCTX_*`` environment variables, a data home, per-source URLs.

Precedence: an explicit argument > the environment > the default. Nested values use
``__``, e.g. ``CUSTCTX_SOURCES__CRM__URL=postgresql+psycopg://...`` or
``CUSTCTX_THRESHOLDS__INACTIVE_DAYS=45``.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

SOURCE_NAMES: tuple[str, ...] = (
    "crm", "billing", "product", "support", "email",
    "calendar", "chat", "documents", "calls", "research",
)
"""Every source, in the priority order of the customer-context skill (CRM first,
external research last; billing, product and support follow CRM because the
support use case needs them most)."""

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
}


class SourceConfig(BaseModel):
    """How one source is connected."""

    url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the source's tables. Unset: the embedded warehouse "
        "when `embedded` is on, otherwise the source is not connected.",
    )
    mapping: str | None = Field(
        default=None,
        description="Mapping name (e.g. hubspot, salesforce) or a path to a mapping YAML file.",
    )
    enabled: bool = Field(default=True, description="False disconnects the source.")
    timeout_s: float | None = Field(default=None, description="Per-source timeout; unset: guard.timeout_s.")


class GuardSettings(BaseModel):
    """Resilience around every source call (tools/guard.py)."""

    timeout_s: float = Field(default=5.0, description="Budget of one source call, retries included.")
    attempts: int = Field(default=3, description="Tries per call on transient errors.")
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 2.0
    breaker_failures: int = Field(default=3, description="Consecutive failed calls that open the breaker.")
    breaker_reset_s: float = Field(default=30.0, description="Seconds before an open breaker lets a probe through.")
    max_concurrency: int = Field(default=4, description="Source reads in flight at once.")
    per_source_concurrency: int = Field(default=2, description="Reads in flight at once against one source.")


class Thresholds(BaseModel):
    """Derived-trait thresholds (DESIGN.md, FIXTURES.md)."""

    enterprise_mrr: float = 10_000
    mid_market_mrr: float = 1_000
    support_load_high: int = 5
    support_load_medium: int = 2
    inactive_days: int = 30
    repeat_issues: int = 3
    repeat_window_days: int = 90
    renewal_soon_days: int = 30
    low_csat: float = 3.5
    trend_change: float = Field(default=0.10, description="Week-over-week change that counts as a trend.")
    mrr_conflict_tolerance: float = Field(default=0.01, description="Relative MRR difference reported as a conflict.")


class ChurnWeights(BaseModel):
    """Points each risk indicator adds to the 0-100 churn-risk score."""

    billing_issue: int = 30
    inactive: int = 25
    declining_usage: int = 15
    repeat_issues: int = 10
    low_csat: int = 10
    renewal_soon: int = 10
    high_support_load: int = 5


class McpSettings(BaseModel):
    """Who the MCP server reads for (`custctx serve mcp`): one configured principal per server."""

    role: str = Field(default="support_agent", description="Role of the MCP server's principal.")
    user: str = Field(default="mcp", description="User name of the MCP server's principal (audit).")


DEFAULT_TTLS: dict[str, int] = {
    "crm.account": 3600, "crm.contacts": 3600, "crm.opportunities": 3600, "crm.activities": 3600,
    "billing.status": 86400, "billing.invoices": 86400,
    "product.usage": 900,
    "support.summary": 0, "support.tickets": 0,
    "email.threads": 900, "calendar.meetings": 900, "chat.mentions": 900,
    "docs.documents": 3600, "calls.highlights": 3600, "research.news": 86400,
}


def _default_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "custctx"


class Settings(BaseSettings):
    """All settings of a custctx process."""

    model_config = SettingsConfigDict(env_prefix="CUSTCTX_", env_nested_delimiter="__", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="Data home: embedded warehouse and state.")
    embedded: bool = Field(
        default=True,
        description="Use the embedded fixture warehouse (created and seeded on first use) for every "
        "source without its own URL.",
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

    def source(self, name: str) -> SourceConfig:
        """The configuration of source ``name``, with defaults filled in."""
        cfg = self.sources.get(name) or SourceConfig()
        mapping = cfg.mapping or DEFAULT_MAPPINGS[name]
        url = cfg.url
        if url is None and self.embedded:
            url = self.embedded_warehouse_url
        return SourceConfig(url=url if cfg.enabled else None, mapping=mapping, enabled=cfg.enabled,
                            timeout_s=cfg.timeout_s or self.guard.timeout_s)

    @property
    def embedded_warehouse_url(self) -> str:
        return self.warehouse_url or f"sqlite:///{self.home / 'warehouse.sqlite'}"

    @property
    def state_db_url(self) -> str:
        return self.state_url or f"sqlite:///{self.home / 'state.sqlite'}"
