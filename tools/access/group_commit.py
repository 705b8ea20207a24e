"""Group commit: concurrent appenders' items written together, each caller back only once its
batch is committed.

A caller hands its items to :meth:`GroupCommit.submit` and blocks. Whoever finds no write in
progress becomes the writer: it takes *every* item queued so far (its own and those of the
callers that arrived meanwhile), writes them with one call of ``write`` (one transaction),
and wakes each caller of that batch — with nothing if the write committed, with the write's
exception if it failed. So a request is never acknowledged before its items are durable, and
under load N requests cost one transaction instead of N (each waits at most for the write in
progress and then its own batch's). No background thread: a process that stops appending
holds nothing, and a killed process loses only calls that had not returned.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class _Waiter(Generic[T]):
    __slots__ = ("done", "error", "items")

    def __init__(self, items: Sequence[T]):
        self.items = items
        self.done = False
        self.error: BaseException | None = None


class GroupCommit(Generic[T]):
    """Batches concurrent ``submit`` calls into one ``write`` per batch (see the module doc)."""

    def __init__(self, write: Callable[[list[T]], object], max_batch: int = 5_000):
        self._write, self.max_batch = write, max_batch
        self._cond = threading.Condition()
        self._queue: list[_Waiter[T]] = []
        self._writing = False
        self.batches = 0  # committed batches (a test and the benchmark count them)
        self.items = 0  # items in those batches

    def submit(self, items: Sequence[T]) -> None:
        """Write ``items`` with whatever else is queued; return once they are committed.

        Raises:
            Exception: whatever ``write`` raised for this caller's batch (nothing of it committed).
        """
        if not items:
            return
        me: _Waiter[T] = _Waiter(items)
        with self._cond:
            self._queue.append(me)
            self._cond.notify_all()  # (a test waits for callers to queue up)
        while True:
            with self._cond:
                while not me.done and self._writing:
                    self._cond.wait()
                if me.done:
                    break
                batch, self._queue = self._take()
                self._writing = True
            self._commit(batch)
        if me.error is not None:
            raise me.error

    def _commit(self, batch: list[_Waiter[T]]) -> None:
        """Write one batch (as its writer) and wake its callers, committed or failed."""
        error: BaseException | None = None
        try:
            self._write([x for w in batch for x in w.items])
        except BaseException as exc:  # every caller of the batch learns its write failed
            error = exc
        with self._cond:
            if error is None:
                self.batches += 1
                self.items += sum(len(w.items) for w in batch)
            for w in batch:
                w.done, w.error = True, error
            self._writing = False
            self._cond.notify_all()

    def _take(self) -> tuple[list[_Waiter[T]], list[_Waiter[T]]]:
        """The queue's head up to ``max_batch`` items (always at least the first caller's)."""
        n, size = 0, 0
        for w in self._queue:
            if n and size + len(w.items) > self.max_batch:
                break
            n, size = n + 1, size + len(w.items)
        return self._queue[:n], self._queue[n:]
