"""Which unconnected sources would add most for a workflow: a declared table, ranked.

A missing-context section does more than name gaps: it says which connections would help
*this* workflow most, so the user knows what to connect first (or what to tell us instead).
The value of each source per workflow (assistant, triage, review) is declared here, 1–5, with
what it would add; ``rank_unconnected`` orders the sources that are not connected by it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Workflow = Literal["assistant", "triage", "review"]
WORKFLOWS: tuple[Workflow, ...] = ("assistant", "triage", "review")

#: workflow → source → (value 1–5, what connecting it would add)
SOURCE_VALUE: dict[Workflow, dict[str, tuple[int, str]]] = {
    "assistant": {
        "crm": (5, "the account, owner, renewal, contacts and deals"),
        "billing": (5, "subscription status, payments, failed charges and invoices"),
        "support": (4, "open tickets, CSAT and repeat issues"),
        "product": (4, "active users, logins and the usage trend"),
        "email": (3, "recent threads, open questions and commitments"),
        "calendar": (3, "upcoming and past meetings"),
        "calls": (3, "call highlights: competitors, objections, next steps"),
        "research": (2, "company news: leadership, funding, acquisitions"),
        "documents": (2, "account and success plans, proposals"),
        "chat": (2, "what colleagues said about the account internally"),
        "commerce": (1, "a shopper's orders, refunds, cards and addresses"),
    },
    "triage": {
        "support": (5, "the ticket's history, repeat issues and open tickets"),
        "billing": (5, "payment status and failed charges (a declined card on a past-due account is P1)"),
        "crm": (4, "tier and owner, which set priority and the team"),
        "product": (3, "whether the customer is active, to weigh impact"),
        "commerce": (3, "the shopper's orders and refunds for order questions"),
        "email": (2, "threads about the same issue"),
        "chat": (1, "internal discussion of the issue"),
        "calendar": (1, "meetings coming up with the customer"),
        "calls": (1, "what was said on recent calls"),
        "documents": (1, "shared documents"),
        "research": (1, "company news"),
    },
    "review": {
        "crm": (5, "renewal, owner, contacts and the open deals"),
        "billing": (5, "revenue, payment risk and invoices"),
        "product": (5, "adoption and the usage trend"),
        "support": (4, "support load, CSAT and repeat issues"),
        "calls": (4, "competitor mentions and what customers said about the renewal"),
        "email": (3, "commitments and open questions"),
        "calendar": (3, "the next meeting to prepare for"),
        "documents": (3, "the objectives of account and success plans"),
        "research": (3, "company news that changes the relationship"),
        "chat": (2, "internal notes about the account"),
        "commerce": (1, "a shopper's orders"),
    },
}


@dataclass(frozen=True)
class MissingSource:
    """An unconnected source and what it would add for the workflow."""

    source: str
    value: int
    adds: str


def rank_unconnected(workflow: Workflow, unconnected: Iterable[str]) -> list[MissingSource]:
    """The unconnected sources, most valuable for ``workflow`` first (ties in catalogue order)."""
    table = SOURCE_VALUE[workflow]
    names = [s for s in table if s in set(unconnected)]
    return sorted((MissingSource(s, *table[s]) for s in names), key=lambda m: -m.value)


def missing_lines(workflow: Workflow, unconnected: Iterable[str]) -> list[str]:
    """Markdown lines for a missing-context section: the ranked connections, each with what it adds."""
    ranked = rank_unconnected(workflow, unconnected)
    return [f"- Connect **{m.source}** (value {m.value}/5 for {workflow}): {m.adds}" for m in ranked]
