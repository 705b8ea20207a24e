"""The benchmark's large customer: its size for a book, the questions asked of it, and what
each answer must show (the customer is written by ``tools.embedded.large``).

The questions are the assistant eval's question kinds (``evals/datasets/assistant.yaml``:
billing, usage, support, overview) plus a contacts question, asked of the large customer by
its domain. The expected facts follow from the generator's sizes, so they hold at any size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.offline.answers import usd
from agent.offline.planning import plan_question
from agent.prompting import safe_json
from evals import evaluators as ev
from evals.runner import load
from tools.context.view import model_slice
from tools.embedded.large import LargeCustomer
from tools.slices import Slice

#: Books smaller than this get a large customer a quarter the size (a test-sized bench).
FULL_SIZE_FROM = 1_000
CONTACTS_QUESTION = "Who are their contacts?"


@dataclass(frozen=True)
class LargeQuestion:
    kind: str
    question: str
    facts: tuple[str, ...]


def large_customer_for(customers: int) -> LargeCustomer:
    """The large customer the benchmark writes beside ``customers`` background customers."""
    spec = LargeCustomer()
    return spec if customers >= FULL_SIZE_FROM else spec.scaled(0.25)


def describe(spec: LargeCustomer) -> str:
    """Its sizes in words, for the table."""
    return (f"{spec.tickets:,} tickets, {spec.email_threads:,} email threads, {spec.calls:,} calls, "
            f"{spec.activities:,} CRM activities, {spec.meetings:,} meetings, {spec.chat_mentions:,} chat mentions, "
            f"{spec.invoices:,} invoices, {spec.contacts:,} contacts")


def large_questions(spec: LargeCustomer) -> list[LargeQuestion]:
    """One question of each kind, with the facts its answer must state."""
    kinds: dict[str, str] = {**load("assistant")["questions"], "contacts": CONTACTS_QUESTION}
    facts = {
        "billing": ("current", f"billed {usd(spec.mrr)}/month"),
        "usage": (f"{spec.active_users} active users",),
        "support": (f"{spec.tickets} tickets in total, {spec.open_tickets} open",),
        "overview": (spec.name, spec.plan, f"MRR {usd(spec.mrr)}"),
        "contacts": (f"@{spec.domain}", "Head of Data"),
    }
    return [LargeQuestion(kind, question, facts.get(kind, ())) for kind, question in kinds.items()]


def answer_problems(res: dict[str, Any], q: LargeQuestion) -> list[str]:
    """What is wrong with an answer of the large customer (empty: nothing): an error, a slice
    read but not cited, a slice the question needs not read, a gap, an expected fact missing."""
    if res.get("error"):
        return [f"{q.kind}: error {res['error']}"]
    problems = []
    cited = {c["slice"] for c in res.get("citations") or []}
    if uncited := sorted(set(res["slices_used"]) - cited):
        problems.append(f"{q.kind}: read but not cited: {', '.join(uncited)}")
    _, wanted = plan_question(q.question)
    if missing := sorted(set(wanted) - set(res["slices_used"])):
        problems.append(f"{q.kind}: not read: {', '.join(missing)}")
    if res.get("gaps"):
        problems.append(f"{q.kind}: gaps " + ", ".join(f"{g['slice']}:{g['kind']}" for g in res["gaps"]))
    facts = ev.fact_accuracy(res["answer"], q.facts)
    if facts["score"] < 1.0:
        problems.append(f"{q.kind}: {facts['comment']}")
    return problems


def dump_by_slice(slices: dict[str, Slice]) -> dict[str, int]:
    """About how many tokens each slice takes in the full dump (4 characters a token), largest first."""
    sizes = {name: round(len(safe_json(model_slice(s))) / 4) for name, s in slices.items()}
    return dict(sorted(sizes.items(), key=lambda kv: -kv[1]))
