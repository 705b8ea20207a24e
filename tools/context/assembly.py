"""The unified customer context: slices + gaps + conflicts + derived traits + source report.

``assemble_context`` reads the requested slices through the one read path
(``tools.context.read``) in source priority order (CRM first, external research last);
every slice is either present with its provenance or a named gap.
``tools.context.view.reference_view`` renders it as the reference JSON shape.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, SerializeAsAny

from tools.context.read import read_slices, resolve
from tools.context.scope import ReadScope
from tools.guard import CallOutcome
from tools.settings import Thresholds
from tools.slices import SLICE_MODELS, SLICE_NAMES, BillingStatus, CrmAccount, Slice, SourceGap
from tools.sources.base import CustomerRef, SourceReader
from tools.sources.registry import default_slices
from tools.traits import Traits, derive_traits


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
    return list(_expanded(tuple(requested)))


@functools.lru_cache(maxsize=512)
def _expanded(requested: tuple[str, ...]) -> tuple[str, ...]:
    """``expand_slices`` of one request's names (the same few lists come again and again)."""
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
    return tuple(n for n in SLICE_NAMES if n in wanted)


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


def assemble_context(scope: ReadScope, customer: CustomerRef, slices: Iterable[str] | None = None,
                     matched_by: str | None = None) -> CustomerContext:
    """Read the requested slices (in parallel, each guarded, each through the scope's gate) and
    derive the unified context."""
    names = expand_slices(slices)
    if not slices or set(names) == set(SLICE_NAMES):  # every slice: an optional source (commerce) if connected
        access = scope.access
        names = default_slices(scope.settings, names, None if access is None else lambda n: not access.allows(n))
    readers, results = read_slices(scope, customer, names)
    got = {n: r for n, (r, _) in zip(names, results, strict=True) if not isinstance(r, SourceGap)}
    gaps = [r for r, _ in results if isinstance(r, SourceGap)]
    outcomes = [o for _, o in results if o is not None]
    settings = scope.settings
    return CustomerContext(
        customer_id=customer.customer_id, name=customer.name, matched_by=matched_by,
        anchors=dict(customer.anchors), domains=list(customer.domains), as_of=scope.clock.as_of,
        slices=got, gaps=gaps, conflicts=find_conflicts(got, settings.thresholds),
        traits=derive_traits(got, settings.thresholds, settings.churn_weights),
        sources=source_report(list(readers), readers, got, gaps, outcomes),
    )


def read_customer_context(scope: ReadScope, ref: str, slices: Iterable[str] | None = None) -> CustomerContext:
    """One customer's unified context for the scope's principal: resolve as it may, then read
    through memory, the guard and the policy. What ``custctx context``, MCP and HTTP serve.

    Raises:
        AmbiguousCustomer, CustomerNotFound, BadReference: the reference does not name one
            customer the principal may see.
    """
    customer, matched_by = resolve(scope, ref)
    return assemble_context(scope, customer, slices, matched_by=matched_by)


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


def find_conflicts(s: dict[str, Slice], thresholds: Thresholds) -> list[Conflict]:
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
        tol = thresholds.mrr_conflict_tolerance * max(account.mrr, billing.mrr)
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
