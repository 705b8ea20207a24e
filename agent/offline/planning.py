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

from agent.offline.fields import (
    field_slices,
    fields_of,
    is_specific,
    needs_of,
    replaced_intents,
    without_names,
)
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
    # A store's customer (commerce): asked for only while a commerce source is connected.
    Intent("orders", (r"\borders?\b", r"\bordered\b", r"\bpurchas", r"\bbought\b", r"\bbuy", r"\bshipp",
                      r"\bshipments?\b", r"\bdeliver", r"\bfulfil", r"\bparcels?\b", r"\bitems?\b",
                      r"\bcancel+ed\b", r"\bspent\b", r"\bpaid\b"), ("commerce.orders",)),
    Intent("refunds", (r"\brefund", r"\breturn(s|ed)?\b", r"\bmoney back\b"), ("commerce.refunds",)),
    Intent("cards", (r"\bcards?\b", r"\bpayment methods?\b", r"\bon file\b", r"\bwallet\b", r"\bexpir",
                     r"\b(visa|mastercard|amex)\b"), ("commerce.payment_methods",)),
    Intent("addresses", (r"\baddress", r"\bship(ping)? to\b", r"\bpost ?codes?\b", r"\bzip\b",
                         r"\bwhere (do|does) (she|he|they) live\b"), ("commerce.addresses",)),
)
COMMERCE_INTENTS = frozenset({"orders", "refunds", "cards", "addresses"})
#: Words only a subscription's billing speaks: with them, a commerce question is a billing one too.
_BILLING_ONLY = re.compile(r"\bbill|\binvoice|\bsubscription|past.?due|\bbalance\b|\btrial\b|\bdelinquen|\bowe"
                           r"|\bcharge", re.IGNORECASE)
INTENTS_BY_NAME = {i.name: i for i in INTENTS}
_COMPILED = [(i, [re.compile(p, re.IGNORECASE) for p in i.patterns]) for i in INTENTS]


def intents_of(question: str, commerce: bool = False) -> list[str]:
    """The intents a question asks about, in INTENTS order; empty when none matches.

    ``commerce``: a commerce source is connected. Without one, orders, refunds, cards and
    addresses are not asked for (cards and refunds stay billing questions); with one, a
    question about a shopper's cards or refunds is not also a subscription billing question
    unless it uses billing's own words (invoice, subscription, past due, ...).
    """
    found = [i.name for i, pats in _COMPILED if any(p.search(question) for p in pats)]
    if not commerce:
        return [n for n in found if n not in COMMERCE_INTENTS]
    if "billing" in found and COMMERCE_INTENTS & set(found) and not _BILLING_ONLY.search(question):
        found.remove("billing")
    return found


def slices_for(intents: list[str], commerce: bool = False) -> list[str]:
    """The union of the intents' slices, in source priority order (the overview of a store's
    customer includes their orders)."""
    wanted = {s for name in intents for s in INTENTS_BY_NAME[name].slices}
    if commerce and "overview" in intents:
        wanted.add("commerce.orders")
    return [n for n in SLICE_NAMES if n in wanted]


def intents_for_slices(slices: list[str]) -> list[str]:
    """The intents whose slices were fetched (to answer a follow-up that named nothing)."""
    have = set(slices) - ({"commerce.orders"} if set(OVERVIEW_SLICES) <= set(slices) else set())
    if set(OVERVIEW_SLICES) <= have:
        return ["overview"]
    if set(HEALTH_SLICES) <= have and have <= set(HEALTH_SLICES):
        return ["health"]
    return [i.name for i in INTENTS if i.name not in ("overview", "health") and have & set(i.slices)]


def plan_question(question: str, previous_slices: list[str] | None = None,
                  commerce: bool = False) -> tuple[list[str], list[str]]:
    """(intents, slices) for a question. A follow-up that names nothing ("and then?") keeps the
    previous turn's slices; a first question that names nothing gets the overview.
    ``commerce``: a commerce source is connected (see :func:`intents_of`)."""
    intents = intents_of(question, commerce)
    if intents:
        return intents, slices_for(intents, commerce)
    if previous_slices:
        return intents_for_slices(previous_slices), [n for n in SLICE_NAMES if n in set(previous_slices)]
    return ["overview"], slices_for(["overview"], commerce)


@dataclass(frozen=True)
class QuestionPlan:
    """What a question asks for: topics (intents), fields, needs no source holds, and the slices to read."""

    intents: list[str]
    fields: list[str]
    needs: list[str]
    slices: list[str]


def plan_fields(question: str, previous_slices: list[str] | None = None, commerce: bool = False) -> QuestionPlan:
    """The field-level plan (agent.offline.fields): a field replaces the intents it answers more
    precisely; a specific question that names nothing known reads nothing and says so (never the
    overview); a follow-up that names nothing keeps the previous turn's slices."""
    fields, needs = fields_of(question, commerce), needs_of(question)
    intents = [i for i in intents_of(without_names(question), commerce) if i not in replaced_intents(fields)]
    if fields or intents:
        wanted = set(slices_for(intents, commerce)) | field_slices(fields)
        return QuestionPlan(intents, fields, needs, [n for n in SLICE_NAMES if n in wanted])
    if needs:
        return QuestionPlan([], [], needs, [])
    if previous_slices:
        return QuestionPlan(intents_for_slices(previous_slices), [], [],
                            [n for n in SLICE_NAMES if n in set(previous_slices)])
    if is_specific(question):
        return QuestionPlan([], [], [], [])
    return QuestionPlan(["overview"], [], [], slices_for(["overview"], commerce))


# Fixed workflows: (step name, slices). Each step's slices are fetched in parallel.
