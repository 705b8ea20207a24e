"""Field-level answers: the line (or lines) that answer a specific question, every one cited.

``agent.offline.fields`` says which fields a question asks for; this module writes them from
the fetched slices and says plainly when a slice holds no value for the field (no CSAT
response, no upcoming meeting) or when no connected source can hold it (a *need*: the user
is asked for it, and what they told us before is shown with its provenance).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import Any

from agent.brief import day, quoted
from agent.offline.answers import (
    CustomerSlices,
    Slices,
    _get,
    _own,
    account_lines,
    billing_lines,
    compose_answer,
    health_lines,
    support_lines,
    usage_lines,
)
from agent.offline.fields import NEEDS, needs_of
from tools.access.policy import masked_marker
from tools.context.missing import rank_unconnected
from tools.slices import (
    BillingStatus,
    CalendarMeetings,
    CrmAccount,
    CrmActivities,
    CrmContacts,
    EmailThreads,
    ProductUsage,
    SourceGap,
    SupportSummary,
)

Renderer = Callable[[Slices, dict[str, Any]], list[str]]
UNMATCHED = ("I can't tell which of this customer's data answers that question, so I read nothing. I can answer "
             "about billing, usage, support, contacts and phones, deals, meetings, email, calls, news, health "
             "and renewal; or tell me what you need.")
NOTE_HINT = 'If you know it, tell me: `custctx note <customer> "<fact>"` keeps it with your name and the date.'


def _phones(s: Slices, traits: dict[str, Any]) -> list[str]:
    c = _get(s, "crm.contacts", CrmContacts)
    if not c:
        return []
    if not c.contacts:
        return ["- No contacts recorded, so no phone numbers [crm.contacts]"]
    out = []
    for p in c.contacts[:8]:
        phone = masked_marker(c, "contacts.phone") or p.phone or "no phone recorded"
        out.append(f"- **{p.name}**" + (f", {p.title}" if p.title else "") + (f" ({p.role})" if p.role else "")
                   + f": phone {phone}" + (f", email {p.email}" if p.email else "") + " [crm.contacts]")
    return out


def _active_users(s: Slices, traits: dict[str, Any]) -> list[str]:
    u = _get(s, "product.usage", ProductUsage)
    if not u:
        return []
    return [f"- **Active users**: {u.active_users_30d} active users in the last 30 days ({u.active_users_7d} in "
            f"the last 7 days), trend **{u.trend}** [product.usage]"]


def _next_meeting(s: Slices, traits: dict[str, Any]) -> list[str]:
    m = _get(s, "calendar.meetings", CalendarMeetings)
    if not m:
        return []
    own = _own(s)
    upcoming = sorted((x for x in m.meetings if x.upcoming), key=lambda x: x.start)
    if not upcoming:
        past = sorted((x for x in m.meetings if not x.upcoming), key=lambda x: x.start, reverse=True)
        return ["- **No upcoming meeting** in the calendar (it covers 30 days either side)"
                + (f"; the last one was {quoted(past[0].title, own)} on {day(past[0].start)}" if past else "")
                + " [calendar.meetings]"]
    x = upcoming[0]
    out = [f"- **Next meeting**: {quoted(x.title, own)} on {day(x.start)}"
           + (f" with {', '.join(x.attendees[:4])}" if x.attendees else "") + " [calendar.meetings]"]
    out += [f"- Then {quoted(y.title, own)} on {day(y.start)} [calendar.meetings]" for y in upcoming[1:3]]
    return out


def _touches(s: Slices) -> list[tuple[datetime, str, str]]:
    own = _own(s)
    out: list[tuple[datetime, str, str]] = []
    if a := _get(s, "crm.activities", CrmActivities):
        out += [(x.date, f"{x.kind} {quoted(x.summary, own) if x.summary else '—'}", "crm.activities")
                for x in a.activities]
    if e := _get(s, "email.threads", EmailThreads):
        out += [(t.last_message_at, f"email {quoted(t.subject, own)}"
                 + (f" (last message {t.last_direction})" if t.last_direction else ""), "email.threads")
                for t in e.threads if t.last_message_at]
    return sorted(out, key=lambda x: x[0].replace(tzinfo=None), reverse=True)


def _last_touch(s: Slices, traits: dict[str, Any]) -> list[str]:
    if not (_get(s, "crm.activities", CrmActivities) or _get(s, "email.threads", EmailThreads)):
        return []
    touches = _touches(s)
    if not touches:
        return ["- No recorded activity or email with them [crm.activities] [email.threads]"]
    (when, what, cite), *rest = touches
    return [f"- **Latest touch**: {day(when)} {what} [{cite}]",
            *(f"- Before that: {day(w)} {x} [{c}]" for w, x, c in rest[:2])]


def _csat(s: Slices, traits: dict[str, Any]) -> list[str]:
    sm = _get(s, "support.summary", SupportSummary)
    if not sm:
        return []
    if sm.csat is None:
        return ["- **CSAT**: no satisfaction responses recorded [support.summary]"]
    return [f"- **CSAT {sm.csat}** on a 1–5 scale ({sm.csat_responses} response{'s' if sm.csat_responses != 1 else ''})"
            f" [support.summary]"]


def _trial_end(s: Slices, traits: dict[str, Any]) -> list[str]:
    b = _get(s, "billing.status", BillingStatus)
    if b and not b.trial_ends:
        return [f"- **No trial**: the subscription is {b.status} [billing.status]"]
    return billing_lines(s)


def _renewal(s: Slices, traits: dict[str, Any]) -> list[str]:
    a = _get(s, "crm.account", CrmAccount)
    if a and not a.renewal_date:
        return [f"- **Renewal**: no renewal date recorded for {a.company_name} [crm.account]"]
    return account_lines(s)


def _region(s: Slices, traits: dict[str, Any]) -> list[str]:
    a = _get(s, "crm.account", CrmAccount)
    if not a:
        return []
    if not (a.region or a.country):
        return [f"- **Region**: not recorded for {a.company_name} [crm.account]"]
    return [f"- **Region**: {a.region or '—'}" + (f", {a.country}" if a.country else "") + " [crm.account]"]


def _health_check(s: Slices, traits: dict[str, Any]) -> list[str]:
    return [*health_lines(s, traits), *account_lines(s), *billing_lines(s), *usage_lines(s), *support_lines(s)]


def _sections(*fns: Callable[[Slices], list[str]]) -> Renderer:
    return lambda s, traits: [line for fn in fns for line in fn(s)]


RENDERERS: dict[str, Renderer] = {
    "health_check": _health_check, "phones": _phones, "active_users": _active_users,
    "last_login": _sections(usage_lines), "next_meeting": _next_meeting, "last_touch": _last_touch,
    "csat": _csat, "resolution_time": _sections(support_lines), "open_ticket_count": _sections(support_lines),
    "open_invoice": _sections(billing_lines), "last_payment": _sections(billing_lines),
    "payment_method": _sections(billing_lines), "trial_end": _trial_end, "renewal_date": _renewal,
    "churn_date": _sections(account_lines), "mrr_agreement": _sections(account_lines, billing_lines),
    "region": _region,
}


def _cap(label: str) -> str:
    return label[:1].upper() + label[1:]


def need_lines(needs: list[str], user_facts: list[dict[str, Any]] | None = None) -> list[str]:
    """Say plainly that no connected source holds what was asked, show what users told us, and ask."""
    labels = {n.name: n.label for n in NEEDS}
    out = []
    for name in needs:
        known = [f for f in user_facts or [] if name in needs_of(str(f.get("text", "")))]
        out += [f"- **{_cap(labels[name])}** (told by {f.get('by', 'a user')} on {str(f.get('at', ''))[:10]}, "
                f"provenance user): {quoted(str(f.get('text', '')))} [user_facts]" for f in known]
        if not known:
            out.append(f"- **{_cap(labels[name])}**: no connected source records it, so I cannot answer "
                       f"from the data. {NOTE_HINT}")
    return out


def compose_field_answer(name: str, intents: list[str], fields: list[str], needs: list[str], slices: Slices,
                         gaps: list[SourceGap], traits: dict[str, Any], as_of: date | datetime | str | None = None,
                         conflicts: list[dict[str, Any]] | None = None,
                         user_facts: list[dict[str, Any]] | None = None) -> str:
    """The offline model's answer to a question: the asked fields first, then any remaining intents' sections.
    ``user_facts``: facts users told us (shown for the needs they answer, with who and when)."""
    own = CustomerSlices(slices, name)
    lines: list[str] = []
    seen: set[str] = set()
    for f in fields:
        for line in RENDERERS[f](own, traits):
            if line not in seen:
                seen.add(line)
                lines.append(line)
    lines += need_lines(needs, user_facts)
    if not (intents or fields or needs):
        lines.append(f"- {UNMATCHED}")
    # unconnected sources last, the most valuable for the assistant first (tools/context/missing.py)
    rank = {m.source: i for i, m in enumerate(rank_unconnected("assistant", [g.source for g in gaps]))}
    gaps = sorted(gaps, key=lambda g: (g.kind == "not_connected", rank.get(g.source, 0) if g.kind == "not_connected"
                                       else 0))
    return compose_answer(name, intents, slices, gaps, traits, as_of, conflicts, lead=lines)
