"""The served read: a cached customer's context as the HTTP API serves it — resolve, the access
gate, the audit append, the reference view — beside the floor a feature store's online read
sets (Feast's ``get_online_features`` for one entity: one key-value read of stored values),
measured here as our own raw memory read of the same slices (one SQL statement, JSON decoded,
no validation, no gate, no audit).

Every record the measured reads appended is counted afterwards: the row fails if one is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

from sqlalchemy import func, select

from evals.bench.common import (
    Row,
    driver_connection,
    figures,
    paired,
    percentile,
    raw_json_rows,
    timed,
)
from tools.settings import Settings

#: What a cached customer's served read reads: the reference view's slices that memory serves
#: (``support.summary`` has a TTL of 0 — always read live — and is measured on its own).
SERVED_SLICES = ("crm.account", "crm.contacts", "billing.status", "product.usage")
SERVED_SAMPLES = 2_000
SERVED_CUSTOMERS = 200  # the working set: customers requested again and again, as an application does
BENCH_USER = "bench.served"


@contextmanager
def raw_memory_read(settings: Settings, tenant: str) -> Iterator[Callable[[str], dict[str, Any]]]:
    """The floor: ``SERVED_SLICES`` of one customer read from the store's table with the database
    driver alone (sqlite3, or psycopg for a PostgreSQL store), JSON decoded."""
    sql = f"SELECT key, value FROM store WHERE prefix = ? AND key IN ({', '.join('?' * len(SERVED_SLICES))})"
    with driver_connection(settings.state_db_url) as con:
        yield lambda cid: raw_json_rows(con, sql, (f"customers.{tenant}.{cid}", *SERVED_SLICES))


def visible_ids(settings: Settings, ids: Sequence[str]) -> list[str]:
    """The customers of ``ids`` the benchmark's ``support_agent`` may see (it does not see churned
    ones), in order — their first read, unmeasured."""
    from agent.runs import Runner
    from tools.access.principal import Principal
    from tools.identity import CustomerNotFound

    who = Principal(tenant=settings.tenant, user=BENCH_USER, role="support_agent", interface="http")
    seen = []
    with Runner(settings) as runner:
        for cid in ids:
            try:
                runner.customer_context(cid, list(SERVED_SLICES), principal=who)
            except CustomerNotFound:
                continue
            seen.append(cid)
    return seen


def _audit_count(settings: Settings) -> int:
    from tools.access.audit import audit_log_for, audit_log_table

    log = audit_log_for(settings)
    with log.engine.connect() as conn:
        c = audit_log_table.c
        return conn.execute(select(func.count()).where(c.tenant == settings.tenant, c.user_name == BENCH_USER)
                            ).scalar() or 0


def measure_served(settings: Settings, ids: Sequence[str]) -> Row:
    """``ids``: customers memory holds (a sample drawn with repeats); each read as the HTTP API's
    ``support_agent`` would (masking, row filter, audit), the view as the API returns it."""
    from agent.runs import Runner
    from tools.access.principal import Principal
    from tools.context.view import reference_view

    who = Principal(tenant=settings.tenant, user=BENCH_USER, role="support_agent", interface="http")
    with Runner(settings) as runner:
        def ours(cid: str, slices: Sequence[str] = SERVED_SLICES) -> dict[str, Any]:
            return reference_view(runner.customer_context(cid, list(slices), principal=who))

        for cid in dict.fromkeys(ids):  # warm-up: the process's caches, each customer's first resolution
            ours(cid)
        before = _audit_count(settings)
        with raw_memory_read(settings, settings.tenant) as floor_read:
            for cid in ids[:20]:
                assert set(floor_read(cid)) <= set(SERVED_SLICES), "the floor read other slices"
            mine, floor = paired(ids, ours, floor_read)
        with_summary = (*SERVED_SLICES, "support.summary")
        live = [t for cid in ids[: max(20, len(ids) // 10)] for t in timed(partial(ours, cid, with_summary), 1)]
        recorded = _audit_count(settings) - before
    # a read appends a row check (the role filters rows) and one record per slice
    expected = len(ids) * (1 + len(SERVED_SLICES)) + len(live) * (2 + len(SERVED_SLICES))
    p50, p99, f50, f99, ratio = figures(mine, floor)
    live50 = percentile(live, 50)
    return Row("Served context read, cached customer (resolve + gate + audit + view)",
               f"p50 {p50:.3f} ms, p99 {p99:.3f} ms (with live support.summary: p50 {live50:.2f} ms)",
               f"raw memory read of the same {len(SERVED_SLICES)} slices (Feast-like online read): "
               f"p50 {f50:.3f} ms, p99 {f99:.3f} ms", round(ratio, 2),
               "p50 ≤ 0.5 ms and ≤ 3× the floor, every audit record present",
               p50 <= 0.5 and ratio <= 3 and recorded == expected,
               {"p50_ms": p50, "p99_ms": p99, "floor_p50_ms": f50, "floor_p99_ms": f99, "samples": len(mine),
                "with_live_support_summary_p50_ms": live50, "slices": list(SERVED_SLICES),
                "audit_records": recorded, "audit_expected": expected, "role": who.role})
