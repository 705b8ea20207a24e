"""Fault injection for tests, evals and demos.

``CUSTCTX_FAULTS="billing=down,product=slow:3s,support=flaky:0.5,crm=corrupt"``
wraps the real source readers:

* ``down`` — every call fails with a transient error (retried, then a gap);
* ``slow:<N>s`` — every call first waits N seconds on the guard's clock (beyond the
  source's timeout this is a ``timeout`` gap);
* ``flaky:<p>`` — each attempt fails with probability p (deterministic per seed);
* ``corrupt`` — about half the rows of every query a read makes come back as garbage
  (wrong types, nulls; which ones is deterministic per seed) and are skipped and
  counted by the mapping layer in the slice's ``skipped_rows``.
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from tools.guard import TransientSourceError, guarded_sleep
from tools.mapping.engine import ROW_TAMPER
from tools.settings import SOURCE_NAMES
from tools.slices import Slice
from tools.sources.base import CustomerRef, ReadClock, SourceReader

GARBAGE = "\x00garbage"
_FAULT = re.compile(r"^(down|corrupt|slow:(\d+(?:\.\d+)?)(ms|s)?|flaky:(0(?:\.\d+)?|1(?:\.0+)?))$")


class FaultSpecError(ValueError):
    pass


@dataclass(frozen=True)
class Fault:
    kind: Literal["down", "slow", "flaky", "corrupt"]
    seconds: float = 0.0
    rate: float = 0.0

    def __str__(self) -> str:
        return {"slow": f"slow:{self.seconds:g}s", "flaky": f"flaky:{self.rate:g}"}.get(self.kind, self.kind)


def parse_faults(spec: str | None) -> dict[str, Fault]:
    """``"billing=down,product=slow:3s"`` → {source: Fault}; a clear error on anything else."""
    faults: dict[str, Fault] = {}
    for item in (spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        source, sep, what = item.partition("=")
        source, what = source.strip(), what.strip().lower()
        if not sep or source not in SOURCE_NAMES:
            raise FaultSpecError(f"bad fault {item!r}: expected SOURCE=FAULT with SOURCE one of {', '.join(SOURCE_NAMES)}")
        m = _FAULT.match(what)
        if not m:
            raise FaultSpecError(f"bad fault {item!r}: expected down, corrupt, slow:<seconds>s or flaky:<0..1>")
        if what.startswith("slow"):
            faults[source] = Fault("slow", seconds=float(m.group(2)) / (1000 if m.group(3) == "ms" else 1))
        elif what.startswith("flaky"):
            faults[source] = Fault("flaky", rate=float(m.group(4)))
        elif what == "down":
            faults[source] = Fault("down")
        else:
            faults[source] = Fault("corrupt")
    return faults


class FaultyReader(SourceReader):
    """A real reader with a fault in front of it (read one customer at a time, fault by fault)."""

    batchable = False

    def __init__(self, inner: SourceReader, fault: Fault, seed: int = 7):  # noqa: D107
        self.inner, self.fault, self.seed = inner, fault, seed
        self.source = inner.source
        self.mapping, self.engine = inner.mapping, inner.engine
        self._calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def _rng(self, key: str) -> random.Random:
        # Deterministic per (seed, source, slice, customer, call number), whatever the thread order.
        with self._lock:
            n = self._calls[key] = self._calls.get(key, 0) + 1
        return random.Random(f"{self.seed}:{self.source}:{key}:{n}")

    def _strike(self, rng: random.Random) -> None:
        f = self.fault
        if f.kind == "down":
            raise TransientSourceError(f"injected fault: {self.source} is down")
        if f.kind == "flaky" and rng.random() < f.rate:
            raise TransientSourceError(f"injected fault: {self.source} dropped the connection")
        if f.kind == "slow":
            guarded_sleep(f.seconds)

    def ping(self) -> tuple[int, datetime | None]:
        self._strike(self._rng("ping"))
        return self.inner.ping()

    def read(self, slice_name: str, customer: CustomerRef, clock: ReadClock) -> Slice:
        f, rng = self.fault, self._rng(f"{slice_name}:{customer.customer_id}")
        self._strike(rng)
        if f.kind != "corrupt":
            return self.inner.read(slice_name, customer, clock)
        token = ROW_TAMPER.set(lambda _table, _names, raw: _corrupt(rng, raw))
        try:
            return self.inner.read(slice_name, customer, clock)
        finally:
            ROW_TAMPER.reset(token)


def _corrupt(rng: random.Random, raw: Sequence[Any]) -> Sequence[Any]:
    if rng.random() >= 0.5:
        return raw
    return [None if i == 0 else GARBAGE for i in range(len(raw))]
