"""A chunk's bulk reads and buffered writes, for the chunk runner (``tools.refresh.runner``):
each source read once for the whole chunk (``SourceReader.read_many``), the slices admitted and
audited like single reads, and the chunk's memory writes held for one batch.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from langgraph.store.base import BaseStore, Op, PutOp, Result

from tools.access.gate import Access
from tools.guard import CallOutcome, SourceGuard
from tools.mapping.conversions import MappingError
from tools.memory import ContextMemory
from tools.memory_batch import SnapshotSink, write_snapshots
from tools.settings import Settings
from tools.slices import SLICE_MODELS, Slice, SourceGap
from tools.sources.base import CustomerRef, ReadClock, SliceNotFound
from tools.sources.batch import RowBatch
from tools.sources.registry import reader


class _WriteBuffer(BaseStore, SnapshotSink):
    """A store view that holds a chunk's snapshots until :meth:`flush` writes them in one batch,
    one transaction (``tools.memory_batch``: straight into the SQLite / PostgreSQL store's table),
    keeping the slices they were made from for the chunk's book rows; reads pass through.
    ``ContextMemory.put`` keeps its one value format: it hands the value here (:meth:`hold`)."""

    def __init__(self, inner: BaseStore):
        self.inner = inner
        #: (namespace, key) → (the value, or None: remove; the slice it was made from, if known)
        self._held: dict[tuple[tuple[str, ...], str], tuple[dict[str, Any] | None, Slice | None]] = {}
        self._lock = threading.Lock()

    def hold(self, namespace: tuple[str, ...], key: str, value: dict[str, Any], s: Slice) -> None:
        with self._lock:
            self._held[namespace, key] = (value, s)

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        ops = list(ops)
        puts = [o for o in ops if isinstance(o, PutOp)]
        if ops and len(puts) == len(ops):  # a put that did not come through ContextMemory.put
            with self._lock:
                for o in puts:
                    self._held[o.namespace, o.key] = (None if o.value is None else dict(o.value), None)
            return [None] * len(ops)
        return self.inner.batch(ops)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return self.batch(ops)

    def forget(self, namespace: tuple[str, ...], key: str) -> None:
        with self._lock:
            self._held[namespace, key] = (None, None)

    def flush(self) -> dict[tuple[tuple[str, ...], str], Slice]:
        """Write what the chunk holds (the last write of each snapshot wins); returns the slices
        written, by (namespace, key) — all the chunk keeps of them (memory stays flat)."""
        with self._lock:
            held, self._held = self._held, {}
        write_snapshots(self.inner, [(ns, key, v) for (ns, key), (v, _) in held.items() if v is not None],
                        [(ns, key) for (ns, key), (v, _) in held.items() if v is None])
        return {k: s for k, (v, s) in held.items() if v is not None and s is not None}


#: Budget of one source's bulk read of a chunk (it answers for CHUNK customers at once).
BULK_TIMEOUT_S = 60.0


class _Bulk:
    """Bulk reads of a chunk, source by source, written to memory and admitted like single reads."""

    def __init__(self, settings: Settings, clock: ReadClock, guard: SourceGuard, memory: ContextMemory,
                 buffer: _WriteBuffer, access: Access):
        self.settings, self.clock, self.guard, self.memory, self.buffer, self.access = (
            settings, clock, guard, memory, buffer, access)
        self.batches: dict[str, RowBatch] = {}  # per source, kept across chunks

    def read(self, jobs: Sequence[tuple[CustomerRef, Sequence[str]]],
             ) -> tuple[dict[str, dict[str, tuple[Slice | SourceGap, CallOutcome]]],
                        list[tuple[CustomerRef, list[str]]]]:
        """The chunk's slices read in bulk, per customer id and slice name, and what is left
        to read one by one (per customer, the slice names)."""
        got: dict[str, dict[str, tuple[Slice | SourceGap, CallOutcome]]] = defaultdict(dict)
        left: dict[str, list[str]] = defaultdict(list)
        refs = {ref.customer_id: ref for ref, _ in jobs}
        by_source: dict[str, dict[str, list[CustomerRef]]] = defaultdict(lambda: defaultdict(list))
        for ref, names in jobs:
            for n in names:
                by_source[SLICE_MODELS[n].source][n].append(ref)
        if self.access.filters_rows:  # never for a refresh (admin); a row filter is judged per customer
            by_source, left = {}, {ref.customer_id: list(names) for ref, names in jobs}
        for source, wanted in by_source.items():
            results = self._source(source, wanted)
            for (cid, name), result in (results or {}).items():
                if result is None:
                    left[cid].append(name)
                else:
                    got[cid][name] = result
            if results is None:
                for name, customers in wanted.items():
                    for ref in customers:
                        left[ref.customer_id].append(name)
        return got, [(refs[cid], names) for cid, names in left.items()]

    def _source(self, source: str, wanted: dict[str, list[CustomerRef]],
                ) -> dict[tuple[str, str], tuple[Slice | SourceGap, CallOutcome] | None] | None:
        """One source's bulk read: per (customer, slice) the admitted result, or None where it
        must be read alone; None for all when the source cannot be read in bulk."""
        try:
            rdr = reader(self.settings, source)
        except (MappingError, ValueError):
            return None
        if rdr is None or not rdr.batchable:
            return None
        batch = self.batches.setdefault(source, RowBatch())
        n = sum(len(c) for c in wanted.values())
        results, outcome, _ = self.guard.call(
            source, f"{source} bulk read of {n} slices", lambda: rdr.read_many(wanted, self.clock, batch),
            max(BULK_TIMEOUT_S, self.settings.source(source).timeout_s or 0))
        if outcome.status != "ok":
            return None
        ms = outcome.latency_ms / max(1, n)
        out: dict[tuple[str, str], tuple[Slice | SourceGap, CallOutcome] | None] = {}
        self.memory.put_many((cid, r) for (cid, _), r in results.items() if isinstance(r, Slice))
        for (cid, name), result in results.items():
            if isinstance(result, Slice):
                out[cid, name] = (self.access.admit(cid, result, ms), CallOutcome(source, name, "ok", ms, 1))
            elif isinstance(result, SliceNotFound):
                gap = SourceGap(slice=name, source=source, kind="not_found", message=str(result))
                self.buffer.forget(self.memory.namespace(cid), name)
                out[cid, name] = (self.access.admit(cid, gap, ms),
                                  CallOutcome(source, name, "not_found", ms, 1, str(result)))
            else:
                out[cid, name] = None
        return out
