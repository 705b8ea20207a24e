"""The nested groups of :class:`tools.settings.Settings`: a source's connection, the guard, the
trait thresholds, the churn weights, the MCP server's principal, the refresh worker and the
webhooks (``CUSTCTX_<GROUP>__<FIELD>``). Importable from ``tools.settings`` too.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr


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
    problem: str | None = Field(
        default=None, description="Set by Settings.source: why the configured URL cannot be used (a SQLite "
        "file that does not exist); the source is then not connected, and says why.")


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
    # relationship signals (tools/signals.py, docs/SIGNALS.md)
    signal_window_days: int = Field(default=30, gt=0, description="Relationship signals' window: engagement "
                                    "compares these last days with the same span before; touched within it is "
                                    "engaged; sentiment reads inbound email of these days.")
    engagement_change: float = Field(default=0.25, ge=0, description="Change in touches that counts as an "
                                     "engagement trend (0.25: a quarter fewer is declining).")
    negative_tone: float = Field(default=-0.25, ge=-1, le=1, description="Average VADER compound score of "
                                 "recent inbound email at or below which the tone is negative.")
    competitors: list[str] = Field(default_factory=lambda: ["Skynet Analytics", "Oscorp"], description="Competitor "
                                   "names looked for in call highlights and topics (case-insensitive).")
    renewal_risk_phrases: list[str] = Field(default_factory=lambda: [
        "renewal at risk", "renewal is at risk", "evaluating alternatives", "looking at alternatives",
        "considering alternatives", "not going to renew", "will not renew", "won't renew", "may not renew",
    ], description="What a customer says on a call or in an email that puts the renewal at risk "
       "(case-insensitive phrases).")


class ChurnWeights(BaseModel):
    """Points each risk indicator adds to the 0-100 churn-risk score."""

    billing_issue: int = 30
    inactive: int = 25
    declining_usage: int = 15
    repeat_issues: int = 10
    low_csat: int = 10
    renewal_soon: int = 10
    high_support_load: int = 5
    # relationship risks (tools/signals.py)
    renewal_at_risk: int = 20
    negative_sentiment: int = 10
    champion_cold: int = 10
    engagement_declining: int = 10
    competitor_mentioned: int = 5


class McpSettings(BaseModel):
    """Who the MCP server reads for (`custctx serve mcp`): one configured principal per server."""

    role: str = Field(default="support_agent", description="Role of the MCP server's principal.")
    user: str = Field(default="mcp", description="User name of the MCP server's principal (audit).")


class WorkerSettings(BaseModel):
    """The refresh worker (`custctx serve worker`, tools/refresh/worker.py)."""

    cadences: dict[str, float] = Field(
        default_factory=dict, description="Seconds between scheduled incremental refreshes, per source "
        '(e.g. {"billing": 600}); unset sources keep the default cadence (tools.refresh.worker.DEFAULT_CADENCES).')
    lease_s: float = Field(default=900.0, gt=0, description="How long a worker holds a job's lease; a worker "
                           "that dies mid-run frees the job after this.")
    listen: bool = Field(default=True, description="LISTEN for NOTIFY on sources that live in PostgreSQL.")
    channel: str = Field(default="custctx_refresh", pattern=r"^[a-z_][a-z0-9_]{0,62}$",
                         description="The PostgreSQL channel the worker LISTENs on.")


class WebhookSettings(BaseModel):
    """Signing secrets of the webhooks `POST /v1/webhooks/{system}` accepts (unset: that system's are refused)."""

    stripe_secret: SecretStr | None = Field(default=None, description="Stripe endpoint secret (whsec_...).")
    zendesk_secret: SecretStr | None = Field(default=None, description="Zendesk webhook signing secret.")
    hubspot_secret: SecretStr | None = Field(default=None, description="HubSpot app client secret (v3 signatures).")
    tolerance_s: int = Field(default=300, ge=1, le=3600, description="Largest age (and clock skew) of a signed "
                             "request's timestamp.")
    public_url: str | None = Field(default=None, description="The API's public base URL (https://host), used for "
                                   "the URI HubSpot signs when a proxy rewrites the host; unset: the request's.")
