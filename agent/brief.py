"""Markdown customer-context brief, in the structure of the customer-context skill.

Relationship Snapshot, Key Contacts, Commercial Summary, Recent Activity, Open
Items, Context from <sources>, Missing Context — plus conflicts and provenance.
Only facts present in the context's slices are written. Text written by customers or
third parties that carries a suspected prompt injection is shown marked, quoted and
escaped (:func:`untrusted_text`), never as a fact or an instruction.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from agent.commerce import commerce_lines, has_commerce
from agent.injection import FLAG_MARKER, flagged_fields, injection_signals
from tools.access.policy import masked_marker
from tools.context.assembly import CustomerContext
from tools.context.missing import missing_lines
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
    SupportSummary,
    SupportTickets,
)

SOURCE_TITLES = {
    "crm": "CRM", "billing": "Billing", "product": "Product analytics", "support": "Support",
    "email": "Email", "calendar": "Calendar", "chat": "Chat", "documents": "Documents",
    "calls": "Calls", "research": "News", "commerce": "Commerce",
}


def money(v: float | None, currency: str = "$") -> str:
    return "—" if v is None else f"{currency}{v:,.2f}".replace(".00", "")


def day(v: Any) -> str:
    if v is None:
        return "—"
    return v.date().isoformat() if isinstance(v, datetime) else v.isoformat()


# ------------------------------------------------------------------ untrusted text
_MARKDOWN = re.compile(r"([\\`*_\[\]<>#|!~{}()])")
_FIELD_WORDS = {"body": "body", "last_message": "last message", "open_questions": "open questions",
                "commitments": "commitments", "moments": "key moments", "subject": "subject", "title": "title",
                "text": "text", "summary": "summary", "headline": "headline", "comments": "comments",
                "history": "earlier messages", "topics": "topics", "objectives": "objectives", "agenda": "agenda"}
_QUOTE_MAX = 300


def _escaped(text: str) -> str:
    """One line, markdown and HTML inert (no link, image, tag or emphasis), at most ~300 characters."""
    line = " ".join(text.split())
    line = line if len(line) <= _QUOTE_MAX else line[:_QUOTE_MAX].rsplit(" ", 1)[0] + " …"
    return _MARKDOWN.sub(r"\\\1", line)


def untrusted_text(text: str | None, own: Sequence[str] = ()) -> str:
    """Text from a customer or a third party as shown to people: unchanged when it looks ordinary;
    a suspected prompt injection is marked with :data:`~agent.injection.FLAG_MARKER`, quoted and
    escaped, so it reads as a quotation and never as a fact or an instruction.

    Args:
        text: The untrusted text (a subject, a chat message, a document title, ...).
        own: Names or domains of the customer the text is about (their own company is not
            "another customer").
    """
    if not text or not injection_signals(text, own):
        return text or ""
    return f'{FLAG_MARKER}: "{_escaped(text)}"'


def quoted(text: str | None, own: Sequence[str] = ()) -> str:
    """:func:`untrusted_text` in quotation marks when it looks ordinary (``"text"``)."""
    shown = untrusted_text(text, own)
    return shown if shown.startswith(FLAG_MARKER) else f'"{shown}"'


def hidden_flag(slice_name: str, item: Any, shown: Sequence[str], own: Sequence[str] = ()) -> str:
    """A note for an item whose untrusted fields that are *not* shown on its line (a ticket's body,
    an email's last message) carry a suspected injection; empty otherwise."""
    hidden = [f for f in flagged_fields(slice_name, item, own) if f not in shown]
    return f" — {FLAG_MARKER} in its {' and '.join(_FIELD_WORDS.get(f, f) for f in hidden)}" if hidden else ""


def customer_names(c: CustomerContext) -> list[str]:
    """The customer's own names and domains (what "another customer" is told apart from)."""
    acc = _typed(c, "crm.account", CrmAccount)
    return [x for x in (c.name, *c.domains, acc.company_name if acc else None) if x]


def _served(s: Any) -> str:
    p = s.provenance
    if p.served_from != "memory":
        return ""
    age = f"{p.age_seconds / 3600:.1f} h" if (p.age_seconds or 0) >= 3600 else f"{p.age_seconds or 0:.0f} s"
    return f" (**stale**, from memory, {age} old)" if p.stale else f" (from memory, {age} old)"


def _ago(days: int) -> str:
    return "today" if days == 0 else f"{days} day{'s' if days != 1 else ''} ago"


def _typed(c: CustomerContext, name: str, cls: type) -> Any:
    s = c.get(name)
    return s if isinstance(s, cls) else None


def _status(c: CustomerContext) -> str:
    acc = _typed(c, "crm.account", CrmAccount)
    opps = _typed(c, "crm.opportunities", CrmOpportunities)
    bil = _typed(c, "billing.status", BillingStatus)
    if acc and acc.status == "churned":
        return f"churned{f' ({acc.churn_date})' if acc.churn_date else ''}"
    if acc and acc.status == "prospect":
        return "active deal" if opps and opps.open else "prospect"
    if bil and bil.status == "trialing":
        return f"customer (trial ends {bil.trial_ends})"
    if acc or (bil and bil.status not in ("canceled", "none")):
        return "customer"
    return "unknown"


def _timeline(c: CustomerContext) -> list[tuple[datetime, str, str]]:
    """Past interactions from every source, newest first: (when, channel, summary)."""
    own = customer_names(c)
    items: list[tuple[datetime, str, str]] = []
    if acts := _typed(c, "crm.activities", CrmActivities):
        items += [(a.date, f"CRM {a.kind}", untrusted_text(a.summary, own)) for a in acts.activities]
    if mail := _typed(c, "email.threads", EmailThreads):
        items += [(t.last_message_at, f"email ({t.last_direction})", untrusted_text(t.subject, own)
                   + hidden_flag("email.threads", t, ["subject"], own)) for t in mail.threads if t.last_message_at]
    if cal := _typed(c, "calendar.meetings", CalendarMeetings):
        items += [(m.start, "meeting", untrusted_text(m.title, own)) for m in cal.meetings
                  if m.start and not m.upcoming]
    if calls := _typed(c, "calls.highlights", CallHighlights):
        items += [(k.date, "call", untrusted_text(k.title, own) + hidden_flag("calls.highlights", k, ["title"], own))
                  for k in calls.calls if k.date]
    if tickets := _typed(c, "support.tickets", SupportTickets):
        items += [(t.created_at, f"ticket #{t.id} ({t.status})", untrusted_text(t.subject, own)
                   + hidden_flag("support.tickets", t, ["subject"], own)) for t in tickets.tickets if t.created_at]
    return sorted(items, key=lambda x: x[0], reverse=True)


def _snapshot(c: CustomerContext) -> list[str]:
    acc = _typed(c, "crm.account", CrmAccount)
    timeline = _timeline(c)
    last = f"{day(timeline[0][0])}, {timeline[0][1]}, {timeline[0][2]}" if timeline else "—"
    t = c.traits
    health = t.health + (f" — {'; '.join(f'{r.name}: {r.reason}' for r in t.risk_reasons)}" if t.risk_reasons else "")
    lines = [
        f"- **Status**: {_status(c)}",
        f"- **Account owner**: {acc.owner if acc and acc.owner else '—'}",
        f"- **Last interaction**: {last}",
        f"- **Relationship health**: {health}",
        f"- **Tier**: {t.tier or '—'}{f' (MRR {money(t.mrr)} from {t.tier_source})' if t.mrr is not None else ''}"
        f"{f'; plan {acc.plan}' if acc and acc.plan else ''}",
        f"- **Risk indicators**: {', '.join(t.risk_indicators)}; churn risk {t.churn_risk.score}/100",
    ]
    if t.support_load:
        lines.append(f"- **Support load**: {t.support_load}")
    if acc and (acc.industry or acc.region):
        lines.append(f"- **Company**: {', '.join(x for x in (acc.industry, acc.region, acc.country, acc.domain) if x)}")
    if acc and acc.parent_id:
        lines.append(f"- **Parent account**: {untrusted_text(acc.parent_name, customer_names(c)) or '—'} "
                     f"(CRM id {acc.parent_id})")
    lines += _custom(c)
    return lines + _signals(c)


#: How the relationship signals (tools/signals.py) are named in the brief.
_SIGNAL_TITLES = {"engagement_trend": "Engagement", "last_touch": "Last touch", "stakeholder_coverage":
                  "Stakeholder coverage", "sentiment": "Tone of recent inbound email", "competitors":
                  "Competitors mentioned", "renewal_risk": "Renewal risk (what they said)",
                  "lifetime_value": "Lifetime value", "historical_revenue": "Historical revenue (invoices)"}


def _signals(c: CustomerContext) -> list[str]:
    """The relationship signals and the risks they raise, each with its reason."""
    t = c.traits
    lines = [f"- **{_SIGNAL_TITLES.get(x.name, x.name)}**: {x.value} — {x.reason}" for x in t.signals]
    if t.relationship_risks:
        lines.append("- **Relationship risks**: " + "; ".join(f"{r.name}: {r.reason}" for r in t.relationship_risks))
    return lines


def _one_line(text: str | None, own: Sequence[str]) -> str:
    return " ".join(untrusted_text(text, own).split())


def _unstructured(c: CustomerContext) -> list[str]:
    """Ticket comments, meeting agendas, plan objectives and call topics: untrusted text, one line each."""
    own, lines = customer_names(c), []
    if tickets := _typed(c, "support.tickets", SupportTickets):
        for t in [t for t in tickets.tickets if t.comments][:3]:
            k = t.comments[-1]
            lines.append(f"- **Ticket #{t.id} latest comment** ({k.author or 'unknown'}, {day(k.created_at)}): "
                         f"{_one_line(k.text, own)}")
    if cal := _typed(c, "calendar.meetings", CalendarMeetings):
        lines += [f"- **Agenda of {_one_line(m.title, own)}** ({day(m.start)}): {_one_line(m.agenda, own)}"
                  for m in cal.meetings if m.agenda and m.upcoming][:3]
    if docs := _typed(c, "docs.documents", Documents):
        lines += [f"- **{_one_line(d.title, own)}** ({d.kind}): {_one_line(d.objectives, own)}"
                  for d in docs.documents if d.objectives][:3]
    if calls := _typed(c, "calls.highlights", CallHighlights):
        seen: dict[str, int] = {}
        for k in calls.calls:
            for topic in k.topics:
                seen[topic] = seen.get(topic, 0) + 1
        if seen:
            n_calls = f"{len(calls.calls)} call{'s' if len(calls.calls) != 1 else ''}"
            lines.append(f"- **Call topics across {n_calls}**: " + ", ".join(
                f"{_one_line(x, own)} ({n})" for x, n in sorted(seen.items(), key=lambda kv: (-kv[1], kv[0]))[:10]))
    return lines


def _custom(c: CustomerContext) -> list[str]:
    """The custom fields the mappings declare (CRM account, billing customer), one line."""
    own = customer_names(c)
    shown: dict[str, Any] = {}
    for s in (_typed(c, "billing.status", BillingStatus), _typed(c, "crm.account", CrmAccount)):
        if s is not None and not masked_marker(s, "custom"):
            shown.update(s.custom or {})
    if not shown:
        return []
    return ["- **Custom fields**: " + "; ".join(
        f"{k}: {'—' if v is None else untrusted_text(str(v), own)}" for k, v in shown.items())]


def _contacts(c: CustomerContext) -> list[str]:
    contacts = _typed(c, "crm.contacts", CrmContacts)
    if not contacts or not contacts.contacts:
        return ["_No contacts available._"]
    shown = contacts.contacts[:10]
    if any(p.custom for p in shown):  # custom contact fields the mapping declares: one more column
        own = customer_names(c)
        rows = ["| Name | Title | Role | Last Contact | Engagement | Custom |", "|---|---|---|---|---|---|"]
        return rows + [f"| {p.name} | {p.title or '—'} | {p.role or '—'} | {day(p.last_activity)} | {p.engagement} "
                       f"| {_custom_cell(p.custom, own)} |" for p in shown]
    rows = ["| Name | Title | Role | Last Contact | Engagement |", "|---|---|---|---|---|"]
    rows += [f"| {p.name} | {p.title or '—'} | {p.role or '—'} | {day(p.last_activity)} | {p.engagement} |"
             for p in shown]
    return rows


def _custom_cell(custom: dict[str, Any], own: Sequence[str]) -> str:
    cell = "; ".join(f"{k}: {untrusted_text(str(v), own)}" for k, v in custom.items() if v is not None)
    return cell.replace("|", "\\|") or "—"


def _commercial(c: CustomerContext) -> list[str]:
    lines: list[str] = []
    acc = _typed(c, "crm.account", CrmAccount)
    opps = _typed(c, "crm.opportunities", CrmOpportunities)
    bil = _typed(c, "billing.status", BillingStatus)
    inv = _typed(c, "billing.invoices", BillingInvoices)
    if opps:
        listed = "; ".join(f"{o.name} — {o.stage}, {money(o.amount)}, close {day(o.close_date)}"
                           + (f", next: {o.next_step}" if o.next_step else "") for o in opps.open)
        lines.append(f"- **Open opportunities**: {listed or 'none'}")
        if opps.closed:
            lines.append("- **Closed (12 months)**: " + "; ".join(
                f"{o.name} — {'won' if o.is_won else 'lost'}{f' ({o.loss_reason})' if o.loss_reason else ''}, "
                f"{money(o.amount)}" for o in opps.closed))
    if inv:
        since = f" since {inv.first_payment_date} (first payment)" if inv.first_payment_date else ""
        lines.append(f"- **Historical revenue**: {money(inv.total_revenue)} in payments received{since}")
    if acc:
        renewal = f"{acc.renewal_date} ({acc.days_to_renewal} days)" if acc.renewal_date else "—"
        value = masked_marker(acc, "contract_value") or money(acc.contract_value)
        lines.append(f"- **Next renewal**: {renewal}; contract value {value}")
    if bil:
        pay = f"last payment {day(bil.last_payment_date)} {money(bil.last_payment_amount)}" \
            if bil.last_payment_date else "no payment yet"
        extra = f"; balance due {money(bil.balance_due)}" if bil.balance_due else ""
        card = masked_marker(bil, "payment_method") or bil.payment_method
        method = f"; card {card}" if card else ""
        trial = f"; trial ends {bil.trial_ends}" if bil.trial_ends else ""
        lines.append(f"- **Billing**: {bil.status}{trial}; {pay}{extra}{method}")
    if inv and inv.failed_charges:
        for fc in inv.failed_charges:
            lines.append(f"- **Failed charge**: {fc.date} {money(fc.amount)} — {fc.failure_code}: "
                         f"\"{fc.failure_message}\"")
    return lines or ["_No commercial data available._"]


def _open_items(c: CustomerContext) -> list[str]:
    own = customer_names(c)
    items: list[str] = []
    if mail := _typed(c, "email.threads", EmailThreads):
        for t in mail.threads:
            subject = untrusted_text(t.subject, own)
            items += [f"Commitment (email \"{subject}\"): {untrusted_text(x, own)}" for x in t.commitments]
            items += [f"Open question (email \"{subject}\"): {untrusted_text(q, own)}" for q in t.open_questions]
    if cal := _typed(c, "calendar.meetings", CalendarMeetings):
        items += [f"Upcoming meeting: {untrusted_text(m.title, own)} on {day(m.start)}" for m in cal.meetings
                  if m.upcoming]
    if tickets := _typed(c, "support.tickets", SupportTickets):
        items += [f"Open ticket #{t.id} ({t.type or 'other'}, {t.priority or 'no priority'}): "
                  f"{untrusted_text(t.subject, own)}{hidden_flag('support.tickets', t, ['subject'], own)}"
                  for t in tickets.tickets if t.status in ("new", "open", "pending", "hold")]
    elif sup := _typed(c, "support.summary", SupportSummary):
        if sup.open_tickets:
            by_type = ", ".join(f"{k} {v}" for k, v in sorted(sup.open_by_type.items()))
            items.append(f"{sup.open_tickets} open support tickets ({by_type})")
    if opps := _typed(c, "crm.opportunities", CrmOpportunities):
        items += [f"Deal next step ({o.name}): {o.next_step}" for o in opps.open if o.next_step]
    return [f"- {i}" for i in items] or ["- _None found in the connected sources._"]


def _insights(c: CustomerContext) -> list[str]:
    own = customer_names(c)
    lines: list[str] = []
    if u := _typed(c, "product.usage", ProductUsage):
        lines.append(f"- **Product**: {u.active_users_30d} active users (30 d), {u.active_users_7d} (7 d); "
                     f"last login {day(u.last_login)}"
                     f"{f' ({_ago(u.days_since_login)})' if u.days_since_login is not None else ''}; "
                     f"trend {u.trend}; features used: {', '.join(u.features_used_30d) or 'none'}")
    if s := _typed(c, "support.summary", SupportSummary):
        by_type = ", ".join(f"{k} {v}" for k, v in sorted(s.open_by_type.items()))
        lines.append(f"- **Support**: {s.total_tickets} tickets, {s.open_tickets} open"
                     f"{f' ({by_type})' if by_type else ''}; avg resolution "
                     f"{s.avg_resolution_hours if s.avg_resolution_hours is not None else '—'} h; "
                     f"CSAT {s.csat if s.csat is not None else '—'}; repeat issues {s.repeat_issue_count}")
    if calls := _typed(c, "calls.highlights", CallHighlights):
        for k in calls.calls:
            for m in k.moments:
                lines.append(f"- **Call {day(k.date)} \"{untrusted_text(k.title, own)}\"** — {m.kind}: "
                             f"{untrusted_text(m.text, own)}")
    if news := _typed(c, "research.news", ResearchNews):
        lines += [f"- **News {day(a.date)}** ({a.kind}): {untrusted_text(a.headline, own)}" for a in news.articles]
    if chat := _typed(c, "chat.mentions", ChatMentions):
        lines += [f"- **Chat {day(m.ts)} #{(m.channel or '').lstrip('#')}** ({m.author}): {untrusted_text(m.text, own)}"
                  for m in chat.mentions[:5]]
    if docs := _typed(c, "docs.documents", Documents):
        lines += [f"- **Document** ({d.kind}, {day(d.updated)}): {untrusted_text(d.title, own)}"
                  for d in docs.documents[:5]]
    lines += _unstructured(c)
    return lines or ["- _Nothing further from the connected sources._"]


def render_brief(c: CustomerContext, user_facts: Sequence[Any] = ()) -> str:
    """The customer-context brief as markdown. ``user_facts``: facts users supplied (``tools.facts.UserFact``),
    shown apart with who told us and when (provenance user)."""
    used = sorted({s.source for s in c.slices.values()}, key=list(SOURCE_TITLES).index)
    out = [f"## Customer Context: {c.name}", "",
           f"_Customer `{c.customer_id}` · as of {c.as_of:%Y-%m-%d %H:%M} UTC · "
           f"context updated {c.context_updated:%Y-%m-%d %H:%M:%S} UTC_" if c.context_updated else "", "",
           "### Relationship Snapshot", *_snapshot(c), "",
           "### Key Contacts", *_contacts(c), "",
           "### Commercial Summary", *_commercial(c), "",
           # a store's customer: orders, refunds, cards and addresses (agent/commerce.py)
           *(["### Orders and Refunds", *commerce_lines(c.slices), ""] if has_commerce(c.slices) else []),
           "### Recent Activity",
           *([f"- {day(w)} — {ch}: {s}" for w, ch, s in _timeline(c)[:5]] or ["- _No recent activity found._"]), "",
           "### Open Items", *_open_items(c), "",
           f"### Context from {', '.join(SOURCE_TITLES[s] for s in used) or 'no sources'}", *_insights(c), ""]
    if c.conflicts:
        out += ["### Conflicts"]
        out += [f"- **{x.field}**: " + " vs ".join(f"{v.value} ({v.source}, {v.slice})" for v in x.values)
                + f" — {x.note}" for x in c.conflicts]
        out.append("")
    if user_facts:
        out += ["### Told by Users", *(f"- {f.at:%Y-%m-%d} {f.by} ({f.role}, provenance user): {quoted(f.text)}"
                                       for f in user_facts), ""]
    out += ["### Missing Context"]
    out += [f"- {g.slice} ({g.kind}): {g.message}" + (f" {g.remedy}" if g.remedy else "") for g in c.gaps] \
        or ["- _None: every requested slice was available._"]
    if ranked := missing_lines("assistant", [r.source for r in c.sources if r.status == "not_connected"]):
        out += ["", "Connections that would add most, ranked for the assistant:", *ranked]
    out += ["", "### Source Report", "| Source | Status | System | Latency | Newest row | Notes |",
            "|---|---|---|---|---|---|"]
    out += [f"| {r.source} | {r.status} | {r.system or '—'} | "
            f"{f'{r.latency_ms:.0f} ms' if r.latency_ms is not None else '—'} | {r.freshness or '—'} | "
            + "; ".join(x for x in (", ".join(r.gaps), f"{r.skipped_rows} malformed rows skipped" if r.skipped_rows
                                    else "", r.error or "") if x) + " |"
            for r in c.sources]
    out += ["", "### Provenance", "| Slice | System | Records | Source updated | Fetched |", "|---|---|---|---|---|"]
    out += [f"| {n} | {s.provenance.system} | {len(s.provenance.record_ids)}"
            f"{f' ({s.provenance.skipped_rows} skipped)' if s.provenance.skipped_rows else ''} | "
            f"{s.provenance.source_updated_at or '—'} | {s.provenance.fetched_at:%Y-%m-%d %H:%M:%S}{_served(s)} |"
            for n, s in c.slices.items()]
    return "\n".join(out) + "\n"


