"""The access probes through every entry point (issue 15): each principal of access.yaml × each story
customer × each operation the entry point offers (evals/access_drivers.py), judged the same way for
all of them.

- A **visible** customer's answer succeeds, is about that customer, and shows none of what the role
  may not see (forbidden slices' text, masked values: ``access_probes.needles``).
- A **hidden** customer's answer is the answer to a reference that does not exist: the same shape
  (exit code, HTTP status and error code, tool error) and the same text once the reference the caller
  typed is swapped for a placeholder (and volatile ids, times and closest-name suggestions taken out).
- **No answer** of a principal, to any request, shows anything that identifies a customer it may not
  see: name, domains, contact emails, canonical id, source system ids (support organization id,
  billing id, …) or ticket subjects — unless the same string is also part of a customer it sees.
- A hidden customer's request reads nothing of it: at most its row check in the audit log.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from evals.access_drivers import Reply
from evals.access_probes import (
    CUSTOMERS,
    ENTRY,
    EXPECT,
    REFS,
    Baseline,
    Expect,
    Probe,
    _hidden_audit,
    needles,
)
from tools.sources.base import utcnow

MISSING_CUSTOMER = ENTRY["missing_customer"]
MISSING_TICKET = ENTRY["missing_ticket"]
NEUTRAL_TICKET = {"subject": "Question about our account", "description": "Could you look into our account, please?"}

_VOLATILE = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "ID"),
    (re.compile(r"\beval-[0-9a-f]{12}\b"), "ID"),
    (re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?"), "TIME"),
    (re.compile(r"\b\d+(?:\.\d+)? ?(?:ms|s)\b"), "DURATION"),
    # suggestions, up to their own "?" (a question after them stays): checked by the identity needles
    (re.compile(r" Did you mean: [^\n\"?]*\?"), ""),
    (re.compile(r"\"suggestions\":\s*\[[^\]]*\]"), "\"suggestions\": []"),
]


def normal(text: str, ref: str) -> str:
    """``text`` with the reference the caller typed, volatile ids, times and suggestions taken out."""
    text = text.replace(ref, "REF")
    for pattern, repl in _VOLATILE:
        text = pattern.sub(repl, text)
    return text.strip()


def same_as_missing(reply: Reply, ref: str, missing: Reply, missing_ref: str) -> list[str]:
    """How a hidden reference's answer differs from a missing one's (empty: it does not)."""
    if reply.ok:
        return [f"hidden {ref!r} answered like a visible one ({reply.shape})"]
    problems = []
    if reply.shape != missing.shape:
        problems.append(f"LEAK hidden {ref!r} answers {reply.shape!r}, a missing one {missing.shape!r}")
    elif normal(reply.text, ref) != normal(missing.text, missing_ref):
        problems.append(f"LEAK hidden {ref!r} answers {normal(reply.text, ref)[:120]!r}, a missing one "
                        f"{normal(missing.text, missing_ref)[:120]!r}")
    return problems


# ------------------------------------------------------------------ what identifies a customer
def identity(runner: Any, baseline: dict[str, Baseline]) -> dict[str, set[str]]:
    """ref → the strings that identify that story customer (as the admin sees it)."""
    out: dict[str, set[str]] = {}
    for c in CUSTOMERS:
        ref, base = c["ref"], baseline[c["ref"]]
        customer = runner.resolve(ref)[0]
        ids = {base.name, base.customer_id, *customer.domains, *customer.emails}
        for system, value in customer.anchors.items():
            ids.add(f"{system}:{value}")
            if len(str(value)) >= 6:
                ids.add(str(value))
        tickets = (base.slices.get("support.tickets") or {}).get("tickets") or []
        ids.update(t["subject"] for t in tickets if t.get("subject"))
        out[ref] = {s for s in ids if s and len(s) >= 4}
    return out


def hidden_needles(exp: Expect, ids: dict[str, set[str]], baseline: dict[str, Baseline]) -> dict[str, str]:
    """needle → the hidden customer it identifies, for ``exp``'s principal (strings also found in a
    customer it sees are left out: they identify nobody)."""
    seen = json.dumps([[baseline[r].name, baseline[r].slices] for r in exp.visible], ensure_ascii=False)
    return {n: f"hidden {ref}" for ref in REFS if ref not in exp.visible for n in ids[ref] if n not in seen}


def leaks(text: str, banned: dict[str, str], typed: tuple[str, ...] = ()) -> list[str]:
    """``LEAK`` problems for every banned string shown (what the caller typed itself excepted)."""
    for t in typed:
        text = text.replace(t, "")
    return [f"LEAK {why}: {n!r}" for n, why in banned.items() if n in text]


# ------------------------------------------------------------------ the probes
@dataclass
class EntryContext:
    """What the probes of one entry point share."""

    settings: Any
    baseline: dict[str, Baseline]
    ids: dict[str, set[str]]
    tickets: dict[str, str]  # ref → one of its support tickets' id
    interface: str  # as the audit log names the entry point


def _probe(ctx: EntryContext, exp: Expect, case: str, ref: str | None, call: Callable[[], Reply],
           missing: Callable[[], Reply], missing_ref: str, visible: bool, typed: tuple[str, ...],
           named: bool = True) -> Probe:
    since, t0 = utcnow(), time.perf_counter()
    reply = call()
    ms = (time.perf_counter() - t0) * 1000
    banned = hidden_needles(exp, ctx.ids, ctx.baseline)
    problems = leaks(reply.text, banned, typed)
    audit: list[str] = []
    base = ctx.baseline[ref] if ref else None
    if visible:
        if not reply.ok:
            problems.append(f"refused or failed ({reply.shape}): {reply.text.strip()[:160]}")
        elif base is not None:
            if named and base.name not in reply.text:
                problems.append(f"the answer does not name {base.name}")
            problems += [p for p in leaks(reply.text, needles(base, exp)) if p not in problems]
    else:
        problems += same_as_missing(reply, typed[0], missing(), missing_ref)
        if base is not None:
            audit = _hidden_audit(ctx.settings, base, since, ctx.interface, exp)
    return Probe(case, problems, audit, ms)


def entry_point_probes(driver: Any, ctx: EntryContext, principals: Sequence[Expect] | None = None,
                       refs: Sequence[str] = REFS) -> Iterator[Probe]:
    """Every principal (of access.yaml, or ``principals``) × story customer (or ``refs``) × every
    operation ``driver`` offers."""
    threads = {}
    if "continue" in driver.ops:  # conversations the admin starts, about every story customer
        for ref in refs:
            threads[ref] = driver.start_thread("admin:root", ref)
    for exp in EXPECT if principals is None else principals:
        yield from principal_probes(driver, ctx, exp, threads, refs)


def _ticket_for(driver: Any, who: str, ref: str) -> Reply:
    return driver.ticket_for(who, ref, NEUTRAL_TICKET)


def principal_probes(driver: Any, ctx: EntryContext, exp: Expect, threads: dict[str, str],
                     refs: Sequence[str] = REFS) -> Iterator[Probe]:
    """One principal's probes of one entry point; the answers to missing references asked once each."""
    ops, who = driver.ops, exp.label
    cache: dict[str, Reply] = {}

    def missing(key: str, fn: Callable[..., Reply], *args: Any) -> Callable[[], Reply]:
        def answer() -> Reply:
            if key not in cache:
                cache[key] = fn(who, *args)
            return cache[key]
        return answer

    simple: list[tuple[str, Callable[..., Reply]]] = [
        (op, getattr(driver, op)) for op in ("context", "slices", "review", "ask") if op in ops]
    if "ticket_for" in ops:
        simple.append(("ticket_for", partial(_ticket_for, driver)))
    for ref in refs:
        vis, name = ref in exp.visible, f"{driver.name}: {{}} {who} × {ref}"
        for op, fn in simple:
            yield _probe(ctx, exp, name.format(op), ref, partial(fn, who, ref),
                         missing(op, fn, MISSING_CUSTOMER), MISSING_CUSTOMER, vis, (ref,))
        if "event" in ops:
            yield _probe(ctx, exp, name.format("event"), ref, partial(driver.event, who, ref),
                         missing("event", driver.event, MISSING_CUSTOMER), MISSING_CUSTOMER,
                         vis and exp.refresh, (ref,), named=False)
        if "continue" in ops:  # the admin's thread: another owner's on LangGraph's server (404 to all others)
            gone = driver.new_thread_id()
            yield _probe(ctx, exp, name.format("thread"), ref, partial(driver.continue_thread, who, threads[ref]),
                         missing("thread", driver.continue_thread, gone), gone,
                         vis and (driver.name != "langgraph" or who == "admin:root"), (threads[ref],))
        if "ticket" in ops and ref in ctx.tickets:
            tid = ctx.tickets[ref]
            yield _probe(ctx, exp, name.format(f"ticket #{tid}"), ref, partial(driver.ticket, who, tid),
                         missing("ticket", driver.ticket, MISSING_TICKET), MISSING_TICKET,
                         vis and "support.tickets" not in exp.forbidden, (tid,))
    if "open" in ops:
        yield open_queue_probe(driver, ctx, exp)


def open_queue_probe(driver: Any, ctx: EntryContext, exp: Expect) -> Probe:
    """``triage --open``: every listed ticket is triaged for a customer the principal sees, no error rows,
    nothing of a hidden customer (a principal that sees everyone lists the first 10)."""
    t0 = time.perf_counter()
    every = set(exp.visible) == set(REFS)
    reply = driver.open_queue(exp.label, 10 if every else None)
    problems = leaks(reply.text, hidden_needles(exp, ctx.ids, ctx.baseline))
    if "support.tickets" in exp.forbidden:
        if reply.ok:
            problems.append("the open queue was listed to a role that may not read support.tickets")
    elif not reply.ok or not isinstance(reply.data, list):
        problems.append(f"the open queue failed ({reply.shape}): {reply.text.strip()[:160]}")
    else:
        visible_names = {ctx.baseline[r].name for r in exp.visible}
        story_names = {c["name"] for c in CUSTOMERS}
        for row in reply.data:
            shown = (row.get("customer") or {}).get("name")
            if row.get("error"):
                problems.append(f"an error row in the open queue: {str(row.get('error'))[:120]}")
            elif shown in story_names and shown not in visible_names:
                problems.append(f"LEAK hidden customer {shown} in the open queue")
    return Probe(f"{driver.name}: open queue {exp.label}", problems, [], (time.perf_counter() - t0) * 1000)
