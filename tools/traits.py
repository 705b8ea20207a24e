"""Derived traits: computed from slices, never stored as source data.

Every threshold comes from :class:`tools.settings.Thresholds`; every indicator carries
the reason (the slice facts) that raised it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from tools.settings import ChurnWeights, Thresholds
from tools.signals import RELATIONSHIP_RISKS, Signal, relationship_signals
from tools.slices import (
    BillingInvoices,
    BillingStatus,
    CrmAccount,
    ProductUsage,
    Slice,
    SupportSummary,
)

#: Risk indicators, most serious first: the account's (billing, usage, support, CRM), then the
#: relationship risks of tools/signals.py (what the customer said, tone, people, engagement).
RISK_ORDER = ("billing_issue", "inactive", "repeat_issues", "declining_usage", "renewal_soon", "low_csat",
              *RELATIONSHIP_RISKS)


class RiskIndicator(BaseModel):
    name: str
    reason: str
    slice: str
    record_ids: list[str] = Field(default_factory=list, description="Source records behind it (relationship risks).")


class ChurnFactor(BaseModel):
    name: str
    points: int


class ChurnRisk(BaseModel):
    score: int = Field(description="0 (no risk signals) to 100.")
    factors: list[ChurnFactor] = Field(default_factory=list)


class Traits(BaseModel):
    tier: Literal["enterprise", "mid_market", "self_serve"] | None = None
    tier_source: str | None = Field(default=None, description="Slice the MRR behind the tier came from.")
    mrr: float | None = None
    support_load: Literal["high", "medium", "low"] | None = None
    risk_indicators: list[str] = Field(default_factory=lambda: ["healthy"])
    risk_reasons: list[RiskIndicator] = Field(default_factory=list)
    health: Literal["healthy", "needs attention", "at risk", "churned"] = "healthy"
    churn_risk: ChurnRisk = Field(default_factory=lambda: ChurnRisk(score=0))
    based_on: list[str] = Field(default_factory=list, description="Slices the traits were computed from.")
    signals: list[Signal] = Field(default_factory=list, description="Relationship signals (tools/signals.py).")
    relationship_risks: list[RiskIndicator] = Field(
        default_factory=list, description="Risks the relationship signals raise; listed apart from "
        "risk_indicators (billing, usage, support, CRM), they feed health and the churn score too.")


def tier_for(mrr: float, t: Thresholds) -> Literal["enterprise", "mid_market", "self_serve"]:
    if mrr > t.enterprise_mrr:
        return "enterprise"
    if mrr > t.mid_market_mrr:
        return "mid_market"
    return "self_serve"


def _risks(s: dict[str, Slice], t: Thresholds) -> list[RiskIndicator]:
    out: list[RiskIndicator] = []
    billing, invoices = s.get("billing.status"), s.get("billing.invoices")
    if isinstance(billing, BillingStatus) and billing.status == "past_due":
        reason = "subscription past due"
        if isinstance(invoices, BillingInvoices) and invoices.failed_charges:
            fc = invoices.failed_charges[0]
            reason += f"; charge failed on {fc.date} ({fc.failure_code})"
        if billing.balance_due:
            reason += f"; balance due {billing.balance_due:,.2f}"
        out.append(RiskIndicator(name="billing_issue", reason=reason, slice="billing.status"))
    usage = s.get("product.usage")
    if isinstance(usage, ProductUsage):
        if usage.days_since_login is None or usage.days_since_login > t.inactive_days:
            when = f"{usage.days_since_login} days ago" if usage.days_since_login is not None else "never"
            out.append(RiskIndicator(name="inactive", reason=f"last login {when}", slice="product.usage"))
    support = s.get("support.summary")
    if isinstance(support, SupportSummary) and support.repeat_issue_count > t.repeat_issues:
        out.append(RiskIndicator(
            name="repeat_issues", slice="support.summary",
            reason=f"{support.repeat_issue_count} {support.repeat_issue_type} tickets in {t.repeat_window_days} days"))
    if isinstance(usage, ProductUsage) and usage.trend == "declining":
        out.append(RiskIndicator(
            name="declining_usage", slice="product.usage",
            reason=f"{usage.events_last_7d} events in the last 7 days vs {usage.events_prior_7d} the week before"))
    account = s.get("crm.account")
    if isinstance(account, CrmAccount) and account.days_to_renewal is not None \
            and 0 <= account.days_to_renewal <= t.renewal_soon_days and account.status != "churned":
        out.append(RiskIndicator(name="renewal_soon", slice="crm.account",
                                 reason=f"renewal {account.renewal_date} in {account.days_to_renewal} days"))
    if isinstance(support, SupportSummary) and support.csat is not None and support.csat < t.low_csat:
        out.append(RiskIndicator(name="low_csat", slice="support.summary",
                                 reason=f"CSAT {support.csat} from {support.csat_responses} ratings"))
    return out


def derive_traits(s: dict[str, Slice], t: Thresholds, w: ChurnWeights) -> Traits:
    """Tier, support load, risk indicators, relationship signals, health and churn risk from the slices at hand."""
    traits = Traits(based_on=sorted(s))
    account, billing = s.get("crm.account"), s.get("billing.status")
    if isinstance(account, CrmAccount) and account.mrr is not None:
        traits.mrr, traits.tier_source = account.mrr, "crm.account"
    elif isinstance(billing, BillingStatus) and billing.mrr is not None:
        traits.mrr, traits.tier_source = billing.mrr, "billing.status"
    if traits.mrr is not None:
        traits.tier = tier_for(traits.mrr, t)

    support = s.get("support.summary")
    if isinstance(support, SupportSummary):
        n = support.open_tickets
        traits.support_load = "high" if n > t.support_load_high else "medium" if n > t.support_load_medium else "low"

    risks = _risks(s, t)
    traits.risk_reasons = risks
    traits.risk_indicators = [r.name for r in risks] or ["healthy"]
    names = {r.name for r in risks}
    traits.signals = relationship_signals(s, t)
    traits.relationship_risks = _relationship_risks(traits.signals)
    related = {r.name for r in traits.relationship_risks}
    factors = [ChurnFactor(name=r.name, points=getattr(w, r.name)) for r in (*risks, *traits.relationship_risks)]
    if traits.support_load == "high":
        factors.append(ChurnFactor(name="high_support_load", points=w.high_support_load))
    traits.churn_risk = ChurnRisk(score=min(100, sum(f.points for f in factors)), factors=factors)

    if isinstance(account, CrmAccount) and account.status == "churned":
        traits.health = "churned"
    elif names & {"billing_issue", "inactive"} or "renewal_at_risk" in related or len(names | related) >= 2:
        traits.health = "at risk"
    elif names or related:
        traits.health = "needs attention"
    return traits


def _relationship_risks(signals: list[Signal]) -> list[RiskIndicator]:
    rank = {n: i for i, n in enumerate(RISK_ORDER)}
    out = [RiskIndicator(name=x.risk, reason=x.reason, slice=x.sources[0].slice if x.sources else "",
                         record_ids=[i for src in x.sources for i in src.record_ids])
           for x in signals if x.risk]
    return sorted(out, key=lambda r: rank.get(r.name, len(rank)))
