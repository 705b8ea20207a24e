"""Deterministic fixture warehouse generator.

``seed(url)`` (re)creates every default source table (HubSpot, Stripe, Segment, Zendesk,
communication sources, plus ``_custctx_meta``) in any SQLAlchemy database and writes the
13 story customers of FIXTURES.md, the pinned and random background customers and the
labelled triage tickets (and, when asked, one large customer: ``large.py``). Same seed ⇒
identical rows; nothing reads the wall clock.

    python -m tools.embedded.generate sqlite:////tmp/warehouse.db --customers 100000
"""

from __future__ import annotations

import argparse
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Connection, MetaData, Table, create_engine
from sqlalchemy.schema import CreateTable

from . import tables as T
from .background import PINNED, Names, build, random_profile
from .builder import Builder
from .common import AS_OF, GENERATOR_VERSION
from .large import LargeCustomer, build_large
from .salesforce import seed_salesforce
from .story import STORY_BUILDERS
from .story_comms import build_story_comms, build_ticket_followups
from .triage import insert_triage

__all__ = ["AS_OF", "LargeCustomer", "SeedReport", "seed", "seed_salesforce"]

Progress = Callable[[str, int, int], None]
CHUNK_ROWS = 50_000
CUSTOMER_STEP = 500


@dataclass
class SeedReport:
    customers: int  # story + background
    rows: dict[str, int] = field(default_factory=dict)  # table name -> rows written
    seconds: float = 0.0
    story: int = 0
    background: int = 0  # pinned + random
    triage_tickets: int = 0
    large: bool = False  # the large customer was written too


class _Sink:
    """Buffers rows per table and bulk-inserts them (executemany) in chunks."""

    def __init__(self, conn: Connection, chunk: int = CHUNK_ROWS) -> None:
        self.conn, self.chunk = conn, chunk
        self.buf: dict[Table, list[dict]] = defaultdict(list)
        self.pending = 0
        self.counts: dict[str, int] = defaultdict(int)

    def __call__(self, table: Table, row: dict) -> None:
        self.buf[table].append(row)
        self.pending += 1
        if self.pending >= self.chunk:
            self.flush()

    def flush(self) -> None:
        for table, rows in self.buf.items():
            if rows:
                self.conn.execute(table.insert(), rows)
                self.counts[table.name] += len(rows)
        self.buf.clear()
        self.pending = 0
        self.conn.commit()


def _metadatas() -> tuple[MetaData, ...]:
    return (*T.DEFAULT_SOURCES, T.meta)


def seed(url: str, customers: int = 200, seed: int = 7,
         progress: Progress | None = None, large: LargeCustomer | None = None) -> SeedReport:
    """Drop and recreate the default source tables in ``url`` and fill them.

    ``customers`` background customers are written besides the 13 story ones; the first
    ``len(PINNED)`` of them are the fixed triage-context customers (always written, so the
    background count is at least that). ``large``: also write that one large customer,
    after every other (the benchmark's; the default fixtures never hold it).
    """
    started = time.perf_counter()
    report = progress or (lambda stage, done, total: None)
    engine = create_engine(url)
    sqlite = engine.dialect.name == "sqlite"
    background = max(customers, len(PINNED))
    try:
        with engine.connect() as conn:
            if sqlite:
                for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-262144",
                               "temp_store=MEMORY"):
                    conn.exec_driver_sql(f"PRAGMA {pragma}")
            tables = [t for md in _metadatas() for t in md.sorted_tables]
            for md in _metadatas():
                md.drop_all(conn)
            for i, t in enumerate(tables, 1):
                conn.execute(CreateTable(t))  # indexes are built after the load
                report("tables", i, len(tables))
            conn.commit()

            sink = _Sink(conn)
            rng = random.Random(seed)
            b = Builder(sink, rng)
            b.shared()
            for i, fn in enumerate(STORY_BUILDERS, 1):
                fn(b)
                report("story", i, len(STORY_BUILDERS))
            build_story_comms(b)
            for i, p in enumerate(PINNED, 1):
                build(b, p)
                report("background", i, background)
            triage = insert_triage(b)
            build_ticket_followups(b)  # a customer's comment on a labelled ticket (docs/SIGNALS.md)
            report("triage", triage, triage)
            b.register = False  # random customers are never looked up by name or email
            names = Names(rng)
            for i in range(len(PINNED) + 1, background + 1):
                build(b, random_profile(rng, names))
                if i % CUSTOMER_STEP == 0 or i == background:
                    report("background", i, background)
            if large is not None:
                build_large(b, large)
                report("large customer", 1, 1)
            sink.flush()

            indexed = [t for t in tables if t.indexes]
            for i, t in enumerate(indexed, 1):
                for idx in sorted(t.indexes, key=lambda x: x.name or ""):
                    idx.create(conn)
                conn.commit()
                report("indexes", i, len(indexed))
            meta = {"as_of": AS_OF.isoformat(), "seed": str(seed),
                    "background_customers": str(background), "generator_version": GENERATOR_VERSION,
                    "story_customers": str(len(STORY_BUILDERS)), "triage_tickets": str(triage)}
            if large is not None:
                meta["large_customer"] = large.key()
            conn.execute(T.custctx_meta.insert(), [{"key": k, "value": v} for k, v in meta.items()])
            sink.counts[T.custctx_meta.name] += len(meta)
            conn.commit()
            if sqlite:
                conn.exec_driver_sql("PRAGMA analysis_limit=1000")
                conn.exec_driver_sql("ANALYZE")
                conn.commit()
    finally:
        engine.dispose()
    return SeedReport(customers=len(STORY_BUILDERS) + background + (1 if large else 0),
                      rows=dict(sink.counts),
                      seconds=round(time.perf_counter() - started, 2), story=len(STORY_BUILDERS),
                      background=background, triage_tickets=triage, large=large is not None)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Seed the fixture warehouse.")
    ap.add_argument("url", help="SQLAlchemy URL, e.g. sqlite:////tmp/warehouse.db")
    ap.add_argument("--customers", type=int, default=200)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--salesforce", help="also write the Salesforce fixture to this URL")
    args = ap.parse_args(argv)
    last = [0.0]

    def progress(stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if done == total or now - last[0] > 2:
            last[0] = now
            print(f"{stage}: {done}/{total}", flush=True)

    rep = seed(args.url, args.customers, args.seed, progress)
    print(f"{rep.customers} customers, {sum(rep.rows.values())} rows in {rep.seconds} s")
    for name, n in sorted(rep.rows.items()):
        print(f"  {name:24} {n}")
    if args.salesforce:
        seed_salesforce(args.salesforce)


if __name__ == "__main__":
    main()
