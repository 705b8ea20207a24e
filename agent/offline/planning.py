"""Which slices each step of a workflow needs.

The assistant's rule-based planner maps a question to *intents* (billing, usage,
support, …) and each intent to the few slices that answer it, so a billing question
never loads call transcripts. Triage and review are fixed sequences of steps, each
naming its slices. The offline model plans with these rules; a real model plans with
tool calls, and the same step records come out either way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tools.slices import SLICE_NAMES


@dataclass(frozen=True)
class Intent:
    name: str
    patterns: tuple[str, ...]
    slices: tuple[str, ...]


OVERVIEW_SLICES = ("crm.account", "crm.opportunities", "billing.status", "product.usage", "support.summary",
                   "email.threads", "calendar.meetings", "research.news")
HEALTH_SLICES = ("crm.account", "billing.status", "product.usage", "support.summary")

# Order matters only for the order of sections in an answer.
INTENTS: tuple[Intent, ...] = (
    Intent("overview", (r"what'?s (going on|happening|new|up)", r"\boverview\b", r"\bsummar", r"tell me about",
                        r"\bbrief(ing)?\b", r"\bupdate on\b", r"how are (they|things) (doing|going)", r"\b360\b",
                        r"catch me up", r"\bstatus of\b", r"\bfull picture\b"), OVERVIEW_SLICES),
    Intent("health", (r"\bhealth", r"\bat risk\b", r"\brisks?\b", r"\bchurn"), HEALTH_SLICES),
    Intent("account", (r"\bplan\b", r"\bmrr\b", r"\btier\b", r"renew", r"\bcontract", r"\bowner\b", r"\bsegment\b",
                       r"\bindustry\b", r"\brevenue\b", r"account manager", r"who owns"), ("crm.account",)),
    Intent("billing", (r"\bbill", r"\binvoice", r"\bpay", r"\bcharge", r"\bcard\b", r"past.?due", r"\bbalance\b",
                       r"\bsubscription", r"\brefund", r"\btrial\b", r"\bdelinquen", r"\bowe"),
           ("billing.status", "billing.invoices")),
    Intent("usage", (r"\busage\b", r"\busing\b", r"\bused\b", r"active users?", r"\blog ?ins?\b", r"\blogged\b",
                     r"\badoption\b", r"\bengag", r"\bfeatures?\b"), ("product.usage",)),
    Intent("support", (r"\bsupport\b", r"\btickets?\b", r"\bcsat\b", r"satisf", r"\bissues?\b", r"\bcomplain",
                       r"\bescalat", r"\bincidents?\b", r"\bbugs?\b"), ("support.summary", "support.tickets")),
    Intent("contacts", (r"\bcontacts?\b", r"who should i", r"\bchampion", r"\bsponsor", r"stakeholder",
                        r"decision.?maker", r"who (is|are) (our|the|their) "), ("crm.contacts",)),
    Intent("deals", (r"\bdeals?\b", r"\bopportunit", r"\bpipeline\b", r"\bexpansion\b", r"\bupsell"),
           ("crm.opportunities",)),
    Intent("activity", (r"\bactivit", r"last (touch|interaction|contact)"), ("crm.activities",)),
    Intent("email", (r"\be-?mails?\b", r"\bthreads?\b", r"\bcommit(ted|ments?)\b", r"\bpromised?\b"),
           ("email.threads",)),
    Intent("meetings", (r"\bmeetings?\b", r"\bcalendar\b", r"\bqbr\b", r"\bscheduled\b", r"\bupcoming\b"),
           ("calendar.meetings",)),
    Intent("calls", (r"\bcalls?\b", r"\bgong\b", r"\bcompetitors?\b", r"\bobjections?\b", r"\brecordings?\b"),
           ("calls.highlights",)),
    Intent("chat", (r"\bslack\b", r"\bchat\b", r"\binternal(ly)?\b", r"\bcolleagues?\b"), ("chat.mentions",)),
    Intent("documents", (r"\bdocuments?\b", r"\bdocs?\b", r"\bproposals?\b", r"\bsows?\b", r"\bdecks?\b"),
           ("docs.documents",)),
    Intent("news", (r"\bnews\b", r"\bpress\b", r"\bannounce", r"\bfunding\b", r"\bleadership\b",
                    r"\b(ceo|cto|cfo)\b", r"\bacquisition"), ("research.news",)),
)
INTENTS_BY_NAME = {i.name: i for i in INTENTS}
_COMPILED = [(i, [re.compile(p, re.IGNORECASE) for p in i.patterns]) for i in INTENTS]


def intents_of(question: str) -> list[str]:
    """The intents a question asks about, in INTENTS order; empty when none matches."""
    return [i.name for i, pats in _COMPILED if any(p.search(question) for p in pats)]


def slices_for(intents: list[str]) -> list[str]:
    """The union of the intents' slices, in source priority order."""
    wanted = {s for name in intents for s in INTENTS_BY_NAME[name].slices}
    return [n for n in SLICE_NAMES if n in wanted]


def intents_for_slices(slices: list[str]) -> list[str]:
    """The intents whose slices were fetched (to answer a follow-up that named nothing)."""
    have = set(slices)
    if set(OVERVIEW_SLICES) <= have:
        return ["overview"]
    if set(HEALTH_SLICES) <= have and have <= set(HEALTH_SLICES):
        return ["health"]
    return [i.name for i in INTENTS if i.name not in ("overview", "health") and have & set(i.slices)]


def plan_question(question: str, previous_slices: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(intents, slices) for a question. A follow-up that names nothing ("and then?") keeps the
    previous turn's slices; a first question that names nothing gets the overview."""
    intents = intents_of(question)
    if intents:
        return intents, slices_for(intents)
    if previous_slices:
        return intents_for_slices(previous_slices), [n for n in SLICE_NAMES if n in set(previous_slices)]
    return ["overview"], slices_for(["overview"])


# Fixed workflows: (step name, slices). Each step's slices are fetched in parallel.
