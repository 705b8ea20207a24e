"""One large customer: years of history in every source (the token benchmark's big account).

Not part of the default fixtures: ``seed(url, large=LargeCustomer())`` writes it after every
other customer (its ids continue from theirs) from a random stream of its own, so the
default warehouse is unchanged and its rows depend only on its sizes. Every date is
relative to ``AS_OF`` and spread so that each slice's window is full: the 20 newest
tickets and activities, 10 email threads of the last 60 days, 10 calls of the last 90,
20 chat mentions of the last 30, the meetings within 30 days either side, 12 invoices.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta

from .builder import Builder
from .common import AS_OF, W1, W2, W3, add_months, vendor_email
from .names import FIRST_NAMES, LAST_NAMES, TITLES
from .texts import ISSUE_TEXT

OWNER = "olivia.dunham"
ISSUES = ("how_to", "bug", "billing", "account_access", "feature_request", "sso")
TOPICS = ("the EU plant rollout", "API rate limits", "the SAP connector", "SSO for the new business unit",
          "the Q1 usage report", "renewal terms", "the data retention policy", "dashboard performance",
          "the security questionnaire", "seat true-up", "the scheduled export to S3", "training for new admins")
HIGHLIGHTS = (("next_step", "Send the revised rollout plan for {topic} by Friday."),
              ("objection", "Procurement pushed back on the price of {topic}."),
              ("pricing", "Asked whether {topic} can be co-termed with the renewal."),
              ("competitor", "Mentioned they are also evaluating another vendor for {topic}."),
              ("risk", "The plant managers are unhappy with how long {topic} is taking."))
CHANNELS = ("#cs-team", "#deals", "#support", "#billing-alerts")
DOC_KINDS = ("plan", "notes", "proposal", "contract", "deck")


@dataclass(frozen=True)
class LargeCustomer:
    """What the large customer holds: how many records of each kind (sizes), and who it is."""

    tickets: int = 400  # a fortieth of them open
    email_threads: int = 300  # over the last 180 days, 2-3 messages each
    calls: int = 200  # recorded calls over the last year
    activities: int = 300  # CRM engagements over two years
    meetings: int = 100  # from 150 days before to 30 days after the as-of date
    chat_mentions: int = 100  # over the last 60 days
    invoices: int = 60  # monthly, all paid
    contacts: int = 40
    users: int = 300  # product users, five sixths of them active
    deals: int = 24
    documents: int = 40
    news: int = 12  # over the last 120 days
    name: str = "Titanhold Industrial"  # no background name can start with "Titan"
    domain: str = "titanhold-industrial.com"
    mrr: int = 48_000
    plan: str = "Enterprise Plus"
    seed: int = 14

    @property
    def open_tickets(self) -> int:
        return max(1, self.tickets // 40)

    @property
    def active_users(self) -> int:
        return max(1, self.users * 5 // 6)

    def scaled(self, share: float) -> LargeCustomer:
        """The same customer with every count times ``share`` (at least 1 each)."""
        counts = {f.name: max(1, round(getattr(self, f.name) * share)) for f in fields(self)
                  if f.type in (int, "int") and f.name not in ("mrr", "seed")}
        return replace(self, **counts)

    def key(self) -> str:
        """The sizes as one string (the warehouse's meta records which large customer it holds)."""
        return ",".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))


def build_large(b: Builder, spec: LargeCustomer) -> None:
    """Write the large customer to every source, from its own random stream."""
    outer, b.rng = b.rng, random.Random(spec.seed)
    try:
        people = _people(b.rng, spec)
        cid = _crm(b, spec, people)
        _billing(b, spec, cid)
        _product(b, spec, people)
        _support(b, spec, people)
        _comms(b, spec, people)
    finally:
        b.rng = outer


def _people(rng: random.Random, spec: LargeCustomer) -> list[tuple[str, str, str]]:
    out, seen = [], set()
    for i in range(max(spec.contacts, spec.users)):
        first, last = FIRST_NAMES[i % len(FIRST_NAMES)], rng.choice(LAST_NAMES)
        email = f"{first}.{last}@{spec.domain}".lower()
        if email in seen:
            email = f"{first}.{last}{i}@{spec.domain}".lower()
        seen.add(email)
        out.append((first, last, email))
    return out


def _ago(b: Builder, days: float, until: float = 0.0) -> datetime:
    """A time between ``days`` and ``until`` days before the as-of date."""
    return b.at(AS_OF - timedelta(days=days), AS_OF - timedelta(days=until))


def _crm(b: Builder, spec: LargeCustomer, people: list[tuple[str, str, str]]) -> int:
    rng = b.rng
    cid = b.company(name=spec.name, domain=spec.domain, owner=OWNER, industry="Manufacturing",
                    employees=12_000, revenue=2_400_000_000, plan=spec.plan, mrr=spec.mrr,
                    contract_value=spec.mrr * 12, renewal=(AS_OF + timedelta(days=258)).date(),
                    segment="enterprise", region="EU", country="Germany")
    for i, (first, last, email) in enumerate(people[:spec.contacts]):
        title, role = ("Head of Data", "CHAMPION") if i == 0 else TITLES[i % len(TITLES)]
        when = AS_OF - timedelta(days=1) if i == 0 else _ago(b, 120, 2)
        b.contact(cid, first, last, email, title, role, when, phone=f"+49-30-555-{i:04d}")
    for i in range(spec.deals):
        created = AS_OF - timedelta(days=30 + (spec.deals - i) * 1000 // spec.deals)
        is_open = i >= spec.deals - max(1, spec.deals // 6)
        stage = rng.choice(("discovery", "proposal", "contract_sent")) if is_open else \
            rng.choice(("closed_won", "closed_won", "closed_lost"))
        close = (AS_OF + timedelta(days=rng.randrange(10, 150)) if is_open
                 else created + timedelta(days=rng.randrange(20, 90))).date()
        b.deal(cid, f"{spec.name} {rng.choice(TOPICS)} ({i + 1})", stage, spec.mrr * rng.choice((2, 3, 6)), close,
               created, "Budget moved to next year" if stage == "closed_lost" else None,
               "Follow up on the order form" if is_open else None)
    for i in range(spec.activities):
        kind = ("EMAIL", "CALL", "MEETING", "NOTE")[i % 4]
        first = people[rng.randrange(spec.contacts)][0]
        topic = rng.choice(TOPICS)
        text = {"EMAIL": f"Email to {first} about {topic}", "CALL": f"Call with {first} about {topic}",
                "MEETING": f"Meeting on {topic}", "NOTE": f"{first} raised {topic}; follow up next week"}[kind]
        b.engagement(cid, kind, _ago(b, 730), OWNER, text,
                     body=f"Discussed {topic} with {first}. Next step agreed." if kind == "CALL" else None)
    return cid


def _billing(b: Builder, spec: LargeCustomer, cid: int) -> None:
    rng = b.rng
    last = AS_OF.replace(day=1, hour=0, minute=0, second=0)
    first = add_months(last, -(spec.invoices - 1))
    cus = b.st_customer(spec.name, f"ap@{spec.domain}", cid, first)
    pm = b.st_card(cus, "amex", f"{rng.randrange(10_000):04d}", first, (9, 2028))
    sub = b.st_subscription(cus, "active", spec.plan, spec.mrr * 100, "month", first, last, add_months(last, 1))
    b.st_paid(cus, sub, pm, spec.mrr * 100, first, spec.invoices)


def _product(b: Builder, spec: LargeCustomer, people: list[tuple[str, str, str]]) -> None:
    users = b.sg_group(spec.name, spec.domain, [(f"{f} {la}", e) for f, la, e in people[:spec.users]],
                       AS_OF - timedelta(days=900))
    active = users[:spec.active_users]
    weekly = max(1, len(active) * 9 // 10)
    b.usage(users, active, [(W3[0], W3[1], len(active)), (W2[0], W2[1], weekly), (W1[0], W1[1], weekly)],
            pin=AS_OF - timedelta(hours=3))


def _support(b: Builder, spec: LargeCustomer, people: list[tuple[str, str, str]]) -> None:
    rng = b.rng
    org = b.zd_org(spec.name, spec.domain, AS_OF - timedelta(days=1200))
    reqs = [b.zd_user(org, e, f"{f} {la}") for f, la, e in people[:min(8, spec.contacts)]]
    solved = spec.tickets - spec.open_tickets
    for i in range(spec.tickets):
        issue = ISSUES[i % len(ISSUES)]
        subject, body = ISSUE_TEXT[issue]
        detail = f" This affects the {rng.choice(TOPICS).removeprefix('the ')} work at plant {rng.randrange(1, 40)}."
        if i < solved:  # solved over three years, oldest first
            created = AS_OF - timedelta(days=5 + (solved - i) * 1090 / solved)
            b.ticket(org, reqs[i % len(reqs)], subject, body + detail, "solved", created, issue,
                     hours=round(rng.uniform(0.5, 60), 1), csat=rng.choice((3, 4, 4, 5, 5)) if i % 3 == 0 else None,
                     priority=rng.choice(("low", "normal", "normal", "high")))
        else:
            b.ticket(org, reqs[i % len(reqs)], subject, body + detail, rng.choice(("new", "open", "pending")),
                     _ago(b, 20), issue, priority=rng.choice(("normal", "high", "urgent")))


def _comms(b: Builder, spec: LargeCustomer, people: list[tuple[str, str, str]]) -> None:
    rng = b.rng
    owner, csm = vendor_email(OWNER), vendor_email("peter.bishop")
    contacts = [e for _, _, e in people[:spec.contacts]]
    for _ in range(spec.email_threads):
        topic, contact = rng.choice(TOPICS), rng.choice(contacts)
        start = _ago(b, 180, 1)
        due = (start + timedelta(days=rng.randrange(3, 15))).date().isoformat()
        messages = [(start, f"{topic.capitalize()}", owner, [contact], [csm],
                     f"Hi, following up on {topic}. We will send the updated plan by {due}. "
                     "Let me know if anything is blocking your team.")]
        if rng.random() < 0.8:
            messages.append((start + timedelta(hours=rng.randrange(2, 20)), f"Re: {topic.capitalize()}", contact,
                             [owner], [], f"Thanks. Can you confirm the timeline for {topic}? "
                                          "Our plant managers are asking."))
        b.email_thread(messages)
    for _ in range(spec.calls):
        topic = rng.choice(TOPICS)
        moments = [(k, t.format(topic=topic)) for k, t in rng.sample(HIGHLIGHTS, rng.randint(1, 3))]
        b.call(f"{spec.name}: {topic}", _ago(b, 365, 1), rng.choice((30, 45, 60)), round(rng.uniform(0.3, 0.7), 2),
               [owner, *rng.sample(contacts, min(2, len(contacts)))], moments)
    for _ in range(spec.meetings):
        start = b.at(AS_OF - timedelta(days=150), AS_OF + timedelta(days=30)).replace(minute=0, second=0)
        topic = rng.choice(TOPICS)
        b.meeting(f"{spec.name} — {topic}", start, rng.choice((30, 45, 60)), owner,
                  rng.sample(contacts, min(3, len(contacts))), f"Agenda: {topic}." if rng.random() < 0.5 else None,
                  start - timedelta(days=7))
    for _ in range(spec.chat_mentions):
        b.chat(rng.choice(CHANNELS), rng.choice((OWNER, "peter.bishop", "ava.patel")),
               f"{spec.name} asked about {rng.choice(TOPICS)} again, can someone pick it up?", _ago(b, 60))
    for i in range(spec.documents):
        b.document(f"{spec.name} — {rng.choice(TOPICS)} ({i + 1})", rng.choice(DOC_KINDS), spec.domain, owner,
                   _ago(b, 730))
    for i in range(spec.news):
        b.news(spec.domain, spec.name, f"{spec.name} {rng.choice(('opens', 'expands', 'automates'))} plant "
               f"{i + 1}", rng.choice(("launch", "other", "funding")), _ago(b, 120))
