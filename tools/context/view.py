"""The unified context as JSON: the reference ``get_customer_context`` shape plus ids, health,
gaps, conflicts and provenance; one slice as JSON with masked values shown as the mask marker."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from tools.access.policy import hide_masks, masked_marker, show_masks
from tools.context.assembly import CustomerContext, SourceStatus
from tools.slices import (
    SLICE_MODELS,
    BillingStatus,
    CrmAccount,
    CrmContacts,
    ProductUsage,
    Slice,
    SupportSummary,
    parse_slice,
)


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


def custom_fields(acc: CrmAccount | None, bil: BillingStatus | None) -> dict[str, Any]:
    """The custom fields the mappings declare for the account and the billing customer (CRM's win)."""
    out: dict[str, Any] = {}
    for s in (bil, acc):
        if s is not None and not masked_marker(s, "custom"):  # withheld from the role: not shown
            out.update(s.custom or {})
    return out


class ToldContext(CustomerContext):
    """A customer's context with the facts users supplied about it (``tools.facts.with_facts``
    reads them through the gate); its reference view shows them as ``user_facts``."""

    user_facts: list[dict[str, Any]] = Field(
        default_factory=list, description="Facts users told us: text, by, role, at, provenance user; oldest first.")


ToldContext.model_rebuild(_types_namespace={"SourceStatus": SourceStatus})  # serialised whole by reference_view


def reference_view(c: CustomerContext, include_slices: bool = True) -> dict[str, Any]:
    """The reference ``get_customer_context`` JSON shape, plus ids, health, gaps, conflicts, provenance
    (and ``user_facts``, with provenance user, for a context read with them: :class:`ToldContext`)."""
    account, billing = c.get("crm.account"), c.get("billing.status")
    usage, support = c.get("product.usage"), c.get("support.summary")
    acc = account if isinstance(account, CrmAccount) else None
    bil = billing if isinstance(billing, BillingStatus) else None
    # one serialisation of the context (each section's model_dump of its own cost twice as much);
    # the slices' provenance comes out of their JSON, and without the slices only it is serialised
    data = c.model_dump(mode="json", include={"gaps": True, "conflicts": True, "sources": True, "traits": True,
                                              "slices": True if include_slices else {"__all__": {"provenance"}}})
    slices: dict[str, dict[str, Any]] = data["slices"]
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
            "parent_account": {"id": acc.parent_id, "name": acc.parent_name} if acc and acc.parent_id else None,
            "custom": custom_fields(acc, bil),
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
        "gaps": data["gaps"],  # (plain strings: the same in JSON and Python mode)
        "conflicts": data["conflicts"],
        "provenance": {n: v["provenance"] for n, v in slices.items()},
        "sources": data["sources"],
        "traits": data["traits"],
    }
    if isinstance(c, ToldContext):
        out["user_facts"] = c.user_facts
    if include_slices:  # masked values shown as the mask marker (the provenance says which)
        out["slices"] = {n: {k: x for k, x in show_masks(v).items() if k != "provenance"} for n, v in slices.items()}
    return out


# ------------------------------------------------------------------ what a model is shown
# slice → list field holding objects → their free-text fields written by customers or third parties
UNTRUSTED_FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "support.tickets": ("tickets", ("subject", "body", "comments")),
    "email.threads": ("threads", ("subject", "last_message", "open_questions", "commitments", "history")),
    "chat.mentions": ("mentions", ("text",)),
    "calls.highlights": ("calls", ("title", "moments", "topics")),
    "docs.documents": ("documents", ("title", "objectives")),
    "research.news": ("articles", ("headline",)),
    "calendar.meetings": ("meetings", ("title", "agenda")),
    "crm.activities": ("activities", ("summary",)),
}

# The time windows slices are defined over, told to the model with the slices it sees.
WINDOWS: dict[str, str] = {
    "product.usage": "active users over the last 7 and 30 days; trend = the last 7 days vs the 7 days before",
    "billing.invoices": "the 12 newest invoices; failed charges of the last 90 days",
    "support.tickets": "the 20 newest tickets",
    "support.summary": "repeat issues counted over the last 90 days",
    "crm.opportunities": "open deals and deals closed in the last 12 months",
    "crm.activities": "the 20 newest activities",
    "email.threads": "threads of the last 60 days",
    "calendar.meetings": "meetings from 60 days before to 30 days after the as-of date",
    "chat.mentions": "internal mentions of the last 30 days",
    "research.news": "company news of the last 30 days",
}

_ESCAPES = (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"))


def untrusted(text: str) -> str:
    """Text written by customers or third parties, delimited and escaped: it cannot close the
    delimiter, open a prompt section (``</untrusted_ticket>``, ``<customer_context>``) or pose
    as markup of any kind."""
    for raw, escaped in _ESCAPES:
        text = text.replace(raw, escaped)
    return f"<untrusted>{text}</untrusted>"


def trusted(text: str) -> str:
    """The inverse of :func:`untrusted` (the offline model reads what a model was shown)."""
    text = text.removeprefix("<untrusted>").removesuffix("</untrusted>")
    for raw, escaped in reversed(_ESCAPES):
        text = text.replace(escaped, raw)
    return text


def _map_text(value: Any, fn: Any) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list):
        return [_map_text(v, fn) for v in value]
    if isinstance(value, dict):  # call key moments: {"kind", "text"}
        return {k: (_map_text(v, fn) if k == "text" else v) for k, v in value.items()}
    return value


def _untrusted_items(name: str, data: dict[str, Any], fn: Any) -> dict[str, Any]:
    if name in UNTRUSTED_FIELDS:
        list_field, fields = UNTRUSTED_FIELDS[name]
        for item in data.get(list_field) or []:
            for f in fields:
                if item.get(f) is not None:
                    item[f] = _map_text(item[f], fn)
    return data


def _drop_empty(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_empty(v) for k, v in value.items() if v is not None and v != [] and v != {}}
    if isinstance(value, list):
        return [_drop_empty(v) for v in value]
    return value


def model_slice(s: Slice) -> dict[str, Any]:
    """A slice as a model is shown it: its fields (empty ones left out), values the reader's
    role may not see as the mask marker, free text delimited and escaped as untrusted, and a
    compact provenance (source update, staleness, what was masked, the time window); record
    ids stay out of the prompt — citations carry them from the read's references."""
    data = show_masks(s.model_dump(mode="json"))
    p = data.pop("provenance")
    data = _drop_empty(_untrusted_items(s.name, data, untrusted))
    data["_from"] = _drop_empty({
        "updated": p["source_updated_at"], "stale": p["stale"] or None,
        "age_seconds": p["age_seconds"] if p["stale"] else None,
        "masked": p["masked_fields"], "masked_for": p["masked_for"], "window": WINDOWS.get(s.name)})
    return data


def slice_from_model(name: str, data: dict[str, Any], as_of: datetime) -> Slice:
    """The inverse of :func:`model_slice`: a slice rebuilt from what a model was shown (the
    offline model answers from exactly that)."""
    fields = {k: v for k, v in data.items() if k != "_from"}
    shown = data.get("_from") or {}
    fields["provenance"] = {
        "source": SLICE_MODELS[name].source, "system": shown.get("system", "?"),
        "record_ids": shown.get("record_ids", []), "source_updated_at": shown.get("updated"),
        "fetched_at": as_of, "as_of": as_of, "stale": bool(shown.get("stale")),
        "age_seconds": shown.get("age_seconds"), "masked_fields": shown.get("masked", []),
        "masked_for": shown.get("masked_for")}
    return parse_slice(name, hide_masks(_untrusted_items(name, fields, trusted)))
