"""Refreshing long-term memory: full, incremental (source watermarks) and event-driven.

* :func:`refresh_full` reads every slice of every active customer (the book of
  ``tools.book.list_accounts``: churned accounts are left out) live and writes them to
  long-term memory, a chunk of customers at a time: each chunk is read set-based, a few
  statements per source (``tools.sources.batch.SetLookup``), each slice built by the
  readers' own code, and what a bulk read cannot answer is read one customer at a time
  through ``read_slices`` (guard, faults, provenance); large books are spread over worker processes (``tools.refresh.runner``).
* :func:`refresh_incremental` refreshes only the customers whose source rows changed
  since the last run: per-table watermarks and change detection pushed down to the
  source (``tools.refresh.changes``), the identity index maintained from the changed
  rows (``tools.refresh.index``: an MRR change never rebuilds it), and only the slices
  fed by the changed tables re-read, set-based. A source without a watermark (first
  run, or its URL / mapping changed) is refreshed in full.
* :func:`refresh_customer` / :func:`refresh_event`: one customer's slices (those an
  event invalidates, :data:`EVENTS`) read live and written at once.

Every refresh keeps the book table (``tools.booktable``) in step: each chunk, once written,
materialises its customers' book rows from the slices it just wrote (``tools.refresh.runner``).

A refresh never overwrites a good snapshot with a failure: a read that fails leaves
the last snapshot in memory (reported in ``failed``); a read that finds no record
(``not_found``) removes the snapshot, so memory matches the source.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tools.access.principal import Principal
from tools.context.assembly import expand_slices
from tools.context.scope import default_guard
from tools.guard import SourceGuard, summarize
from tools.identity import IdentityIndex
from tools.mapping.conversions import MappingError
from tools.memory import ContextMemory
from tools.refresh.changes import (  # noqa: F401 - WATCHES, watermarks, ...: public here
    CHANGE_SCAN_TIMEOUT_S,
    WATCHES,
    Via,
    Watch,
    _billing,
    _capture,
    _commerce,
    _commit,
    _customers_for,
    _detect,
    _load,
    _Mark,
    _marks,
    _support,
    refresh_state,
    refresh_watermark,
    reset_watermarks,
    table_watermarks,
    watermarks,
)
from tools.refresh.index import maintain_index
from tools.refresh.runner import (  # noqa: F401 - REFRESH_USER, refresh_access, RefreshReport: public here
    REFRESH_USER,
    RefreshReport,
    SliceWrite,
    _connected,
    _Tally,
    default_workers,
    refresh_access,
    run_chunks,
)
from tools.settings import Settings
from tools.slices import SLICE_MODELS, SLICE_NAMES
from tools.sources.base import utcnow

Progress = Callable[[str, int, int], None]

EVENTS: dict[str, list[str]] = {
    "ticket.created": _support, "ticket.updated": _support, "ticket.solved": _support,
    "ticket.rated": ["support.summary"],
    "invoice.created": _billing, "invoice.paid": _billing, "invoice.payment_failed": _billing,
    "charge.succeeded": _billing, "charge.failed": _billing, "charge.refunded": _billing,
    "subscription.created": _billing, "subscription.updated": _billing, "subscription.deleted": _billing,
    "payment_method.updated": ["billing.status"],
    "company.updated": ["crm.account"],
    "contact.updated": ["crm.contacts"],
    "deal.created": ["crm.opportunities", "crm.account"], "deal.updated": ["crm.opportunities", "crm.account"],
    "activity.logged": ["crm.activities"],
    "usage.updated": ["product.usage"],
    "email.received": ["email.threads"], "email.sent": ["email.threads"],
    "meeting.scheduled": ["calendar.meetings"], "meeting.updated": ["calendar.meetings"],
    "meeting.canceled": ["calendar.meetings"],
    "chat.mentioned": ["chat.mentions"],
    "document.created": ["docs.documents"], "document.updated": ["docs.documents"],
    "call.recorded": ["calls.highlights"],
    "news.published": ["research.news"],
}
"""Event kind → the slices it invalidates (refreshed at once by :func:`refresh_event`)."""
assert all(n in SLICE_MODELS for names in EVENTS.values() for n in names)


def _workers(settings: Settings, memory: ContextMemory, guard: SourceGuard | None, asked: int | None,
             customers: int) -> int:
    if guard is not None or memory.clock is not utcnow:
        return 1  # worker processes build their own guard on the real clock
    return asked if asked is not None else default_workers(settings, customers)


def _book(settings: Settings) -> Iterator[str]:
    from tools.book import list_accounts  # the active book: churned accounts left out

    return (a.customer_id for a in list_accounts(settings))


def _book_size(settings: Settings) -> int:
    from tools.book import count_accounts

    return count_accounts(settings)


# ------------------------------------------------------------------ the four refreshes
def refresh_full(settings: Settings, memory: ContextMemory, *, concurrency: int = 4,
                 progress: Progress | None = None, customers: Iterable[str] | None = None,
                 guard: SourceGuard | None = None, workers: int | None = None,
                 caller: Principal | None = None) -> RefreshReport:
    """Materialise every slice of every active customer (or of ``customers``, canonical ids).

    A refresh of the whole book also records each source's watermarks (taken before
    reading, so changes made while it runs are picked up by the next incremental
    refresh) — for the sources all of whose reads succeeded. ``workers``: processes to
    spread the chunks over (None: ``default_workers``; they use the settings' guard, so a
    caller's own ``guard`` or memory clock keeps the refresh in this process). ``caller``: the
    principal that asked for it (``run_chunks``; None: the ``refresh`` job).
    """
    started = time.perf_counter()
    report = RefreshReport(mode="full")
    sources = _connected(settings)
    whole_book = customers is None
    if whole_book:
        maintain_index(settings)  # new customers join the book (from the changed rows: tools.refresh.index)
    marks = _capture(settings, sources, guard, report) if whole_book else {}
    names = [n for n in SLICE_NAMES if SLICE_MODELS[n].source in sources]
    chosen = None if customers is None else list(dict.fromkeys(customers))
    ids = _book(settings) if chosen is None else iter(chosen)
    total = _book_size(settings) if chosen is None else len(chosen)
    tally = _Tally(report, keep_customers=not whole_book, keep_writes=False)
    run_chunks(settings, memory, ((cid, names) for cid in ids), tally, concurrency=concurrency, guard=guard,
               progress=progress, stage="full refresh", total=total,
               workers=_workers(settings, memory, guard, workers, total), caller=caller)
    report.changed_by_source = {s: report.customers for s in sources}
    _commit(settings, marks, tally, report)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def refresh_incremental(settings: Settings, memory: ContextMemory, *, concurrency: int = 4,
                        progress: Progress | None = None, guard: SourceGuard | None = None,
                        workers: int | None = None, caller: Principal | None = None,
                        sources: Iterable[str] | None = None) -> RefreshReport:
    """Refresh only the customers whose source rows changed since the last run (``workers``,
    ``caller``: as :func:`refresh_full`; ``sources``: only these, e.g. the refresh worker's one
    source per job — the others keep their watermarks)."""
    started = time.perf_counter()
    user_guard = guard
    report = RefreshReport(mode="incremental")
    guard = guard or default_guard(settings)
    maintain_index(settings)  # a new customer's keys must resolve before its changed rows are mapped
    stored = _load(settings)
    plan: dict[str, set[str]] = defaultdict(set)  # customer id → slices to read
    per_source: dict[str, set[str]] = defaultdict(set)
    new_marks: dict[_Mark, Any] = {}
    full_sources: list[str] = []
    only = None if sources is None else set(sources)
    for source in _connected(settings):
        if only is not None and source not in only:
            continue
        try:
            marks, untracked = _marks(settings, source)
        except MappingError as exc:
            report.failed_sources[source] = summarize(exc)
            continue
        report.untracked.extend(untracked)
        if not marks:
            continue
        old = {m: stored.get((source, m.key)) for m in marks}
        if any(v is None or v[0] != m.config for m, v in old.items()):
            full_sources.append(source)  # first run, or the source's URL / mapping changed
            continue
        found = _detect(settings, source, {m: v[1] for m, v in old.items() if v is not None}, guard, report)
        if found is None:
            continue
        keys_by_slice, newest = found
        for names, keys in keys_by_slice.items():
            for cid in _customers_for(settings, keys):
                plan[cid].update(names)
                per_source[source].add(cid)
        new_marks.update(newest)
    report.full_sources = full_sources
    tally = _Tally(report, keep_customers=True, keep_writes=False)
    if full_sources:
        new_marks.update(_capture(settings, full_sources, guard, report))
        full_names = [n for n in SLICE_NAMES if SLICE_MODELS[n].source in full_sources]
        total = _book_size(settings)
        before = report.customers
        run_chunks(settings, memory, ((cid, full_names) for cid in _book(settings)), tally, concurrency=concurrency,
                   guard=guard, progress=progress, stage="refresh (no watermark yet)", total=total,
                   workers=_workers(settings, memory, user_guard, workers, total), caller=caller)
        for s in full_sources:
            report.changed_by_source[s] = report.customers - before
    ordered = [(cid, [n for n in SLICE_NAMES if n in plan[cid]]) for cid in sorted(plan)]
    run_chunks(settings, memory, ordered, tally, concurrency=concurrency, guard=guard, progress=progress,
               stage="incremental refresh", total=len(ordered),
               workers=_workers(settings, memory, user_guard, workers, len(ordered)), caller=caller)
    for s, cids in per_source.items():
        report.changed_by_source[s] = len(cids)
    report.refreshed = list(dict.fromkeys(report.refreshed))
    report.customers = len(report.refreshed)
    _commit(settings, new_marks, tally, report)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def refresh_customer(settings: Settings, memory: ContextMemory, customer_id: str,
                     slices: list[str] | None = None, *, guard: SourceGuard | None = None,
                     mode: str = "customer", caller: Principal | None = None) -> RefreshReport:
    """Read one customer's slices (all, or ``slices``: names or sources) live and write them
    (as ``caller``, when a principal asked: ``run_chunks``).

    ``customer_id`` is a canonical id or any reference the identity index resolves;
    raises its one-line errors (CustomerNotFound, AmbiguousCustomer, BadReference) and
    UnknownSlice.
    """
    started = time.perf_counter()
    names = expand_slices(slices)
    index = IdentityIndex.for_settings(settings)
    ref = index.get(customer_id) or index.resolve(customer_id)[0]
    sources = _connected(settings)
    names = [n for n in names if SLICE_MODELS[n].source in sources]
    report = RefreshReport(mode=mode)
    tally = _Tally(report, keep_customers=True, keep_writes=True)
    run_chunks(settings, memory, [(ref.customer_id, names)], tally, concurrency=1, guard=guard, progress=None,
               stage=mode, total=1, slice_parallel=True, caller=caller)
    report.changed_by_source = {s: 1 for s in dict.fromkeys(SLICE_MODELS[n].source for n in names)}
    report.watermarks = watermarks(settings)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def event_slices(kind: str) -> list[str]:
    """The slices an event kind invalidates; ValueError (one line) for an unknown kind."""
    try:
        return list(EVENTS[kind])
    except KeyError:
        raise ValueError(f"unknown event kind {kind!r}; known kinds: {', '.join(sorted(EVENTS))}") from None


def refresh_event(settings: Settings, memory: ContextMemory, kind: str, customer_id: str, *,
                  guard: SourceGuard | None = None, caller: Principal | None = None) -> RefreshReport:
    """An event happened for a customer (``ticket.created``, ``invoice.paid``, ...): read the
    slices it invalidates live and write them to memory at once (as ``caller``: ``run_chunks``)."""
    report = refresh_customer(settings, memory, customer_id, event_slices(kind), guard=guard, mode="event",
                              caller=caller)
    report.event = kind
    return report


