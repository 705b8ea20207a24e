"""The one read path: resolve a reference, judge the row filter, read slices, read them back.

Every function takes the request's :class:`~tools.context.scope.ReadScope`. A read first
looks in long-term memory (a fresh snapshot is served without touching the source), else
goes through the guard; whatever comes back is masked for the principal's role and
audited once, and a slice the role may not read is a ``forbidden`` gap without any read.
A customer the principal's row filter hides looks exactly like one that does not exist:
it does not resolve, and its slices are ``not_found`` gaps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context

from sqlalchemy.exc import ArgumentError

from tools.access.gate import Access
from tools.access.policy import hide_shared_records
from tools.context.resolution import CachedIndex
from tools.context.scope import ReadScope, _guards_lock
from tools.context.shared import (
    forget,
    hand_on,
    one_connection,
    row_check_read,
    scope_reader,
    snapshots,
    source_config,
)
from tools.guard import CallOutcome, summarize
from tools.identity import AmbiguousCustomer, CustomerNotFound, normalize_name
from tools.mapping.conversions import MappingError
from tools.memory import CachedSlice, ContextMemory
from tools.slices import SLICE_MODELS, GapKind, Slice, SourceGap
from tools.sources.base import CustomerRef, SliceNotFound, SourceReader
from tools.sources.registry import REMEDIES

GAP_FOR_OUTCOME: dict[str, GapKind] = {"unavailable": "unavailable", "timeout": "timeout", "circuit_open": "unavailable"}

Read = tuple[Slice | SourceGap, CallOutcome | None]
"""A slice or the gap naming why it is missing, and the source call's outcome (None: no call)."""


# ------------------------------------------------------------------ resolving
def resolve(scope: ReadScope, ref: str) -> tuple[CustomerRef, str]:
    """Resolve ``ref`` as the scope's principal may: hidden customers do not exist for it.

    Once per request: a reference resolved before in this scope is answered from it.
    Candidates of an ambiguous reference are narrowed to visible ones (one left: it is
    the answer); a hidden match raises ``CustomerNotFound`` with the suggestions a
    missing name would get, limited to visible customers.

    Raises:
        AmbiguousCustomer, CustomerNotFound, BadReference: as ``IdentityIndex.resolve``.
    """
    if scope.index is None:
        raise ValueError("this read scope has no identity index to resolve references with")
    key = ref.strip()
    if key in scope.resolved:
        return scope.resolved[key]
    access = scope.access
    if access is None or not access.filters_rows:
        found = CachedIndex(scope.index).resolve(ref)
    else:  # answers kept apart per principal: another user's reads never warm a hidden customer's
        p = access.principal
        with access.batch():
            found = _resolve_visible(scope, CachedIndex(scope.index, (p.tenant, p.user, p.role)), ref)
    scope.resolved[key] = found
    return found


def _resolve_visible(scope: ReadScope, index: CachedIndex, ref: str) -> tuple[CustomerRef, str]:
    def seen(customer: CustomerRef | None) -> bool:
        return customer is not None and visible(scope, customer)

    try:
        customer, matched_by = index.resolve(ref)
    except AmbiguousCustomer as exc:
        shown = [c for c in exc.candidates if seen(index.get(c.customer_id))]
        if len(shown) == 1 and (found := index.get(shown[0].customer_id)) is not None:
            return found, shown[0].matched_by
        if shown:
            raise AmbiguousCustomer(ref, shown) from None
        raise CustomerNotFound(ref, _visible_names(index, ref, seen)) from None
    except CustomerNotFound as exc:
        row_check_unmatched(scope)
        raise CustomerNotFound(ref, _visible_names(index, ref, seen, exc.suggestions)) from None
    if not seen(customer):
        raise CustomerNotFound(ref, _visible_names(index, ref, seen, hidden=customer.name))
    return customer, matched_by


def _visible_names(index: CachedIndex, ref: str, seen: Callable[[CustomerRef | None], bool],
                   names: Iterable[str] | None = None, hidden: str | None = None) -> list[str]:
    """Closest-name suggestions, only of customers the principal may see. A reference that
    is not a name (an email, an id) gets none, as a missing one would. ``hidden``: the name of
    the hidden customer the reference matched — the closest name to it, left out without
    resolving it again (that extra lookup made a hidden customer answer ~1 ms later than a
    missing one)."""
    if names is None:
        q = ref.strip()
        if "@" in q or ":" in q or not normalize_name(q):
            return []
        names = index.closest_names(normalize_name(q))
    out = []
    for name in names:
        if name == hidden:
            continue
        try:
            customer, _ = index.resolve(name)
        except (AmbiguousCustomer, CustomerNotFound, ValueError):
            continue
        if seen(customer):
            out.append(name)
    return out


def visible(scope: ReadScope, customer: CustomerRef) -> bool:
    """Whether the principal's row filter lets it see ``customer`` (judged once per request).

    The filter is judged on the customer's ``crm.account``, read like any slice (memory
    first, then the guard) but never returned; the judgement is audited as a row check.
    """
    access = scope.access
    if access is None:
        return True
    known = access.verdict(customer.customer_id)
    if known is not None:
        return known
    started = time.perf_counter()
    try:
        rdr = scope_reader(scope, "crm")
    except (MappingError, ArgumentError, ValueError) as exc:
        account: Slice | SourceGap = SourceGap(slice="crm.account", source="crm", kind="unavailable",
                                               message=summarize(exc))
    else:
        held = row_check_read(scope, customer.customer_id) if scope.memory is not None and rdr is not None else None
        account, _ = _read(scope, rdr, "crm.account", customer, prefer_memory=True,
                           prefetched=held.parsed if held else None)
        if held and (cached := held.parsed.get("crm.account")) is not None and account is cached.slice:
            hand_on(scope, customer.customer_id, held)  # the request's read of the slices takes it
    return access.judge(customer.customer_id, account, (time.perf_counter() - started) * 1000)


#: The customer id an audit record of a reference that matches no customer carries.
UNMATCHED = "-"
#: A canonical id no customer has (ids are ``c_`` + 12 hex digits of a SHA-1): the memory key the
#: row check of an unmatched reference reads.
_NO_CUSTOMER = "c_unmatched"


def row_check_unmatched(scope: ReadScope) -> None:
    """The row check of a reference that matches no customer, for a principal with a row filter:
    the same work a hidden customer's row check does — the CRM reader, one memory read of a
    ``crm.account`` (with the slices the request reads next: ``shared.will_read``), one audited
    ``row check`` record (customer ``-``) — so that a hidden customer
    and one that does not exist take the same time (measured by the ``access`` eval suite). Without
    it a missing reference skipped the memory read and the audit append and answered about twice as
    fast (HTTP medians 7.7 vs 14.6 ms).
    """
    access = scope.access
    if access is None or not access.filters_rows:
        return
    started = time.perf_counter()
    try:
        rdr = scope_reader(scope, "crm")
    except (MappingError, ArgumentError, ValueError):
        rdr = None
    if scope.memory is not None and rdr is not None:
        row_check_read(scope, _NO_CUSTOMER)
    access.record(UNMATCHED, "crm.account", "denied", "not_found", (time.perf_counter() - started) * 1000,
                  "row check: no customer matches the reference")


# ------------------------------------------------------------------- reading
def read_slices(scope: ReadScope, customer: CustomerRef, names: list[str]
                ) -> tuple[dict[str, SourceReader | None], list[Read]]:
    """Read ``names``, each through memory, the guard and the gate (in parallel on a bounded pool
    when a remote source is read live; inline otherwise).

    Returns the readers used (None: not connected) and one (slice or gap, outcome) per
    name, in the order given. A source whose reader cannot even be built (a bad mapping
    file, a malformed URL) yields ``unavailable`` gaps, not an exception. A customer the
    principal's row filter hides yields ``not_found`` gaps only, as a customer no source
    knows would.
    """
    access = scope.access
    if access is None:
        return _read_slices(scope, customer, names)
    with access.batch():
        if not visible(scope, customer):
            return {}, [(access.hidden(customer.customer_id, n), None) for n in names]
        return _read_slices(scope, customer, names)


def _read_slices(scope: ReadScope, customer: CustomerRef, names: list[str]
                 ) -> tuple[dict[str, SourceReader | None], list[Read]]:
    readers: dict[str, SourceReader | None] = {}
    broken: dict[str, str] = {}
    for source in dict.fromkeys(SLICE_MODELS[n].source for n in names):
        try:
            readers[source] = scope_reader(scope, source)
        except (MappingError, ArgumentError, ValueError) as exc:
            readers[source], broken[source] = None, f"{source} source could not be opened: {summarize(exc)}"

    # A warm read: every snapshot memory holds for these slices in one query (the row check's
    # crm.account, read a moment ago in this request, is not read again).
    prefetched = snapshots(scope, customer, [n for n in names if scope.allows(n)]) \
        if scope.memory is not None and scope.prefer_memory else None

    def one(name: str) -> Read:
        source = SLICE_MODELS[name].source
        if source in broken:
            return SourceGap(slice=name, source=source, kind="unavailable", message=broken[source]), None
        return read_slice(scope, readers[source], name, customer, prefetched)

    live = [n for n in names if not (prefetched and n in prefetched and prefetched[n].fresh) and scope.allows(n)]
    if len(live) <= 1 or _local_sources(scope, live):  # no thread pool: see _local_sources
        with one_connection(readers, live):
            return readers, [one(n) for n in names]
    pool = _read_pool()
    width = max(1, scope.settings.guard.max_concurrency)  # at most this many of the call's reads at once
    results: list[Read] = []
    for i in range(0, len(names), width):
        futures = [pool.submit(copy_context().run, one, n) for n in names[i:i + width]]
        results.extend(f.result() for f in futures)
    return readers, results


def _local_sources(scope: ReadScope, names: list[str]) -> bool:
    """Whether every source of these live reads is a local SQLite file (or not connected): one
    customer's point lookups there take a fraction of a millisecond each, less than handing them
    to the pool's threads costs (a third of a cold view's time went to the pool), so they run
    inline, one after the other, over one connection per warehouse (``shared.one_connection``). Remote warehouses keep
    the pool: their reads wait on the network in parallel."""
    for source in {SLICE_MODELS[n].source for n in names}:
        url = source_config(scope, source).url
        if url is not None and not url.startswith("sqlite"):
            return False
    return True


def read_slice(scope: ReadScope, rdr: SourceReader | None, name: str, customer: CustomerRef,
               prefetched: dict[str, CachedSlice] | None = None) -> Read:
    """One slice, or the gap that names why it is missing, as the scope's principal may see it.

    With long-term memory: a fresh snapshot is served without touching the source; a live
    read is written through; when the source fails, the last snapshot is served marked
    stale with its age instead of a gap. Memory always holds the full-fidelity slice:
    masking happens on the way out. ``prefetched``: the customer's snapshots already read
    from that memory (``get_many``).
    """
    access = scope.access
    if access is None:
        return _read(scope, rdr, name, customer, scope.prefer_memory, prefetched)
    if not access.allows(name):
        return access.forbidden(customer.customer_id, name), None
    started = time.perf_counter()
    result, outcome = _read(scope, rdr, name, customer, scope.prefer_memory, prefetched)
    return _shown(access, access.admit(customer.customer_id, result, (time.perf_counter() - started) * 1000)), \
        outcome


def _shown(access: Access, admitted: Slice | SourceGap) -> Slice | SourceGap:
    """An admitted slice without the record ids of slices the role may not read (its provenance
    would otherwise name them: invoice ids in billing.status for a role denied billing.invoices)."""
    return hide_shared_records(admitted, access.role) if isinstance(admitted, Slice) else admitted


def _read(scope: ReadScope, rdr: SourceReader | None, name: str, customer: CustomerRef, prefer_memory: bool,
          prefetched: dict[str, CachedSlice] | None = None) -> Read:
    source = SLICE_MODELS[name].source
    memory = scope.memory
    if memory is not None and prefer_memory and rdr is not None:
        cached = prefetched.get(name) if prefetched is not None else memory.get(customer.customer_id, name)
        if cached is not None and cached.fresh:
            prov = cached.slice.provenance
            prov.served_from, prov.age_seconds = "memory", round(cached.age_seconds, 1)
            return cached.slice, CallOutcome(source, name, "memory", 0.0)
    if rdr is None:
        return SourceGap(slice=name, source=source, kind="not_connected",
                         message=f"No {source} source is connected.", remedy=REMEDIES[source]), None
    clock = scope.clock
    result, outcome, _exc = scope.guard.call(source, name, lambda: rdr.read(name, customer, clock),
                                             source_config(scope, source).timeout_s, not_found=(SliceNotFound,))
    if outcome.status == "ok":
        if memory is not None:
            forget(scope, customer.customer_id)  # the row check's snapshots are older than this
            memory.put(customer.customer_id, result)
        return result, outcome
    if outcome.status == "not_found":
        return SourceGap(slice=name, source=source, kind="not_found", message=outcome.error or "not found"), outcome
    return _stale_or_gap(memory, customer, name, outcome), outcome


def _stale_or_gap(memory: ContextMemory | None, customer: CustomerRef, name: str,
                  outcome: CallOutcome) -> Slice | SourceGap:
    """A failed read: the last snapshot marked stale with its age, else the gap naming the failure."""
    if memory is not None and (cached := memory.get(customer.customer_id, name)) is not None:
        prov = cached.slice.provenance
        prov.served_from, prov.stale, prov.age_seconds = "memory", True, round(cached.age_seconds, 1)
        return cached.slice
    source = SLICE_MODELS[name].source
    what = {"timeout": f"{source} source timed out: {outcome.error}",
            "circuit_open": f"{source} source skipped: {outcome.error}"}.get(
        outcome.status, f"{source} source failed after {outcome.attempts} attempt(s): {outcome.error}")
    return SourceGap(slice=name, source=source, kind=GAP_FOR_OUTCOME[outcome.status], message=what)


def recall_slices(scope: ReadScope, customer: CustomerRef, names: Iterable[str]
                  ) -> dict[str, Slice | SourceGap | None]:
    """Slices read back from long-term memory by reference (a graph resumed in another
    process answers from what its fetches stored) through the same policy as every read:
    row filter, forbidden slices, masking, audit. None for a slice memory no longer holds."""
    memory = scope.memory
    if memory is None:
        return dict.fromkeys(names)
    access = scope.access
    if access is None:
        return {n: (c.slice if (c := memory.get(customer.customer_id, n)) else None) for n in names}
    with access.batch():
        if not visible(scope, customer):
            return {n: access.hidden(customer.customer_id, n) for n in names}
        out: dict[str, Slice | SourceGap | None] = {}
        for name in names:
            if not access.allows(name):
                out[name] = access.forbidden(customer.customer_id, name)
                continue
            started = time.perf_counter()
            cached = memory.get(customer.customer_id, name)
            out[name] = None if cached is None else _shown(access, access.admit(
                customer.customer_id, cached.slice, (time.perf_counter() - started) * 1000, "read back for the answer"))
        return out


_pool: ThreadPoolExecutor | None = None

#: Threads of the process-wide read pool (callers beyond it wait their turn).
READ_THREADS = 32


def _read_pool() -> ThreadPoolExecutor:
    """One pool of reader threads for the process (starting threads per read costs more than
    a point lookup). Its tasks never wait on it themselves, so it cannot deadlock."""
    global _pool
    with _guards_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="custctx-read")
        return _pool
