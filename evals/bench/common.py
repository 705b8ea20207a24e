"""What every benchmark measure shares: the table's row, the report, percentiles, paired timing
of ours beside its floor, the machine's description."""

from __future__ import annotations

import json
import math
import os
import platform
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

Progress = Callable[[str, int, int], None]


@dataclass
class Row:
    """One line of the table."""

    measure: str
    ours: str
    baseline: str = ""
    ratio: float | None = None
    goal: str = ""
    met: bool | None = None
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchReport:
    customers: int  # in the warehouse (story + background)
    active: int  # in the active book (what a full refresh reads)
    machine: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    seconds: float = 0.0
    seed_seconds: float | None = None  # None: the warehouse was reused


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    """Milliseconds of ``n`` calls of ``fn``."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}", "sqlite": sqlite3.sqlite_version}


def rss_mb() -> float:
    """Resident set size of this process now, MB (Linux; 0 elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def paired(samples: Sequence[Any], ours: Callable[[Any], Any], floor: Callable[[Any], Any],
           ) -> tuple[list[float], list[float]]:
    """Milliseconds of ``ours(x)`` and ``floor(x)`` for every sample, interleaved and each first
    half of the time, so both see the same caches and load."""
    mine: list[float] = []
    base: list[float] = []
    for i, x in enumerate(samples):
        pair = [(mine, ours), (base, floor)]
        for into, fn in pair[::-1] if i % 2 else pair:
            into.extend(timed(partial(fn, x), 1))
    return mine, base


def figures(ours: list[float], floor: list[float]) -> tuple[float, float, float, float, float]:
    p50, f50 = percentile(ours, 50), percentile(floor, 50)
    return p50, percentile(ours, 99), f50, percentile(floor, 99), (p50 / f50 if f50 else 0.0)


@contextmanager
def driver_connection(url: str) -> Iterator[Any]:
    """A plain driver connection for a floor: ``sqlite3`` for a SQLite URL, else ``psycopg``
    (autocommit, statements prepared)."""
    if url.startswith("sqlite"):
        con = sqlite3.connect(url.split("///", 1)[1], check_same_thread=False)
        try:
            yield con
        finally:
            con.close()
        return
    import psycopg
    from sqlalchemy.engine import make_url

    with psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False),
                         autocommit=True, prepare_threshold=0) as pg:
        yield pg


def raw_json_rows(con: Any, sql: str, params: Sequence[Any]) -> dict[str, Any]:
    """``{key: decoded value}`` of a floor's ``SELECT key, value`` (``?`` placeholders; a JSONB
    value comes back decoded from psycopg already)."""
    if not isinstance(con, sqlite3.Connection):
        sql = sql.replace("?", "%s")
    return {k: (json.loads(v) if isinstance(v, str | bytes) else v) for k, v in con.execute(sql, params)}
