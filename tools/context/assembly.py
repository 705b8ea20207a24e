"""The unified customer context: slices + gaps + conflicts + derived traits.

``assemble_context`` reads the requested slices in source priority order (CRM first,
external research last); every slice is either present with its provenance or a
named gap. ``reference_view`` renders the ``get_customer_context`` response shape of
the reference document plus ids, health, gaps, conflicts and provenance.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, SerializeAsAny
from sqlalchemy.exc import ArgumentError

from tools.access.policy import masked_marker, show_masks
from tools.guard import CallOutcome, SourceGuard, summarize
from tools.mapping.engine import MappingError
from tools.memory import CachedSlice, ContextMemory
from tools.settings import Settings
from tools.slices import (
    SLICE_MODELS,
    SLICE_NAMES,
    BillingStatus,
    CrmAccount,
    CrmContacts,
    ProductUsage,
    Slice,
    SourceGap,
    SupportSummary,
)
from tools.sources.base import CustomerRef, ReadContext, SliceNotFound, SourceReader
from tools.sources.registry import REMEDIES, reader
from tools.traits import Traits, derive_traits

if TYPE_CHECKING:
    from tools.access.gate import Access


class ConflictValue(BaseModel):
    source: str
    slice: str
    value: Any
    record_ids: list[str] = Field(default_factory=list)


class Conflict(BaseModel):
    """Two sources disagree about one fact; both values are kept."""

    field: str
    values: list[ConflictValue]
    chosen: str = Field(description="Source whose value the context uses.")
    note: str


class CustomerContext(BaseModel):
    customer_id: str
    name: str
    matched_by: str | None = None
    anchors: dict[str, str] = Field(default_factory=dict)
    domains: list[str] = Field(default_factory=list)
    as_of: datetime
    slices: dict[str, SerializeAsAny[Slice]] = Field(default_factory=dict)
    gaps: list[SourceGap] = Field(default_factory=list)
    conflicts: list[Conflict] = Field(default_factory=list)
    traits: Traits
    sources: list[SourceStatus] = Field(default_factory=list, description="The source report.")

    def get(self, name: str) -> Slice | None:
        return self.slices.get(name)

    @property
    def context_updated(self) -> datetime | None:
        """The oldest fetch among the slices: the context is at least this fresh."""
        times = [s.provenance.fetched_at for s in self.slices.values()]
        return min(times) if times else None


class UnknownSlice(ValueError):
    pass


def expand_slices(requested: Iterable[str] | None) -> list[str]:
    """Slice names from names or source names (``billing`` → its slices), in priority order."""
    if not requested:
        return list(SLICE_NAMES)
    wanted: set[str] = set()
    for item in requested:
        for part in item.split(","):
            name = part.strip()
            if not name:
                continue
            matches = [n for n in SLICE_NAMES if n == name or n.split(".")[0] == name
                       or SLICE_MODELS[n].source == name]
            if not matches:
                raise UnknownSlice(f"unknown slice or source {name!r}; known slices: {', '.join(SLICE_NAMES)}")
            wanted.update(matches)
    return [n for n in SLICE_NAMES if n in wanted]


SourceState = Literal["connected", "cached", "stale", "not_connected", "degraded", "failed"]


class SourceStatus(BaseModel):
    """One source's part in a context: connected or not, how fast, how fresh."""

    source: str
    system: str | None = None
    status: SourceState
    latency_ms: float | None = Field(default=None, description="Slowest of its calls (they run in parallel).")
    freshness: datetime | None = Field(default=None, description="Newest source row among its slices.")
    slices: list[str] = Field(default_factory=list)
    gaps: list[str] = Field(default_factory=list)
    skipped_rows: int = 0
    attempts: int = 0
    error: str | None = None


GAP_FOR_OUTCOME = {"unavailable": "unavailable", "timeout": "timeout", "circuit_open": "unavailable"}

_guards: dict[tuple, SourceGuard] = {}
_guards_lock = threading.Lock()


def default_guard(settings: Settings) -> SourceGuard:
    """The process-wide guard for these guard settings (breakers live as long as the process)."""
    key = tuple(settings.guard.model_dump().items())
    with _guards_lock:
        if key not in _guards:
            _guards[key] = SourceGuard(settings.guard)
        return _guards[key]


def read_slice(rdr: SourceReader | None, name: str, customer: CustomerRef, ctx: ReadContext,
               guard: SourceGuard, timeout_s: float | None = None, memory: ContextMemory | None = None,
               prefer_memory: bool = True, access: Access | None = None,
               prefetched: dict[str, CachedSlice] | None = None,
               ) -> tuple[Slice | SourceGap, CallOutcome | None]:
    """One slice, or the gap that names why it is missing.

    With long-term memory: a fresh snapshot is served without touching the source;
    a live read is written through; when the source fails, the last snapshot is
    served marked stale with its age instead of a gap.

    With ``access`` (every interface passes one): a slice the principal's role may not
    read is a ``forbidden`` gap without any read; memory is the principal's tenant's;
    whatever comes back (source, fresh or stale memory) is masked for the role; the read
    is audited. Memory always holds the full-fidelity slice: masking happens on the way out.
    ``prefetched``: the customer's snapshots already read from that memory (``get_many``).
    """
    if access is None:
        return _read_slice(rdr, name, customer, ctx, guard, timeout_s, memory, prefer_memory, prefetched)
    if not access.allows(name):
        return access.forbidden(customer.customer_id, name), None
    started = time.perf_counter()
    result, outcome = _read_slice(rdr, name, customer, ctx, guard, timeout_s, tenant_memory(memory, access),
                                  prefer_memory, prefetched)
    return access.admit(customer.customer_id, result, (time.perf_counter() - started) * 1000), outcome


def tenant_memory(memory: ContextMemory | None, access: Access | None) -> ContextMemory | None:
    """Long-term memory in the principal's tenant namespace, whatever the caller opened."""
    if memory is None or access is None or memory.tenant == access.tenant:
        return memory
    return memory.for_tenant(access.tenant)


def _read_slice(rdr: SourceReader | None, name: str, customer: CustomerRef, ctx: ReadContext,
                guard: SourceGuard, timeout_s: float | None, memory: ContextMemory | None,
                prefer_memory: bool, prefetched: dict[str, CachedSlice] | None = None,
                ) -> tuple[Slice | SourceGap, CallOutcome | None]:
    source = SLICE_MODELS[name].source
    if memory is not None and prefer_memory and rdr is not None:
        cached = prefetched.get(name) if prefetched is not None else memory.get(customer.customer_id, name)
        if cached is not None and cached.fresh:
            prov = cached.slice.provenance
            prov.served_from, prov.age_seconds = "memory", round(cached.age_seconds, 1)
            return cached.slice, CallOutcome(source, name, "memory", 0.0)
    if rdr is None:
        return SourceGap(slice=name, source=source, kind="not_connected",
                         message=f"No {source} source is connected.", remedy=REMEDIES[source]), None
    result, outcome, _exc = guard.call(source, name, lambda: rdr.read(name, customer, ctx), timeout_s,
                                       not_found=(SliceNotFound,))
    if outcome.status == "ok":
        if memory is not None:
            memory.put(customer.customer_id, result)
        return result, outcome
    if outcome.status == "not_found":
        return SourceGap(slice=name, source=source, kind="not_found", message=outcome.error or "not found"), outcome
    if memory is not None and (cached := memory.get(customer.customer_id, name)) is not None:
        prov = cached.slice.provenance
        prov.served_from, prov.stale, prov.age_seconds = "memory", True, round(cached.age_seconds, 1)
        return cached.slice, outcome
    what = {"timeout": f"{source} source timed out: {outcome.error}",
            "circuit_open": f"{source} source skipped: {outcome.error}"}.get(
        outcome.status, f"{source} source failed after {outcome.attempts} attempt(s): {outcome.error}")
    return SourceGap(slice=name, source=source, kind=GAP_FOR_OUTCOME[outcome.status], message=what), outcome


def read_slices(
    settings: Settings,
    customer: CustomerRef,
    ctx: ReadContext,
    names: list[str],
    guard: SourceGuard | None = None,
    memory: ContextMemory | None = None,
    prefer_memory: bool = True,
    access: Access | None = None,
) -> tuple[dict[str, SourceReader | None], list[tuple[Slice | SourceGap, CallOutcome | None]]]:
    """Read ``names`` in parallel (bounded pool), each through memory, the guard and ``access``.

    Returns the readers used (None: not connected) and one (slice or gap, outcome)
    per name, in the order given. A source whose reader cannot even be built (a bad
    mapping file, a malformed URL) yields ``unavailable`` gaps, not an exception. A
    customer the principal's row filter hides yields ``not_found`` gaps only, as a
    customer no source knows would.
    """
    guard = guard or default_guard(settings)
    if access is None:
        return _read_slices(settings, customer, ctx, names, guard, memory, prefer_memory, None)
    with access.batch():
        if not customer_visible(settings, customer, ctx, access, guard, memory):
            return {}, [(access.hidden(customer.customer_id, n), None) for n in names]
        return _read_slices(settings, customer, ctx, names, guard, memory, prefer_memory, access)


def _read_slices(settings: Settings, customer: CustomerRef, ctx: ReadContext, names: list[str],
                 guard: SourceGuard, memory: ContextMemory | None, prefer_memory: bool, access: Access | None,
                 ) -> tuple[dict[str, SourceReader | None], list[tuple[Slice | SourceGap, CallOutcome | None]]]:
    readers: dict[str, SourceReader | None] = {}
    broken: dict[str, str] = {}
    for source in dict.fromkeys(SLICE_MODELS[n].source for n in names):
        try:
            readers[source] = reader(settings, source)
        except (MappingError, ArgumentError, ValueError) as exc:
            readers[source], broken[source] = None, f"{source} source could not be opened: {summarize(exc)}"

    # A warm read: every snapshot memory holds for these slices in one query.
    mem = tenant_memory(memory, access)
    prefetched = mem.get_many(customer.customer_id, [n for n in names if access is None or access.allows(n)]) \
        if mem is not None and prefer_memory and len(names) > 1 else None

    def one(name: str) -> tuple[Slice | SourceGap, CallOutcome | None]:
        source = SLICE_MODELS[name].source
        if source in broken:
            return SourceGap(slice=name, source=source, kind="unavailable", message=broken[source]), None
        return read_slice(readers[source], name, customer, ctx, guard, settings.source(source).timeout_s,
                          memory, prefer_memory, access, prefetched)

    live = [n for n in names if not (prefetched and n in prefetched and prefetched[n].fresh)
            and (access is None or access.allows(n))]
    if len(live) <= 1:  # served from memory (and at most one source read): no thread pool
        return readers, [one(n) for n in names]
    pool = _read_pool()
    width = max(1, settings.guard.max_concurrency)  # at most this many of the call's reads at once
    results: list[tuple[Slice | SourceGap, CallOutcome | None]] = []
    for i in range(0, len(names), width):
        futures = [pool.submit(copy_context().run, one, n) for n in names[i:i + width]]
        results.extend(f.result() for f in futures)
    return readers, results


_pool: ThreadPoolExecutor | None = None


def _read_pool() -> ThreadPoolExecutor:
    """One pool of reader threads for the process (starting threads per read costs more than
    a point lookup). Its tasks never wait on it themselves, so it cannot deadlock."""
    global _pool
    with _guards_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="custctx-read")
        return _pool


#: Threads of the process-wide read pool (callers beyond it wait their turn).
READ_THREADS = 32


def customer_visible(settings: Settings, customer: CustomerRef, ctx: ReadContext, access: Access,
                     guard: SourceGuard | None = None, memory: ContextMemory | None = None) -> bool:
    """Whether the principal's row filter lets it see ``customer`` (judged once per gate).

    The filter is judged on the customer's ``crm.account``, read like any slice (memory
    first, then the guard) but never returned; the judgement is audited as a row check.
    """
    known = access.verdict(customer.customer_id)
    if known is not None:
        return known
    started = time.perf_counter()
    try:
        rdr = reader(settings, "crm")
    except (MappingError, ArgumentError, ValueError) as exc:
        account: Slice | SourceGap = SourceGap(slice="crm.account", source="crm", kind="unavailable",
                                               message=summarize(exc))
    else:
        account, _ = _read_slice(rdr, "crm.account", customer, ctx, guard or default_guard(settings),
                                 settings.source("crm").timeout_s, tenant_memory(memory, access), True)
    return access.judge(customer.customer_id, account, (time.perf_counter() - started) * 1000)


def recall_slices(settings: Settings, ctx: ReadContext, memory: ContextMemory, customer: CustomerRef,
                  names: Iterable[str], access: Access | None) -> dict[str, Slice | SourceGap | None]:
    """Slices read back from long-term memory (a graph's respond step reads its turn's
    slices by reference) through the same policy as every read: row filter, forbidden
    slices, masking, audit. None for a slice memory no longer holds."""
    if access is None:
        return {n: (c.slice if (c := memory.get(customer.customer_id, n)) else None) for n in names}
    with access.batch():
        return _recall(settings, ctx, memory, customer, list(names), access)


def _recall(settings: Settings, ctx: ReadContext, memory: ContextMemory, customer: CustomerRef,
            names: list[str], access: Access) -> dict[str, Slice | SourceGap | None]:
    if not customer_visible(settings, customer, ctx, access, memory=memory):
        return {n: access.hidden(customer.customer_id, n) for n in names}
    memory = tenant_memory(memory, access) or memory
    out: dict[str, Slice | SourceGap | None] = {}
    for name in names:
        if not access.allows(name):
            out[name] = access.forbidden(customer.customer_id, name)
            continue
        started = time.perf_counter()
        cached = memory.get(customer.customer_id, name)
        out[name] = None if cached is None else access.admit(
            customer.customer_id, cached.slice, (time.perf_counter() - started) * 1000, "read back for the answer")
    return out


def assemble_context(
    settings: Settings,
    customer: CustomerRef,
    ctx: ReadContext,
    slices: Iterable[str] | None = None,
    matched_by: str | None = None,
    guard: SourceGuard | None = None,
    memory: ContextMemory | None = None,
    prefer_memory: bool = True,
    access: Access | None = None,
) -> CustomerContext:
    """Read the requested slices (in parallel, each guarded, each through ``access``) and
    derive the unified context."""
    names = expand_slices(slices)
    readers, results = read_slices(settings, customer, ctx, names, guard, memory, prefer_memory, access)
    got = {n: r for n, (r, _) in zip(names, results, strict=True) if not isinstance(r, SourceGap)}
    gaps = [r for r, _ in results if isinstance(r, SourceGap)]
    outcomes = [o for _, o in results if o is not None]
    return CustomerContext(
        customer_id=customer.customer_id, name=customer.name, matched_by=matched_by,
        anchors=dict(customer.anchors), domains=list(customer.domains), as_of=ctx.as_of,
        slices=got, gaps=gaps, conflicts=find_conflicts(got, settings),
        traits=derive_traits(got, settings.thresholds, settings.churn_weights),
        sources=source_report(list(readers), readers, got, gaps, outcomes),
    )


def source_report(sources: list[str], readers: dict[str, SourceReader | None], got: dict[str, Slice],
                  gaps: list[SourceGap], outcomes: list[CallOutcome]) -> list[SourceStatus]:
    report = []
    for source in sources:
        rdr = readers[source]
        mine = [s for s in got.values() if s.source == source]
        my_gaps = [g for g in gaps if g.source == source]
        calls = [o for o in outcomes if o.source == source]
        failed = [g for g in my_gaps if g.kind in ("unavailable", "timeout")]
        skipped = sum(s.provenance.skipped_rows for s in mine)
        stale = [s for s in mine if s.provenance.stale]
        if rdr is None:
            state: SourceState = "not_connected"
        elif stale:
            state = "stale"
        elif mine and all(s.provenance.served_from == "memory" for s in mine) and not my_gaps:
            state = "cached"
        elif failed and not mine and len(failed) == len(my_gaps):
            state = "failed"
        elif failed or skipped:
            state = "degraded"
        else:
            state = "connected"
        updated = [s.provenance.source_updated_at for s in mine if s.provenance.source_updated_at]
        report.append(SourceStatus(
            source=source, system=rdr.mapping.system if rdr else None, status=state,
            latency_ms=max((o.latency_ms for o in calls), default=None),
            freshness=max(updated) if updated else None,
            slices=sorted(s.name for s in mine), gaps=[f"{g.slice}: {g.kind}" for g in my_gaps],
            skipped_rows=skipped, attempts=sum(o.attempts for o in calls),
            error=next((o.error for o in calls if o.status not in ("ok", "not_found", "memory")), None),
        ))
    return report


def find_conflicts(s: dict[str, Slice], settings: Settings) -> list[Conflict]:
    """Facts two sources state differently (MRR, customer status)."""
    account, billing = s.get("crm.account"), s.get("billing.status")
    if not (isinstance(account, CrmAccount) and isinstance(billing, BillingStatus)):
        return []
    out = []

    def both(field: str, crm_value: Any, billing_value: Any, note: str) -> Conflict:
        return Conflict(field=field, chosen="crm", note=note, values=[
            ConflictValue(source=account.provenance.system, slice="crm.account", value=crm_value,
                          record_ids=account.provenance.record_ids),
            ConflictValue(source=billing.provenance.system, slice="billing.status", value=billing_value,
                          record_ids=billing.provenance.record_ids),
        ])

    if account.mrr is not None and billing.mrr is not None:
        tol = settings.thresholds.mrr_conflict_tolerance * max(account.mrr, billing.mrr)
        if abs(account.mrr - billing.mrr) > tol:
            out.append(both("mrr", account.mrr, billing.mrr,
                            "CRM and billing disagree on monthly recurring revenue; the CRM value is used "
                            "for tier, the billing value is what is being charged."))
    if account.status == "active" and billing.status == "canceled":
        out.append(both("status", account.status, billing.status,
                        "CRM says active but the billing subscription is canceled."))
    if account.status == "churned" and billing.status in ("current", "past_due", "trialing"):
        out.append(both("status", account.status, billing.status,
                        "CRM says churned but billing still has a live subscription."))
    return out


def slice_view(s: Slice, provenance: bool = True) -> dict[str, Any]:
    """A slice as JSON for output: masked values shown as the mask marker."""
    data = show_masks(s.model_dump(mode="json"))
    if not provenance:
        data.pop("provenance")
    return data


def _iso(v: Any) -> Any:
    return v.isoformat() + ("Z" if isinstance(v, datetime) and v.tzinfo is None else "") \
        if hasattr(v, "isoformat") else v


def primary_email(c: CustomerContext) -> str | None:
    contacts, billing = c.get("crm.contacts"), c.get("billing.status")
    if isinstance(contacts, CrmContacts):
        for contact in contacts.contacts:
            if contact.email:
                return contact.email
    if isinstance(billing, BillingStatus) and billing.billing_email:
        return billing.billing_email
    return None


def reference_view(c: CustomerContext, include_slices: bool = True) -> dict[str, Any]:
    """The reference ``get_customer_context`` JSON shape, plus ids, health, gaps, conflicts, provenance."""
    account, billing = c.get("crm.account"), c.get("billing.status")
    usage, support = c.get("product.usage"), c.get("support.summary")
    acc = account if isinstance(account, CrmAccount) else None
    bil = billing if isinstance(billing, BillingStatus) else None
    out: dict[str, Any] = {
        "customer_id": c.customer_id,
        "customer": {
            "name": acc.company_name if acc else c.name,
            "email": primary_email(c),
            "tier": c.traits.tier,
            "mrr": c.traits.mrr,
            "plan": (acc.plan if acc and acc.plan else None) or (bil.plan if bil else None),
            "status": acc.status if acc else ("active" if bil and bil.status not in ("canceled", "none") else None),
            "owner": acc.owner if acc else None,
        },
        "billing": None if bil is None else {
            "status": bil.status,
            "last_payment": _iso(bil.last_payment_date),
            "last_payment_amount": bil.last_payment_amount,
            "method": masked_marker(bil, "payment_method") or (str(bil.payment_method) if bil.payment_method
                                                                   else None),
            "balance_due": bil.balance_due,
            "trial_ends": _iso(bil.trial_ends),
        },
        "usage": None if not isinstance(usage, ProductUsage) else {
            "active_users": usage.active_users_30d,
            "last_login": _iso(usage.last_login.date()) if usage.last_login else None,
            "days_since_login": usage.days_since_login,
            "trend": usage.trend,
        },
        "support": None if not isinstance(support, SupportSummary) else {
            "open_tickets": support.open_tickets,
            "total_tickets": support.total_tickets,
            "avg_resolution_time": f"{support.avg_resolution_hours} hours"
            if support.avg_resolution_hours is not None else None,
            "satisfaction_score": support.csat,
            "repeat_issue_count": support.repeat_issue_count,
        },
        "risk_indicators": c.traits.risk_indicators,
        "health": c.traits.health,
        "support_load": c.traits.support_load,
        "churn_risk": c.traits.churn_risk.model_dump(),
        "context_updated": _iso(c.context_updated),
        "as_of": _iso(c.as_of),
        "matched_by": c.matched_by,
        "gaps": [g.model_dump() for g in c.gaps],
        "conflicts": [x.model_dump(mode="json") for x in c.conflicts],
        "provenance": {n: s.provenance.model_dump(mode="json") for n, s in c.slices.items()},
        "sources": [x.model_dump(mode="json") for x in c.sources],
        "traits": c.traits.model_dump(mode="json"),
    }
    if include_slices:
        out["slices"] = {n: slice_view(s, provenance=False) for n, s in c.slices.items()}
    return out
