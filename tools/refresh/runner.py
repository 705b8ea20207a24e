"""Running a refresh: chunks of customers read (in bulk) and written to long-term memory.

The work of every refresh (``tools.refresh.jobs``) is a stream of ``(customer id, slice
names)``. It is cut into chunks of :data:`CHUNK` customers; each chunk is read in bulk,
source by source (:class:`_Bulk`, ``SourceReader.read_many``), whatever a bulk read
cannot answer is read again one customer at a time through ``read_slices``, the reads
are admitted and audited as the ``refresh`` job, and the chunk's writes go to the store
in one batch — so memory use is bounded by one chunk whatever the size of the book.

With ``workers`` > 1, chunks are handed to that many worker processes (each with its own
connections, store and audit batches; the report is the sum of theirs): reading and
building slices is CPU-bound Python, so threads do not add throughput but processes do.
"""

from __future__ import annotations

import functools
import gc
import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import select

from tools.access.gate import Access
from tools.access.principal import Principal
from tools.booktable.table import BOOK_SLICES, book_engine, materialise_refreshed
from tools.context.read import read_slices
from tools.context.scope import ReadScope, default_guard
from tools.guard import SourceGuard
from tools.identity import _ref as identity_ref
from tools.identity import identity_customer
from tools.mapping.engine import IN_CHUNK
from tools.memory import ContextMemory, open_store
from tools.refresh.bulk import BULK_TIMEOUT_S, _Bulk, _WriteBuffer
from tools.refresh.report import MAX_FAILED_LISTED, RefreshReport, SliceWrite, _Tally
from tools.settings import SOURCE_NAMES, Settings
from tools.slices import SLICE_MODELS, Slice, SourceGap
from tools.sources.base import CustomerRef, ReadClock, utcnow
from tools.sources.registry import config_fingerprint, engine_for, resolve_as_of

__all__ = ["BULK_TIMEOUT_S", "CHUNK", "MAX_FAILED_LISTED", "PARALLEL_FROM", "REFRESH_USER", "Progress",
           "RefreshReport", "SliceWrite", "default_workers", "refresh_access", "run_chunks"]

Progress = Callable[[str, int, int], None]

#: Customers read per chunk: one set-based read per source, one store write batch, bounded memory.
CHUNK = 500
#: Customers from which a refresh uses worker processes by default (below, starting them
#: costs more than they save).
PARALLEL_FROM = 2_000


def _connected(settings: Settings) -> list[str]:
    return [s for s in SOURCE_NAMES if settings.source(s).url]


def _refs(settings: Settings, ids: Sequence[str]) -> dict[str, CustomerRef]:
    c = identity_customer.c
    out: dict[str, CustomerRef] = {}
    with engine_for(settings.state_db_url).connect() as conn:
        for i in range(0, len(ids), IN_CHUNK):
            for row in conn.execute(select(identity_customer).where(c.customer_id.in_(list(ids[i:i + IN_CHUNK])))):
                ref = identity_ref(row._mapping)
                out[ref.customer_id] = ref
    return out


class _Stamp:
    """The wall clock read once per chunk (:meth:`tick`): every slice of the chunk is stamped with
    that reading (provenance ``fetched_at``, memory's ``stored_at``) instead of two readings per
    slice. A read outside a refresh reads its clock each time."""

    def __init__(self, clock: Callable[[], datetime]):
        self.clock = clock
        self.at = clock()

    def __call__(self) -> datetime:
        return self.at

    def tick(self) -> None:
        self.at = self.clock()


def _chunks(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    buf: list[Any] = []
    for item in items:
        buf.append(item)
        if len(buf) >= n:
            yield buf
            buf = []
    if buf:
        yield buf


_gc_lock = threading.Lock()
_gc_users = 0
_gc_was_enabled = False


@contextmanager
def gc_paused() -> Generator[None, None, None]:
    """The cyclic garbage collector paused while a chunk runs, restored after (nested and
    concurrent chunks share one pause; a collector someone else disabled stays disabled).

    A chunk keeps tens of thousands of new containers (rows, slices, snapshots) alive until it
    ends, so the collector's thresholds start full collections of the whole heap over and over
    while it runs (about a third of a full refresh's CPU); what a chunk makes is freed by
    reference counting when it ends, and any cycles it left are collected by the next
    automatic collection after the pause."""
    global _gc_users, _gc_was_enabled
    with _gc_lock:
        if _gc_users == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_users += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0 and _gc_was_enabled:
                gc.enable()


class _Chunks:
    """Reads chunks of ``(customer id, slice names)`` and writes them to memory (one per process)."""

    def __init__(self, settings: Settings, memory: ContextMemory, guard: SourceGuard | None, concurrency: int,
                 slice_parallel: bool = False, caller: Principal | None = None):
        self.settings, self.memory, self.slice_parallel = settings, memory, slice_parallel
        self.guard = guard or default_guard(settings)
        self.stamp = _Stamp(memory.clock)
        self.clock = ReadClock(as_of=resolve_as_of(settings), settings=settings, now=self.stamp)
        self.access = refresh_access(settings, memory.tenant, caller)
        self.buffer = _WriteBuffer(memory.store)
        self.buffered = ContextMemory(self.buffer, memory.tenant, memory.ttls, self.stamp, key=memory.key,
                                      config=memory.config)
        #: the book rows' slices of the connected sources (a book row is made of these)
        self.book_slices = [n for n in BOOK_SLICES if SLICE_MODELS[n].source in set(_connected(settings))]
        self.bulk = None if slice_parallel else _Bulk(settings, self.clock, self.guard, self.buffered, self.buffer,
                                                      self.access)
        # Refresh reads live, through the buffered memory (its writes land in one transaction per chunk).
        self.scope = ReadScope.build(settings, self.clock, access=self.access, memory=self.buffered, guard=self.guard,
                                     prefer_memory=False)
        self.pool = ThreadPoolExecutor(max_workers=max(1, concurrency))

    def close(self) -> None:
        self.pool.shutdown()

    def one(self, ref: CustomerRef, names: Sequence[str]) -> list[tuple[str, Slice | SourceGap, Any]]:
        """One customer's slices read alone (``read_slices``: guard, stale fallback, provenance)."""
        if self.slice_parallel:
            _, pairs = read_slices(self.scope, ref, list(names))
        else:  # one slice per call: read_slices reads it inline, and this pool is the only one
            pairs = [read_slices(self.scope, ref, [n])[1][0] for n in names]
        results = []
        for name, (got, outcome) in zip(names, pairs, strict=True):
            if outcome is not None and outcome.status == "not_found":
                self.buffer.forget(self.memory.namespace(ref.customer_id), name)
            results.append((name, got, outcome))
        return results

    def run(self, chunk: Sequence[tuple[str, Sequence[str]]], tally: _Tally) -> None:
        """Read a chunk, write its slices to memory in one batch, then its customers' book rows
        (the collector paused meanwhile: :func:`gc_paused`; the chunk's objects are gone when
        :meth:`_run` returns)."""
        with gc_paused():
            self._run(chunk, tally)

    def _run(self, chunk: Sequence[tuple[str, Sequence[str]]], tally: _Tally) -> None:
        self.stamp.tick()
        refs = _refs(self.settings, [cid for cid, _ in chunk])
        jobs: list[tuple[CustomerRef, Sequence[str]]] = []
        for cid, names in chunk:
            ref = refs.get(cid)
            if ref is None:  # gone from the identity index since it was listed
                tally.unknown(cid)
                continue
            jobs.append((ref, [n for n in names if self.access.allows(n)]))  # a caller's role: its slices
        statuses: dict[str, dict[str, str | None]] = {}  # customer id → slice → how its read ended
        with self.access.batch():  # the chunk's audit records in one transaction
            got, again = self.bulk.read(jobs) if self.bulk else ({}, jobs)
            futures = {ref.customer_id: self.pool.submit(self.one, ref, names) for ref, names in again if names}
            for ref, names in jobs:
                mine = got.get(ref.customer_id, {})
                extra = futures[ref.customer_id].result() if ref.customer_id in futures else []
                by_name = {**mine, **{n: (g, o) for n, g, o in extra}}
                tally.add(ref.customer_id, [(n, *by_name[n]) for n in names])
                statuses[ref.customer_id] = {n: o.status if o is not None else None
                                             for n, (_, o) in by_name.items()}
        self.book(statuses, self.buffer.flush())

    def book(self, statuses: dict[str, dict[str, str | None]], written: dict[tuple[tuple[str, ...], str], Slice],
             ) -> None:
        """The chunk's book rows (``tools.booktable``), in the tenant the refresh is for: made from
        the slices the chunk just wrote; what it did not write — a read that failed (memory keeps
        the last snapshot), a slice this refresh does not read — is read from memory. A slice of a
        source that is not connected is never part of a row (no context read serves one)."""
        tenant = self.access.tenant
        memory = self.memory if self.memory.tenant == tenant else self.memory.for_tenant(tenant)
        held: dict[str, dict[str, Slice]] = {}
        missing: dict[str, list[str]] = {}
        for cid, status in statuses.items():
            ns, have, need = memory.namespace(cid), {}, []
            for n in self.book_slices:
                if status.get(n) == "ok" and (s := written.get((ns, n))) is not None:
                    have[n] = s
                elif status.get(n) != "not_found":  # not_found: the snapshot was removed
                    need.append(n)
            held[cid] = have
            if need:
                missing[cid] = need
        materialise_refreshed(self.settings, memory, held, missing)


def run_chunks(settings: Settings, memory: ContextMemory, work: Iterable[tuple[str, Sequence[str]]],
               tally: _Tally, *, concurrency: int, guard: SourceGuard | None, progress: Progress | None,
               stage: str, total: int, slice_parallel: bool = False, workers: int = 1,
               caller: Principal | None = None) -> None:
    """Read ``(customer id, slices)`` live and write them to memory, a chunk at a time.

    Each chunk is read in bulk, one source at a time (:meth:`SourceReader.read_many`: a few
    queries for the whole chunk, each slice built by the reader's own code); what a bulk
    read cannot answer — a source whose bulk read fails, one customer's read that raises
    anything but not-found, a reader with an injected fault — is read again one customer
    at a time through ``read_slices``, ``concurrency`` customers at a time.
    ``slice_parallel``: one customer's slices in parallel, as a context read does (no bulk
    read). ``workers`` > 1: chunks go to that many processes (see the module docstring).
    ``caller``: the principal that asked for the refresh (reads and audit records are its; only
    the slices its role may read are refreshed); None: the ``refresh`` job as admin.
    """
    done = 0
    if progress:
        progress(stage, 0, total)

    def step(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(stage, done, max(total, done))

    if workers > 1 and not slice_parallel:
        _run_in_processes(settings, memory, work, tally, concurrency, workers, step, caller)
        return
    runner = _Chunks(settings, memory, guard, concurrency, slice_parallel, caller)
    try:
        for chunk in _chunks(work, CHUNK):
            runner.run(chunk, tally)
            step(len(chunk))
    finally:
        runner.close()


def default_workers(settings: Settings, customers: int) -> int:
    """Worker processes for a refresh of ``customers``: ``settings.refresh_workers``, or (0,
    automatic) one per core up to 4 from :data:`PARALLEL_FROM` customers on."""
    if settings.refresh_workers:
        return settings.refresh_workers
    return min(4, os.cpu_count() or 1) if customers >= PARALLEL_FROM else 1


# ------------------------------------------------------------------ worker processes
_worker: _Chunks | None = None


def _start_worker(settings: Settings, tenant: str, ttls: dict[str, int], key: bytes, concurrency: int,
                  caller: Principal | None = None) -> None:
    """A worker process's own store connection, guard, access gate and chunk runner."""
    import atexit
    from contextlib import ExitStack

    global _worker
    stack = ExitStack()
    atexit.register(stack.close)
    store = stack.enter_context(open_store(settings.state_db_url))
    memory = ContextMemory(store, tenant, ttls, key=key, config=functools.partial(config_fingerprint, settings))
    _worker = _Chunks(settings, memory, None, concurrency, caller=caller)


def _work(chunk: list[tuple[str, list[str]]], keep_customers: bool) -> dict[str, Any]:
    assert _worker is not None, "worker not started"
    tally = _Tally(RefreshReport(mode="part"), keep_customers=keep_customers, keep_writes=False)
    _worker.run(chunk, tally)
    return tally.part()


def _run_in_processes(settings: Settings, memory: ContextMemory, work: Iterable[tuple[str, Sequence[str]]],
                      tally: _Tally, concurrency: int, workers: int, step: Callable[[int], None],
                      caller: Principal | None = None) -> None:
    """Chunks to ``workers`` processes, at most two each in flight (bounded memory), merged in order."""
    if memory.clock is not utcnow:
        raise ValueError("a refresh with worker processes needs memory on the real clock")
    book_engine(settings)  # the book tables made here, once, not raced for by the workers' first chunks
    ctx = multiprocessing.get_context("spawn")  # no inherited connections or locks
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start_worker,
                             initargs=(settings, memory.tenant, dict(memory.ttls), memory.key, concurrency,
                                       caller)) as pool:
        inflight: deque[tuple[Future, int]] = deque()
        for chunk in _chunks(((cid, list(names)) for cid, names in work), CHUNK):
            inflight.append((pool.submit(_work, chunk, tally.keep_customers), len(chunk)))
            while len(inflight) >= 2 * workers:
                fut, n = inflight.popleft()
                tally.merge(fut.result())
                step(n)
        while inflight:
            fut, n = inflight.popleft()
            tally.merge(fut.result())
            step(n)


REFRESH_USER = "refresh"


def refresh_access(settings: Settings, tenant: str, caller: Principal | None = None) -> Access:
    """The gate a refresh reads through. Asked for by a principal (``caller``: an event over the HTTP
    API, ``custctx event --as``), the caller's own gate: its reads and audit records are the
    caller's (user, role, interface), and only the slices its role may read are refreshed. Else
    the scheduled job: the policy's ``admin`` role, user ``refresh``, interface ``refresh``. Either
    way memory gets full-fidelity slices (masking happens when memory is read) and every refresh
    read has its audit record like any other read."""
    if caller is not None:
        return Access.for_principal(settings, caller)
    return Access.for_principal(settings, Principal(tenant, REFRESH_USER, "admin", interface="refresh"))

