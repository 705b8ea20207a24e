"""What a refresh reports: customers read, slices written, gaps and failures (with the first
:data:`MAX_FAILED_LISTED` listed), and the tally a chunk runner adds each customer's results to
(``tools.refresh.runner``; a worker process's part merged into its parent's).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tools.slices import SLICE_MODELS, Slice, SourceGap

#: Entries kept in ``RefreshReport.failed`` (the total is ``failures``).
MAX_FAILED_LISTED = 1_000


@dataclass
class SliceWrite:
    """One slice a single-customer refresh wrote, with its freshness."""

    customer_id: str
    slice: str
    fetched_at: datetime
    source_updated_at: datetime | None
    record_ids: int


@dataclass
class RefreshReport:
    mode: str  # full | incremental | customer | event
    customers: int = 0  # customers whose slices were read
    slices_written: int = 0
    gaps: int = 0  # not_found: the source holds nothing for the customer (its snapshot is removed)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (customer id, slice); first MAX_FAILED_LISTED
    changed_by_source: dict[str, int] = field(default_factory=dict)  # customers refreshed per source
    seconds: float = 0.0
    watermarks: dict[str, str | None] = field(default_factory=dict)  # per source, after the run
    failures: int = 0  # failed slice reads in all
    failed_sources: dict[str, str] = field(default_factory=dict)  # source → why it kept its watermark
    refreshed: list[str] = field(default_factory=list)  # customer ids (incremental, customer, event)
    full_sources: list[str] = field(default_factory=list)  # sources read in full (no usable watermark)
    untracked: list[str] = field(default_factory=list)  # watched entities a mapping cannot track
    written: list[SliceWrite] = field(default_factory=list)  # single-customer modes only
    event: str | None = None

    def as_dict(self) -> dict[str, Any]:
        def enc(v: Any) -> Any:
            if isinstance(v, datetime):
                return v.isoformat()
            if isinstance(v, dict):
                return {k: enc(x) for k, x in v.items()}
            if isinstance(v, list | tuple):
                return [enc(x) for x in v]
            if isinstance(v, SliceWrite):
                return enc(v.__dict__)
            return v

        return {k: enc(v) for k, v in self.__dict__.items()}


@dataclass
class _Tally:
    report: RefreshReport
    keep_customers: bool
    keep_writes: bool
    failed_by_source: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, customer_id: str, results: list[tuple[str, Slice | SourceGap, Any]]) -> None:
        r = self.report
        with self._lock:
            r.customers += 1
            if self.keep_customers:
                r.refreshed.append(customer_id)
            for name, got, outcome in results:
                status = outcome.status if outcome is not None else None
                source = SLICE_MODELS[name].source
                if status == "ok":
                    r.slices_written += 1
                    if self.keep_writes and isinstance(got, Slice):
                        p = got.provenance
                        r.written.append(SliceWrite(customer_id, name, p.fetched_at, p.source_updated_at,
                                                    len(p.record_ids)))
                elif status == "not_found":
                    r.gaps += 1
                else:
                    r.failures += 1
                    self.failed_by_source[source] += 1
                    if len(r.failed) < MAX_FAILED_LISTED:
                        r.failed.append((customer_id, name))

    def unknown(self, customer_id: str) -> None:
        """A listed customer the identity index no longer knows."""
        with self._lock:
            self.report.failures += 1
            if len(self.report.failed) < MAX_FAILED_LISTED:
                self.report.failed.append((customer_id, "unknown customer"))

    def part(self) -> dict[str, Any]:
        """What a worker process tallied, to :meth:`merge` into the parent's tally."""
        r = self.report
        return {"customers": r.customers, "slices_written": r.slices_written, "gaps": r.gaps,
                "failures": r.failures, "failed": r.failed, "refreshed": r.refreshed,
                "failed_by_source": dict(self.failed_by_source)}

    def merge(self, part: dict[str, Any]) -> None:
        r = self.report
        with self._lock:
            r.customers += part["customers"]
            r.slices_written += part["slices_written"]
            r.gaps += part["gaps"]
            r.failures += part["failures"]
            r.failed.extend(part["failed"][:max(0, MAX_FAILED_LISTED - len(r.failed))])
            if self.keep_customers:
                r.refreshed.extend(part["refreshed"])
            self.failed_by_source.update(part["failed_by_source"])
