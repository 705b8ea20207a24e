"""Which *fields* a question asks for: the field-level layer over the planner's intents.

An intent ("support") names the slices that answer a topic; a field ("csat") names the one
value a specific question wants, the fewest slices that hold it, and the intents it answers
more precisely (asked for together, the field replaces them: "What's the satisfaction score?"
reads ``support.summary`` alone and answers with the score, not the ticket list). Fields
that no connected source can hold (onboarding status, NPS, ...) are *needs*: the answer says
plainly that the data cannot answer and asks the user for it. Questions naming a customer
are read without the name ("Umbrella Health" is not a health question).

Pure rules: no slice is read here; the planner (``agent.offline.planning``) and the answers
(``agent.offline.field_answers``) use them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

HEALTH = ("crm.account", "billing.status", "product.usage", "support.summary")


@dataclass(frozen=True)
class Field:
    """A value a question can ask for."""

    name: str
    patterns: tuple[str, ...]
    slices: tuple[str, ...]
    replaces: tuple[str, ...] = ()
    #: False: only while no commerce source is connected (a shopper's cards are commerce's).
    with_commerce: bool = True


FIELDS: tuple[Field, ...] = (
    Field("health_check", (r"\bworr(y|ied)\b", r"\bconcern(ed|ing)?\b", r"\blikely to (churn|leave|cancel)\b",
                           r"\bin trouble\b"), HEALTH, ("health", "account", "support", "billing", "usage")),
    Field("phones", (r"\bphones?\b", r"\bphone numbers?\b", r"\bnumbers? to call\b", r"\bhow (do|can|should) i "
                     r"(reach|contact|call)\b", r"\breach (them|him|her)\b"), ("crm.contacts",), ("contacts",)),
    Field("active_users", (r"\bseats?\b", r"\bactive (users?|seats?|people|accounts?)\b", r"\bhow many (users|people)\b",
                           r"\blicen[cs]es? (in use|used)\b"), ("product.usage",), ("usage",)),
    Field("last_login", (r"\blast (log ?in|logged|sign(ed)? ?in)\b", r"\blog(ged)? ?in last\b",
                         r"\bwhen did .* (log ?in|sign ?in)\b"), ("product.usage",), ("usage",)),
    Field("next_meeting", (r"\bnext (meet|meeting|call|sync|qbr|session)\b", r"\bmeet(ing)? (next|again)\b",
                           r"\bwhen do we (next )?(meet|see)\b", r"\b(meeting|call) (booked|scheduled|planned)\b",
                           r"\b(booked|scheduled|planned) (a )?(meeting|call)\b", r"\bupcoming meetings?\b"),
          ("calendar.meetings",), ("meetings",)),
    Field("last_touch", (r"\blast (discuss|talk|spoke|spoken|speak|touch|interaction|contact|conversation|exchange)",
                         r"\b(discuss|talk|spoke|speak|chat)(ed)? (with them |to them |about )?last\b",
                         r"\bmost recent (conversation|interaction|touch|contact|exchange)\b",
                         r"\blast (time )?(we|i) (talked|spoke|discussed|met|heard|emailed)\b",
                         r"\bwhen did we last\b"), ("crm.activities", "email.threads"), ("activity", "email")),
    Field("csat", (r"\bcsat\b", r"\bsatisf(ied|action)\b", r"\bhappy with (our )?support\b"),
          ("support.summary",), ("support",)),
    Field("resolution_time", (r"\bresolution time\b", r"\btime to resol", r"\bhow (fast|quickly|long) .*resolv",
                              r"\bresolve (their )?tickets\b"), ("support.summary",), ("support",)),
    Field("open_ticket_count", (r"\bhow many (open |active |unresolved )?tickets\b",
                                r"\bnumber of (open )?tickets\b", r"\bticket count\b"),
          ("support.summary",), ("support",)),
    Field("open_invoice", (r"\b(open|unpaid|outstanding|overdue) invoices?\b", r"\binvoices? (open|unpaid|outstanding)\b",
                           r"\bhow much (do|does) (they|it) owe\b", r"\bamount (due|owed|outstanding)\b"),
          ("billing.invoices",), ("billing",)),
    Field("last_payment", (r"\blast (successful )?payment\b", r"\blast (paid|payment date)\b",
                           r"\bwhen did (they|it) (last )?pay\b"), ("billing.status",), ("billing",)),
    Field("payment_method", (r"\bpayment method\b", r"\bcard on file\b", r"\b(which|what) card\b"),
          ("billing.status",), ("billing",), with_commerce=False),
    Field("trial_end", (r"\btrial (end|run out|expire|finish|over)", r"\bwhen does .* trial\b"),
          ("billing.status",), ("billing",)),
    Field("renewal_date", (r"\brenewal (date|day)\b", r"\bwhen (is|does) .*renew", r"\brenew(s|al)? (on|when)\b"),
          ("crm.account",), ("account",)),
    Field("churn_date", (r"\bwhen did .*(churn|cancel|leave)\b", r"\bchurn(ed)? (date|on|since)\b"),
          ("crm.account",), ("health", "account")),
    Field("mrr_agreement", (r"\b(agree|disagree|match|differ|mismatch|conflict|discrepanc)",),
          ("crm.account", "billing.status"), ("account", "billing")),
    Field("region", (r"\bregion\b", r"\bwhere (are|is) (they|it|\w+) (based|located)\b", r"\bcountry\b",
                     r"\bheadquarter"), ("crm.account",), ("account",)),
)
FIELDS_BY_NAME = {f.name: f for f in FIELDS}


@dataclass(frozen=True)
class Need:
    """Context a question can ask for that no source of the catalogue holds: it can only come from the user."""

    name: str
    label: str
    patterns: tuple[str, ...]


NEEDS: tuple[Need, ...] = (
    Need("onboarding", "onboarding status", (r"\bonboard", r"\bimplementation\b", r"\bgo.?live\b", r"\bkick.?off\b")),
    Need("nps", "NPS score", (r"\bnps\b", r"\bnet promoter\b")),
    Need("budget", "budget", (r"\bbudget",)),
    Need("decision_process", "decision process", (r"\bdecision process\b", r"\bbuying process\b",
                                                  r"\bprocurement process\b")),
)

_COMPILED = [(f, [re.compile(p, re.IGNORECASE) for p in f.patterns]) for f in FIELDS]
_NEEDS = [(n, [re.compile(p, re.IGNORECASE) for p in n.patterns]) for n in NEEDS]
#: A run of two or more capitalised words after the first word: a company or a person ("Umbrella Health").
_NAME_RUN = re.compile(r"(?<=\S )(?:[A-Z][\w'’.&-]*\s+)+[A-Z][\w'’.&-]*")
_SPECIFIC = re.compile(r"^\s*(how (many|much|long|often|\w+ (is|are|was|were|do|does|did))|when|which|who|whom|whose|where|what (is|are|was|were)\b|"
                       r"what'?s the|is|are|was|were|does|do|did|has|have|can)\b", re.IGNORECASE)


def without_names(question: str) -> str:
    """The question with multi-word proper names taken out, so a name is never read as a topic."""
    return _NAME_RUN.sub(" ", question)


def fields_of(question: str, commerce: bool = False) -> list[str]:
    """The fields a question asks for, in FIELDS order; empty when it asks for none."""
    q = without_names(question)
    return [f.name for f, pats in _COMPILED if (commerce <= f.with_commerce) and any(p.search(q) for p in pats)]


def needs_of(question: str) -> list[str]:
    """The needs (context no source holds) a question asks about."""
    q = without_names(question)
    return [n.name for n, pats in _NEEDS if any(p.search(q) for p in pats)]


def is_specific(question: str) -> bool:
    """A question that asks for something in particular (how many, when, who, is ...), not for an overview."""
    return bool(_SPECIFIC.search(question))


def field_slices(fields: list[str]) -> set[str]:
    """The slices the fields are read from."""
    return {s for f in fields for s in FIELDS_BY_NAME[f].slices}


def replaced_intents(fields: list[str]) -> set[str]:
    """The intents the fields answer more precisely."""
    return {i for f in fields for i in FIELDS_BY_NAME[f].replaces}
