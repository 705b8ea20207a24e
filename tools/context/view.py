"""The unified context as JSON: the reference ``get_customer_context`` shape plus ids, health,
gaps, conflicts and provenance; one slice as JSON with masked values shown as the mask marker."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tools.access.policy import masked_marker, show_masks
from tools.context.assembly import CustomerContext
from tools.slices import BillingStatus, CrmAccount, CrmContacts, ProductUsage, Slice, SupportSummary


def slice_view(s: Slice, provenance: bool = True) -> dict[str, Any]:
    """A slice as JSON for output: masked values shown as the mask marker."""
    data = show_masks(s.model_dump(mode="json"))
    if not provenance:
        data.pop("provenance")
    return data


def _iso(v: Any) -> Any:
    return v.isoformat() + ("Z" if isinstance(v, datetime) and v.tzinfo is None else "") \
        if hasattr(v, "isoformat") else v


def primary_email(c: CustomerContext) -> str | None:
    contacts, billing = c.get("crm.contacts"), c.get("billing.status")
    if isinstance(contacts, CrmContacts):
        for contact in contacts.contacts:
            if contact.email:
                return contact.email
    if isinstance(billing, BillingStatus) and billing.billing_email:
        return billing.billing_email
    return None


def reference_view(c: CustomerContext, include_slices: bool = True) -> dict[str, Any]:
    """The reference ``get_customer_context`` JSON shape, plus ids, health, gaps, conflicts, provenance."""
    account, billing = c.get("crm.account"), c.get("billing.status")
    usage, support = c.get("product.usage"), c.get("support.summary")
    acc = account if isinstance(account, CrmAccount) else None
    bil = billing if isinstance(billing, BillingStatus) else None
    out: dict[str, Any] = {
        "customer_id": c.customer_id,
        "customer": {
            "name": acc.company_name if acc else c.name,
            "email": primary_email(c),
            "tier": c.traits.tier,
            "mrr": c.traits.mrr,
            "plan": (acc.plan if acc and acc.plan else None) or (bil.plan if bil else None),
            "status": acc.status if acc else ("active" if bil and bil.status not in ("canceled", "none") else None),
            "owner": acc.owner if acc else None,
        },
        "billing": None if bil is None else {
            "status": bil.status,
            "last_payment": _iso(bil.last_payment_date),
            "last_payment_amount": bil.last_payment_amount,
            "method": masked_marker(bil, "payment_method") or (str(bil.payment_method) if bil.payment_method
                                                                   else None),
            "balance_due": bil.balance_due,
            "trial_ends": _iso(bil.trial_ends),
        },
        "usage": None if not isinstance(usage, ProductUsage) else {
            "active_users": usage.active_users_30d,
            "last_login": _iso(usage.last_login.date()) if usage.last_login else None,
            "days_since_login": usage.days_since_login,
            "trend": usage.trend,
        },
        "support": None if not isinstance(support, SupportSummary) else {
            "open_tickets": support.open_tickets,
            "total_tickets": support.total_tickets,
            "avg_resolution_time": f"{support.avg_resolution_hours} hours"
            if support.avg_resolution_hours is not None else None,
            "satisfaction_score": support.csat,
            "repeat_issue_count": support.repeat_issue_count,
        },
        "risk_indicators": c.traits.risk_indicators,
        "health": c.traits.health,
        "support_load": c.traits.support_load,
        "churn_risk": c.traits.churn_risk.model_dump(),
        "context_updated": _iso(c.context_updated),
        "as_of": _iso(c.as_of),
        "matched_by": c.matched_by,
        "gaps": [g.model_dump() for g in c.gaps],
        "conflicts": [x.model_dump(mode="json") for x in c.conflicts],
        "provenance": {n: s.provenance.model_dump(mode="json") for n, s in c.slices.items()},
        "sources": [x.model_dump(mode="json") for x in c.sources],
        "traits": c.traits.model_dump(mode="json"),
    }
    if include_slices:
        out["slices"] = {n: slice_view(s, provenance=False) for n, s in c.slices.items()}
    return out
