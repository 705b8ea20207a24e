"""Grounded answers from templates: the offline model's way of writing.

Every line is built from fields of a fetched slice and cites it as ``[slice.name]``;
nothing is written that no slice contains. Intents come from ``agent.offline.planning``.
Text from customers or third parties is quoted; a passage that carries a suspected prompt
injection is marked as such (``agent.brief.quoted``) and never repeated as a fact.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import Any

from agent.brief import day, hidden_flag, quoted
from agent.commerce import address_lines, card_lines, commerce_summary, order_lines, refund_lines
from agent.offline.planning import HEALTH_SLICES
from tools.access.policy import masked_marker
from tools.slices import (
    BillingInvoices,
    BillingStatus,
    CalendarMeetings,
    CallHighlights,
    ChatMentions,
    CrmAccount,
    CrmActivities,
    CrmContacts,
    CrmOpportunities,
    Documents,
    EmailThreads,
    ProductUsage,
    ResearchNews,
    Slice,
    SourceGap,
    SupportSummary,
    SupportTickets,
)

Slices = dict[str, Slice]


class CustomerSlices(dict[str, Slice]):
    """A customer's slices together with the customer's name: their own company is not
    "another customer" when untrusted text is checked for injections."""

    def __init__(self, slices: Slices, customer: str = ""):
        super().__init__(slices)
        self.customer = customer


def _own(s: Slices) -> list[str]:
    a = _get(s, "crm.account", CrmAccount)
    return [x for x in (getattr(s, "customer", ""), a.company_name if a else None, a.domain if a else None) if x]


def usd(v: float | None) -> str:
    return "—" if v is None else f"${v:,.2f}"


def n_of(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _days(n: int | None, past: bool = True) -> str:
    if n is None:
        return ""
    if n == 0:
        return " (today)"
    return f" ({n} day{'s' if n != 1 else ''} {'ago' if past else 'away'})"


def _stale(s: Slice) -> str:
    p = s.provenance
    if not p.stale:
        return ""
    return f" _(stale: last snapshot from memory, {(p.age_seconds or 0) / 3600:.1f} h old; the source failed)_"


def _get(slices: Slices, name: str, cls: type) -> Any:
    s = slices.get(name)
    return s if isinstance(s, cls) else None


def account_lines(s: Slices) -> list[str]:
    a = _get(s, "crm.account", CrmAccount)
    if not a:
        return []
    facts = [f"plan {a.plan}" if a.plan else None, f"MRR {usd(a.mrr)}" if a.mrr is not None else None,
             f"contract value {masked_marker(a, 'contract_value') or usd(a.contract_value)}"
             if a.contract_value is not None or masked_marker(a, "contract_value") else None,
             f"renewal {a.renewal_date}{_days(a.days_to_renewal, past=False)}" if a.renewal_date else None,
             f"owner {a.owner}" if a.owner else None, f"segment {a.segment}" if a.segment else None,
             f"status {a.status}" + (f" since {a.churn_date}" if a.churn_date else "") if a.status else None,
             f"region {a.region}" if a.region else None]
    return [f"- **Account**: {a.company_name} — " + ", ".join(f for f in facts if f) + f" [crm.account]{_stale(a)}"]


def billing_lines(s: Slices) -> list[str]:
    out = []
    b = _get(s, "billing.status", BillingStatus)
    if b:
        parts = [f"subscription **{b.status}**"]
        if b.trial_ends:
            parts.append(f"trial ends {b.trial_ends}")
        if b.canceled_at:
            parts.append(f"canceled {b.canceled_at}")
        if b.mrr is not None:
            parts.append(f"billed {usd(b.mrr)}/month" + (f" ({b.plan})" if b.plan else ""))
        if b.balance_due:
            parts.append(f"balance due {usd(b.balance_due)}")
        if b.last_payment_date:
            parts.append(f"last successful payment {b.last_payment_date} ({usd(b.last_payment_amount)})"
                         + _days(b.days_since_last_payment))
        if card := masked_marker(b, "payment_method") or b.payment_method:
            parts.append(f"payment method {card}")
        out.append("- **Billing**: " + ", ".join(parts) + f" [billing.status]{_stale(b)}")
    inv = _get(s, "billing.invoices", BillingInvoices)
    if inv:
        for c in inv.failed_charges[:3]:
            out.append(f"- **Failed charge** {c.date}: {usd(c.amount)} — `{c.failure_code}` "
                       f"\"{c.failure_message}\" [billing.invoices]")
        unpaid = [i for i in inv.invoices if i.status in ("open", "uncollectible") and (i.amount_remaining or 0) > 0]
        for i in unpaid[:3]:
            out.append(f"- **Open invoice** {i.number or i.id}: {usd(i.amount_remaining)} due {i.due_date or '—'} "
                       "[billing.invoices]")
        if not inv.failed_charges and not unpaid:
            out.append("- No failed charges in the last 90 days and no open invoices [billing.invoices]")
        out.append(f"- **Revenue** collected on recent invoices: {usd(inv.total_revenue)} [billing.invoices]")
    return out


def usage_lines(s: Slices) -> list[str]:
    u = _get(s, "product.usage", ProductUsage)
    if not u:
        return []
    last = f"last login {day(u.last_login)}{_days(u.days_since_login)}" if u.last_login else "no login recorded"
    out = [f"- **Usage**: {u.active_users_30d} active users in the last 30 days ({u.active_users_7d} in 7 days), "
           f"{last}, trend **{u.trend}** ({u.events_last_7d} events in the last 7 days vs {u.events_prior_7d} "
           f"the week before) [product.usage]{_stale(u)}"]
    if u.features_used_30d:
        out.append(f"- **Features used** (30 days): {', '.join(u.features_used_30d)}; adoption "
                   f"{u.feature_adoption:.0%} [product.usage]")
    return out


def support_lines(s: Slices) -> list[str]:
    out = []
    sm = _get(s, "support.summary", SupportSummary)
    if sm:
        by_type = ", ".join(f"{n} {t}" for t, n in sorted(sm.open_by_type.items()))
        parts = [f"{n_of(sm.total_tickets, 'ticket')} in total, {sm.open_tickets} open" + (f" ({by_type})" if by_type else "")]
        if sm.avg_resolution_hours is not None:
            parts.append(f"average resolution {sm.avg_resolution_hours} h")
        if sm.csat is not None:
            parts.append(f"CSAT {sm.csat} ({sm.csat_responses} response{'s' if sm.csat_responses != 1 else ''})")
        parts.append(f"repeat-issue count {sm.repeat_issue_count}"
                     + (f" ({sm.repeat_issue_type})" if sm.repeat_issue_type else ""))
        if sm.last_ticket_date:
            parts.append(f"last ticket {day(sm.last_ticket_date)}" + (f" ({sm.last_ticket_type})"
                                                                      if sm.last_ticket_type else ""))
        out.append("- **Support**: " + ", ".join(parts) + f" [support.summary]{_stale(sm)}")
    tk = _get(s, "support.tickets", SupportTickets)
    if tk:
        live = [t for t in tk.tickets if t.status in ("new", "open", "pending", "hold")]
        own = _own(s)
        for t in live[:5]:
            out.append(f"- Open ticket #{t.id} {quoted(t.subject, own)} ({t.status}, {t.type or 'untyped'}, "
                       f"opened {day(t.created_at)}){hidden_flag('support.tickets', t, ['subject'], own)} "
                       "[support.tickets]")
        if not live:
            out.append("- No open tickets among the recent ones [support.tickets]")
    return out


def contact_lines(s: Slices) -> list[str]:
    c = _get(s, "crm.contacts", CrmContacts)
    if not c:
        return []
    if not c.contacts:
        return ["- No contacts recorded [crm.contacts]"]
    return [f"- **{p.name}**" + (f", {p.title}" if p.title else "") + (f" ({p.role})" if p.role else "")
            + (f", {p.email}" if p.email else "") + (f", last activity {day(p.last_activity)}" if p.last_activity else "")
            + f", {p.engagement} [crm.contacts]" for p in c.contacts[:8]]


def deal_lines(s: Slices) -> list[str]:
    o = _get(s, "crm.opportunities", CrmOpportunities)
    if not o:
        return []
    out = [f"- **Open deal** \"{d.name}\": stage {d.stage}, {usd(d.amount)}, close {d.close_date}"
           + (f", next step: {d.next_step}" if d.next_step else "") + " [crm.opportunities]" for d in o.open]
    out += [f"- Closed {'won' if d.is_won else 'lost'} \"{d.name}\": {usd(d.amount)}, {d.close_date}"
            + (f", reason: {d.loss_reason}" if d.loss_reason else "") + " [crm.opportunities]" for d in o.closed[:3]]
    return out or ["- No open or recently closed deals [crm.opportunities]"]


def activity_lines(s: Slices) -> list[str]:
    a = _get(s, "crm.activities", CrmActivities)
    if not a:
        return []
    own = _own(s)
    return [f"- {day(x.date)} {x.kind}: {quoted(x.summary, own) if x.summary else '—'} [crm.activities]"
            for x in a.activities[:5]] or ["- No CRM activity recorded [crm.activities]"]


def email_lines(s: Slices) -> list[str]:
    e = _get(s, "email.threads", EmailThreads)
    if not e:
        return []
    out = []
    own = _own(s)
    for t in e.threads[:4]:
        shown = ["subject", *(["open_questions"] if len(t.open_questions) <= 2 else []),
                 *(["commitments"] if len(t.commitments) <= 2 else [])]
        out.append(f"- Email {quoted(t.subject, own)} — {n_of(t.messages, 'message')}, last {day(t.last_message_at)}"
                   + (f" ({t.last_direction})" if t.last_direction else "")
                   + hidden_flag("email.threads", t, shown, own) + " [email.threads]")
        out += [f"  - open question: {quoted(q, own)} [email.threads]" for q in t.open_questions[:2]]
        out += [f"  - commitment: {quoted(c, own)} [email.threads]" for c in t.commitments[:2]]
    return out or ["- No email threads in the last 60 days [email.threads]"]


def meeting_lines(s: Slices) -> list[str]:
    m = _get(s, "calendar.meetings", CalendarMeetings)
    if not m:
        return []
    own = _own(s)
    return [f"- {'Upcoming' if x.upcoming else 'Past'} meeting {quoted(x.title, own)} {day(x.start)}"
            + (f" with {', '.join(x.attendees[:4])}" if x.attendees else "") + " [calendar.meetings]"
            for x in m.meetings[:5]] or ["- No meetings within 30 days [calendar.meetings]"]


def call_lines(s: Slices) -> list[str]:
    c = _get(s, "calls.highlights", CallHighlights)
    if not c:
        return []
    out = []
    own = _own(s)
    for x in c.calls[:4]:
        moments = "; ".join(f"{k.kind}: {quoted(k.text, own)}" for k in x.moments[:4])
        hidden = hidden_flag("calls.highlights", x, ["title", *(["moments"] if len(x.moments) <= 4 else [])], own)
        out.append(f"- Call {quoted(x.title, own)} {day(x.date)}" + (f" — {moments}" if moments else "") + hidden
                   + " [calls.highlights]")
    return out or ["- No recorded calls [calls.highlights]"]


def chat_lines(s: Slices) -> list[str]:
    c = _get(s, "chat.mentions", ChatMentions)
    if not c:
        return []
    own = _own(s)
    return [f"- {day(x.ts)} #{x.channel} {x.author}: {quoted(x.text, own)} [chat.mentions]" for x in c.mentions[:5]] \
        or ["- No internal mentions in 30 days [chat.mentions]"]


def document_lines(s: Slices) -> list[str]:
    d = _get(s, "docs.documents", Documents)
    if not d:
        return []
    own = _own(s)
    return [f"- {x.kind or 'document'} {quoted(x.title, own)}, updated {day(x.updated)} [docs.documents]"
            for x in d.documents[:6]] or ["- No shared documents [docs.documents]"]


def news_lines(s: Slices) -> list[str]:
    n = _get(s, "research.news", ResearchNews)
    if not n:
        return []
    own = _own(s)
    return [f"- News {day(a.date)}: {quoted(a.headline, own)}" + (f" ({a.kind})" if a.kind else "") + " [research.news]"
            for a in n.articles[:4]] or ["- No company news in the last 30 days [research.news]"]


def health_lines(s: Slices, traits: dict[str, Any]) -> list[str]:
    if not traits or not traits.get("based_on"):
        return []
    cite = " ".join(f"[{n}]" for n in traits["based_on"] if n in HEALTH_SLICES)
    reasons = "; ".join(f"{r['name']}: {r['reason']}" for r in traits.get("risk_reasons", []))
    tier = f"tier {traits['tier']}" if traits.get("tier") else "tier unknown"
    return [f"- **Health**: {traits['health']} — {tier}, risk indicators {', '.join(traits['risk_indicators'])}"
            + (f" ({reasons})" if reasons else "") + f", churn risk {traits['churn_risk']['score']}/100 {cite}"]


SECTIONS: dict[str, Callable[[Slices], list[str]]] = {
    "account": account_lines, "billing": billing_lines, "usage": usage_lines, "support": support_lines,
    "contacts": contact_lines, "deals": deal_lines, "activity": activity_lines, "email": email_lines,
    "meetings": meeting_lines, "calls": call_lines, "chat": chat_lines, "documents": document_lines,
    "news": news_lines,
    "orders": order_lines, "refunds": refund_lines, "cards": card_lines, "addresses": address_lines,
}
OVERVIEW_ORDER = ("account", "billing", "usage", "support", "deals", "meetings", "email", "news", "orders")
HEALTH_ORDER = ("account", "billing", "usage", "support")


def gap_lines(gaps: list[SourceGap], slices: Slices) -> list[str]:
    acc = _get(slices, "crm.account", CrmAccount)
    out = []
    for g in gaps:
        note = " (normal for a prospect: no billing account yet)" if (
            g.source == "billing" and g.kind == "not_found" and acc and acc.status == "prospect") else ""
        out.append(f"- {g.slice} ({g.kind}): {g.message}{note}" + (f" {g.remedy}" if g.remedy else ""))
    return out


def conflict_lines(conflicts: list[dict[str, Any]]) -> list[str]:
    return [f"- **Conflict on {c['field']}**: " + " vs ".join(
        f"{v['value']} ({v['source']}) [{v['slice']}]" for v in c["values"]) + f" — {c['note']}" for c in conflicts]


def compose_answer(name: str, intents: list[str], slices: Slices, gaps: list[SourceGap],
                   traits: dict[str, Any], as_of: date | datetime | str | None = None,
                   conflicts: list[dict[str, Any]] | None = None, lead: list[str] | None = None) -> str:
    """The offline model's answer: one section per intent, every fact cited. ``lead``: lines that
    come first (the asked fields, agent.offline.field_answers)."""
    slices = CustomerSlices(slices, name)
    lines: list[str] = list(lead or [])
    seen: set[str] = set()
    for intent in intents:
        order = OVERVIEW_ORDER if intent == "overview" else HEALTH_ORDER if intent == "health" else (intent,)
        if intent in ("overview", "health"):
            lines += health_lines(slices, traits)
        for part in order:
            if part not in seen:
                seen.add(part)
                lines += SECTIONS[part](slices)
    lines += conflict_lines(conflicts or [])
    when = as_of[:10] if isinstance(as_of, str) else day(as_of) if as_of else None
    head = f"**{name}**" + (f" — as of {when}" if when else "")
    body = [head, *lines] if lines else [
        head, "I could not read any of the context this question needs (see Missing context below). "
              "If you can, tell me who you are talking to there and what the conversation is about."]
    if gaps:
        body += ["", "**Missing context**", *gap_lines(gaps, slices)]
    return "\n".join(body)


def review_summary(name: str, slices: Slices, gaps: list[SourceGap], traits: dict[str, Any]) -> str:
    """Three to five grounded sentences: status and health, the main risk or opportunity, next action."""
    own = _own(CustomerSlices(slices, name))
    acc = _get(slices, "crm.account", CrmAccount)
    bil = _get(slices, "billing.status", BillingStatus)
    opps = _get(slices, "crm.opportunities", CrmOpportunities)
    meet = _get(slices, "calendar.meetings", CalendarMeetings)
    out = []
    if acc:
        status = {"active": "an active customer", "prospect": "a prospect", "churned": "a churned customer"}.get(
            acc.status or "", "a customer")
        out.append(f"{name} is {status}" + (f" on {acc.plan}" if acc.plan else "")
                   + (f" at {usd(acc.mrr)} MRR" if acc.mrr is not None else "")
                   + (f", renewing {acc.renewal_date}" if acc.renewal_date else "") + " [crm.account].")
    elif bil:
        out.append(f"{name} has no CRM record; billing shows a {bil.status} subscription"
                   + (f" at {usd(bil.mrr)}/month" if bil.mrr is not None else "") + " [billing.status].")
    if traits and traits.get("based_on"):
        cite = " ".join(f"[{n}]" for n in traits["based_on"] if n in HEALTH_SLICES)
        reasons = "; ".join(r["reason"] for r in traits.get("risk_reasons", [])[:3])
        out.append(f"Health is {traits['health']}" + (f": {reasons}" if reasons else "") + f" {cite}.")
    if (orders := commerce_summary(name, slices)) is not None:
        out.append(orders)
    if opps and opps.open:
        d = opps.open[0]
        out.append(f"Open deal \"{d.name}\" is at {d.stage} for {usd(d.amount)}, closing {d.close_date} "
                   "[crm.opportunities].")
    upcoming = [m for m in meet.meetings if m.upcoming] if meet else []
    if bil and bil.status == "past_due":
        out.append(f"Next action: resolve the past-due balance of {usd(bil.balance_due)} [billing.status].")
    elif upcoming:
        out.append(f"Next action: prepare for {quoted(upcoming[0].title, own)} on {day(upcoming[0].start)} "
                   "[calendar.meetings].")
    if gaps:
        out.append("Missing: " + ", ".join(f"{g.slice} ({g.kind})" for g in gaps[:6]) + ".")
    return " ".join(out) or f"No context could be read for {name}."
