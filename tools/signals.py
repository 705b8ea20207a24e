"""Relationship signals: how the relationship is going, from the communication slices.

Engagement trend, last touch and who initiated it, stakeholder coverage, the tone of recent
inbound email, competitor mentions across calls, renewal risk in what the customer said,
lifetime value and historical revenue — each with its reason and provenance (the slices and
record ids it came from). Every window is counted back from the read clock's now (the slices'
``provenance.as_of``), never the wall clock; every threshold and list is a
:class:`tools.settings.Thresholds` field. A signal that is a risk names its risk indicator
(``risk``); :func:`tools.traits.derive_traits` turns those into relationship risks that feed
health and the churn score. docs/SIGNALS.md has the rules and the fixture facts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, Field

from tools.settings import Thresholds
from tools.slices import (
    BillingInvoices,
    BillingStatus,
    CalendarMeetings,
    CallHighlights,
    CrmAccount,
    CrmContacts,
    EmailThreads,
    Slice,
)

#: The relationship risks a signal may raise, in the order they are listed.
RELATIONSHIP_RISKS = ("renewal_at_risk", "negative_sentiment", "champion_cold", "engagement_declining",
                      "competitor_mentioned")


class SignalSource(BaseModel):
    """Where a signal came from: a slice and the source records in it."""

    slice: str
    record_ids: list[str] = Field(default_factory=list)


class Signal(BaseModel):
    """One relationship signal: its value in words, why, and where it came from."""

    name: str = Field(description="engagement_trend, last_touch, stakeholder_coverage, sentiment, competitors, "
                                  "renewal_risk, lifetime_value or historical_revenue.")
    value: str = Field(description="The signal in a word or a figure: declining, them, champion cold, ...")
    reason: str
    sources: list[SignalSource] = Field(default_factory=list)
    risk: str | None = Field(default=None, description="The relationship risk it raises, if any.")
    figures: dict[str, Any] = Field(default_factory=dict, description="The numbers behind the value.")


@dataclass(frozen=True)
class Touch:
    """One exchange with the customer: an email message, a meeting held or a call."""

    at: datetime
    channel: str  # email | meeting | call
    slice: str
    record_id: str
    initiator: str  # us | them | unknown
    people: frozenset[str]


def _naive(at: datetime) -> datetime:
    return at.replace(tzinfo=None) - (at.utcoffset() or timedelta(0)) if at.tzinfo else at


def read_now(s: dict[str, Slice]) -> datetime | None:
    """The read clock's now: the slices' ``as_of`` (one clock per read)."""
    return max((_naive(x.provenance.as_of) for x in s.values()), default=None)


def _domain(address: str | None) -> str:
    return (address or "").rsplit("@", 1)[-1].lower()


def inbound_texts(mail: EmailThreads) -> list[tuple[datetime, str, str]]:
    """(sent at, thread id, text) of every inbound message with text, the thread's last one included."""
    out = []
    for th in mail.threads:
        for i, m in enumerate(th.history):
            last = i == len(th.history) - 1
            text = m.text or (th.last_message if last and th.last_direction == "inbound" else None)
            if m.direction == "inbound" and text:
                out.append((_naive(m.sent_at), th.thread_id, text))
        if not th.history and th.last_direction == "inbound" and th.last_message and th.last_message_at:
            out.append((_naive(th.last_message_at), th.thread_id, th.last_message))
    return out


def customer_domains(s: dict[str, Slice]) -> set[str]:
    """The customer's own domains as the slices show them: the account's, its contacts', inbound senders'."""
    out: set[str] = set()
    account, contacts, mail = s.get("crm.account"), s.get("crm.contacts"), s.get("email.threads")
    if isinstance(account, CrmAccount) and account.domain:
        out.add(account.domain.lower())
    if isinstance(contacts, CrmContacts):
        out |= {_domain(c.email) for c in contacts.contacts if c.email}
    if isinstance(mail, EmailThreads):
        out |= {_domain(m.sender) for t in mail.threads for m in t.history if m.direction == "inbound" and m.sender}
    return out - {""}


def touches(s: dict[str, Slice], now: datetime) -> list[Touch]:
    """Every past exchange in the slices, newest first."""
    out: list[Touch] = []
    mail, cal, calls = s.get("email.threads"), s.get("calendar.meetings"), s.get("calls.highlights")
    if isinstance(mail, EmailThreads):
        for t in mail.threads:
            # who took part: the sender of an inbound message (our unanswered email engages nobody)
            msgs: list[tuple[datetime | None, str | None, str | None]] = \
                [(m.sent_at, m.direction, m.sender) for m in t.history] or [(t.last_message_at, t.last_direction, None)]
            out += [Touch(_naive(at), "email", "email.threads", t.thread_id,
                          {"inbound": "them", "outbound": "us"}.get(d or "", "unknown"),
                          frozenset({who.lower()} if who and d == "inbound" else ()))
                    for at, d, who in msgs if at is not None]
    if isinstance(cal, CalendarMeetings):
        ours = customer_domains(s)
        for m in cal.meetings:
            if m.start is None or _naive(m.start) > now:
                continue
            who = "unknown" if not m.organizer or not ours else "them" if _domain(m.organizer) in ours else "us"
            out.append(Touch(_naive(m.start), "meeting", "calendar.meetings", m.id, who,
                             frozenset(a.lower() for a in m.attendees)))
    if isinstance(calls, CallHighlights):
        out += [Touch(_naive(c.date), "call", "calls.highlights", c.id, "unknown",
                      frozenset(p.lower() for p in c.participants))
                for c in calls.calls if c.date is not None and _naive(c.date) <= now]
    return sorted((t for t in out if t.at <= now), key=lambda t: t.at, reverse=True)


def _sources(items: list[Touch]) -> list[SignalSource]:
    by_slice: dict[str, list[str]] = {}
    for t in items:
        ids = by_slice.setdefault(t.slice, [])
        if t.record_id not in ids:
            ids.append(t.record_id)
    return [SignalSource(slice=k, record_ids=v) for k, v in by_slice.items()]


def engagement_trend(ts: list[Touch], now: datetime, t: Thresholds) -> Signal | None:
    w = timedelta(days=t.signal_window_days)
    recent = [x for x in ts if x.at > now - w]
    before = [x for x in ts if now - 2 * w < x.at <= now - w]
    if not recent and not before:
        return None
    n, p = len(recent), len(before)
    if p == 0:
        trend = "rising"
    elif n < p * (1 - t.engagement_change):
        trend = "declining"
    elif n > p * (1 + t.engagement_change):
        trend = "rising"
    else:
        trend = "steady"
    channels = {c: (sum(x.channel == c for x in recent), sum(x.channel == c for x in before))
                for c in ("email", "meeting", "call")}
    detail = ", ".join(f"{c} {a} vs {b}" for c, (a, b) in channels.items() if a or b)
    return Signal(name="engagement_trend", value=trend, sources=_sources(recent + before),
                  risk="engagement_declining" if trend == "declining" else None,
                  reason=f"{n} touch{'es' if n != 1 else ''} in the last {t.signal_window_days} days vs {p} in the "
                         f"{t.signal_window_days} before ({detail})",
                  figures={"last": n, "previous": p, "window_days": t.signal_window_days,
                           "by_channel": {c: list(v) for c, v in channels.items()}})


def last_touch(ts: list[Touch]) -> Signal | None:
    if not ts:
        return None
    x = ts[0]
    who = {"us": "we initiated it", "them": "they initiated it"}.get(x.initiator, "initiator not recorded")
    return Signal(name="last_touch", value=x.initiator, sources=_sources([x]),
                  reason=f"{x.channel} on {x.at:%Y-%m-%d %H:%M} UTC; {who}",
                  figures={"at": x.at.isoformat(), "channel": x.channel})


def _role(role: str | None) -> str | None:
    r = (role or "").lower().replace("_", " ")
    return "champion" if "champion" in r else "exec sponsor" if "sponsor" in r else None


def stakeholder_coverage(s: dict[str, Slice], ts: list[Touch], now: datetime, t: Thresholds) -> Signal | None:
    contacts = s.get("crm.contacts")
    if not isinstance(contacts, CrmContacts):
        return None
    since = now - timedelta(days=t.signal_window_days)
    recent = [x for x in ts if x.at > since]
    state: dict[str, list[tuple[str, bool]]] = {"champion": [], "exec sponsor": []}
    used: list[Touch] = []
    for c in contacts.contacts:
        role = _role(c.role)
        if role is None:
            continue
        seen = [x for x in recent if c.email and c.email.lower() in x.people]
        used += seen
        engaged = bool(seen) or (c.last_activity is not None and _naive(c.last_activity) > since)
        state[role].append((c.name, engaged))
    if not state["champion"] and not state["exec sponsor"]:
        return Signal(name="stakeholder_coverage", value="no champion or exec sponsor on record",
                      reason="no contact has the role champion or exec sponsor",
                      sources=[SignalSource(slice="crm.contacts", record_ids=contacts.provenance.record_ids)])
    parts, cold = [], []
    for role, people in state.items():
        if not people:
            parts.append(f"no {role} on record")
            continue
        anyone = any(e for _, e in people)
        parts.append(f"{role} {', '.join(n for n, _ in people)} " + ("engaged" if anyone else "cold"))
        if not anyone:
            cold.append(role)
    value = "covered" if not cold else " and ".join(cold) + " cold"
    return Signal(name="stakeholder_coverage", value=value, risk="champion_cold" if "champion" in cold else None,
                  reason="; ".join(parts) + f" (engaged: touched in the last {t.signal_window_days} days)",
                  sources=[SignalSource(slice="crm.contacts", record_ids=contacts.provenance.record_ids),
                           *_sources(used)],
                  figures={r: {n: ("engaged" if e else "cold") for n, e in p} for r, p in state.items()})


@lru_cache(maxsize=1)
def _analyzer() -> Any:
    # VADER's lexicon ships in the wheel: nothing is downloaded
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    return SentimentIntensityAnalyzer()


@lru_cache(maxsize=4096)  # the same messages are read again and again (~0.4 ms each to score)
def tone(text: str) -> float:
    """VADER's compound score of ``text``: -1 (most negative) to 1 (most positive)."""
    return float(_analyzer().polarity_scores(text)["compound"])


def sentiment(s: dict[str, Slice], now: datetime, t: Thresholds) -> Signal | None:
    mail = s.get("email.threads")
    if not isinstance(mail, EmailThreads):
        return None
    since = now - timedelta(days=t.signal_window_days)
    scored = [(at, tid, tone(text)) for at, tid, text in inbound_texts(mail) if since < at <= now]
    if not scored:
        return None
    avg = round(sum(x for _, _, x in scored) / len(scored), 2)
    value = "negative" if avg <= t.negative_tone else "positive" if avg >= -t.negative_tone else "neutral"
    worst = min(scored, key=lambda x: x[2])
    ids = list(dict.fromkeys(tid for _, tid, _ in scored))
    return Signal(name="sentiment", value=value, risk="negative_sentiment" if value == "negative" else None,
                  reason=f"average tone {avg:+.2f} over {len(scored)} inbound email{'s' if len(scored) != 1 else ''} of the last "
                         f"{t.signal_window_days} days; most negative {worst[2]:+.2f} on {worst[0]:%Y-%m-%d}",
                  sources=[SignalSource(slice="email.threads", record_ids=ids)],
                  figures={"average": avg, "messages": len(scored), "most_negative": worst[2], "scorer": "vader"})


def _mentions(text: str, name: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(name.lower())}(?!\w)", text.lower()) is not None


def competitors(s: dict[str, Slice], t: Thresholds) -> Signal | None:
    calls = s.get("calls.highlights")
    if not isinstance(calls, CallHighlights) or not t.competitors:
        return None
    found: dict[str, list[str]] = {}
    for c in calls.calls:
        text = " \n".join([*(m.text or "" for m in c.moments), *c.topics])
        for name in t.competitors:
            if _mentions(text, name):
                found.setdefault(name, []).append(c.id)
    if not found:
        return None
    ids = list(dict.fromkeys(i for v in found.values() for i in v))
    said = "; ".join(f"{n} on {len(v)} call{'s' if len(v) > 1 else ''}" for n, v in found.items())
    return Signal(name="competitors", value=", ".join(found), risk="competitor_mentioned",
                  reason=f"{said} (of {len(calls.calls)} recent calls)", figures={"calls": found},
                  sources=[SignalSource(slice="calls.highlights", record_ids=ids)])


def renewal_risk(s: dict[str, Slice], now: datetime, t: Thresholds) -> Signal | None:
    phrases = [p.lower() for p in t.renewal_risk_phrases]
    hits: list[tuple[datetime, str, str, str]] = []  # when, slice, record id, phrase
    calls, mail = s.get("calls.highlights"), s.get("email.threads")
    if isinstance(calls, CallHighlights):
        for c in calls.calls:
            text = " \n".join([*(m.text or "" for m in c.moments), *c.topics]).lower()
            hits += [(_naive(c.date) if c.date else now, "calls.highlights", c.id, p) for p in phrases if p in text]
    if isinstance(mail, EmailThreads):
        for at, tid, text in inbound_texts(mail):
            hits += [(at, "email.threads", tid, p) for p in phrases if p in text.lower()]
    if not hits:
        return None
    hits.sort(reverse=True)
    where = "; ".join(dict.fromkeys(f"“{p}” ({'call' if sl.startswith('calls') else 'email'} {at:%Y-%m-%d})"
                                    for at, sl, _, p in hits))
    by_slice: dict[str, list[str]] = {}
    for _, sl, rid, _ in hits:
        if rid not in by_slice.setdefault(sl, []):
            by_slice[sl].append(rid)
    return Signal(name="renewal_risk", value="at risk", risk="renewal_at_risk",
                  reason=f"the customer said {where}",
                  sources=[SignalSource(slice=k, record_ids=v) for k, v in by_slice.items()],
                  figures={"phrases": list(dict.fromkeys(p for *_, p in hits))})


def revenue(s: dict[str, Slice], now: datetime) -> list[Signal]:
    inv, status = s.get("billing.invoices"), s.get("billing.status")
    if not isinstance(inv, BillingInvoices):
        return []
    cur = (status.currency if isinstance(status, BillingStatus) and status.currency else "usd").upper()
    out: list[Signal] = []
    src = [SignalSource(slice="billing.invoices", record_ids=inv.provenance.record_ids)]
    start = inv.first_payment_date
    period = f"{start} (first payment) to {now:%Y-%m-%d}" if start else f"every recorded payment to {now:%Y-%m-%d}"
    out.append(Signal(name="lifetime_value", value=f"{cur} {inv.total_revenue:,.2f}", sources=src,
                      reason=f"paid charges from {period}",
                      figures={"amount": inv.total_revenue, "currency": cur,
                               "since": start.isoformat() if start else None, "until": f"{now:%Y-%m-%d}"}))
    dated = [i for i in inv.invoices if i.created is not None]
    if dated:
        first, last = min(i.created for i in dated if i.created), max(i.created for i in dated if i.created)
        paid = round(sum(i.amount_paid or 0 for i in dated), 2)
        out.append(Signal(
            name="historical_revenue", value=f"{cur} {paid:,.2f}", sources=[SignalSource(
                slice="billing.invoices", record_ids=[i.id for i in dated])],
            reason=f"paid on the {len(dated)} invoices from {first} to {last}",
            figures={"amount": paid, "currency": cur, "since": first.isoformat(), "until": last.isoformat(),
                     "invoices": len(dated)}))
    return out


def relationship_signals(s: dict[str, Slice], t: Thresholds) -> list[Signal]:
    """Every relationship signal the slices at hand support (none without a read clock)."""
    now = read_now(s)
    if now is None:
        return []
    ts = touches(s, now)
    found = [engagement_trend(ts, now, t), last_touch(ts), stakeholder_coverage(s, ts, now, t),
             sentiment(s, now, t), competitors(s, t), renewal_risk(s, now, t)]
    return [x for x in found if x is not None] + revenue(s, now)
