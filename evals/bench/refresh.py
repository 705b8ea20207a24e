"""Benchmark rows of the refresh, each beside its set-based floor measured in the same run.

* **Full refresh**: ``refresh_full`` of the active book, then :func:`floor_refresh` of the
  same book (``evals/bench/refresh_floor.py``: a few statements per slice over the whole
  set, one JSON row per (customer, slice), one audit row, one transaction). Goal: ≤ 1.5×.
* **Incremental refresh, 1% changed**: 1 in 100 active CRM accounts gets a new MRR and a
  newer sync stamp (never the customers other rows check); ``refresh_incremental`` (change
  detection, identity index maintenance, the changed customers' slices) beside the floor
  restricted to the changed customers (``WHERE key IN (...)``) and the slices the changed
  table feeds. Goals: ≤ 2× its floor and
  ≤ 3% of the full refresh.
* **Memory**: this process's resident set before and after the full refresh (worker
  processes come and go with it), so a refresh that held the book would show.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from evals.bench.common import Progress, Row, rss_mb
from evals.bench.refresh_floor import floor_refresh
from tools.settings import Settings
from tools.sources.registry import engine_for

CHANGED_SHARE = 0.01


def change_share(settings: Settings, share: float, unchanged: Sequence[str] = ()) -> int:
    """Touch 1 of every 1/share active CRM accounts (a new MRR, a newer sync stamp), none of
    the ``unchanged`` domains (the customers whose answers other rows check)."""
    from sqlalchemy import bindparam, text

    url = settings.source("crm").url
    assert url is not None
    step = max(1, round(1 / share))
    with engine_for(url).begin() as conn:
        newest = conn.execute(text("SELECT max(_fivetran_synced) FROM company")).scalar()
        later = datetime.fromisoformat(str(newest)) + timedelta(minutes=1)
        ids = [r[0] for r in conn.execute(text(
            "SELECT id FROM company WHERE NOT is_deleted AND property_customer_status = 'active' "
            "AND property_domain NOT IN :keep ORDER BY id").bindparams(bindparam("keep", expanding=True)),
            {"keep": list(unchanged) or [""]})]
        chosen = ids[::step]
        for i in range(0, len(chosen), 500):
            marks = ",".join(str(int(x)) for x in chosen[i:i + 500])
            conn.execute(text(f"UPDATE company SET property_mrr = coalesce(property_mrr, 0) + 1, "  # noqa: S608
                              f"_fivetran_synced = :t WHERE id IN ({marks})"), {"t": later})
    return len(chosen)


def measure_refresh(settings: Settings, memory: Any, progress: Progress | None,
                    unchanged: Sequence[str] = ()) -> tuple[list[Row], int]:
    """The full and the incremental refresh, each beside its floor; the active book's size."""
    from tools.book import list_accounts
    from tools.refresh.jobs import WATCHES, refresh_full, refresh_incremental
    from tools.sources.registry import resolve_as_of

    as_of = resolve_as_of(settings)
    rss_before = rss_mb()
    full = refresh_full(settings, memory, progress=progress)
    rss_after = rss_mb()
    book = [a.customer_id for a in list_accounts(settings)]
    floor = floor_refresh(settings, book, as_of)
    changed = change_share(settings, CHANGED_SHARE, unchanged)
    incr = refresh_incremental(settings, memory, progress=progress)
    # the same customers and the slices the changed table feeds (company: crm.account)
    fed = {n for w in WATCHES["crm"] if w.entity == "account" for n in w.slices}
    incr_floor = floor_refresh(settings, incr.refreshed, as_of, restrict=True, only=fed)
    full_ratio = full.seconds / floor["seconds"] if floor["seconds"] else 0.0
    incr_ratio = incr.seconds / incr_floor["seconds"] if incr_floor["seconds"] else 0.0
    share = incr.seconds / full.seconds if full.seconds else 0.0
    at_scale = full.customers >= 90_000
    rows = [
        Row("Full refresh", f"{full.seconds:.1f} s ({full.customers:,} customers, {full.slices_written:,} slices)",
            f"set-based floor: {floor['seconds']:.1f} s ({floor['statements']} statements)", round(full_ratio, 2),
            "≤ 1.5× the floor", full_ratio <= 1.5,
            {"seconds": full.seconds, "customers": full.customers, "slices": full.slices_written,
             "failures": full.failures, "floor": floor, "rss_mb_before": round(rss_before, 1),
             "rss_mb_after": round(rss_after, 1)}),
        Row("Incremental refresh, 1% changed", f"{incr.seconds:.2f} s ({incr.customers:,} customers)",
            f"floor for the same customers: {incr_floor['seconds']:.2f} s", round(incr_ratio, 2),
            "≤ 2× its floor", incr_ratio <= 2,
            {"seconds": incr.seconds, "customers": incr.customers, "changed": changed, "failures": incr.failures,
             "floor": incr_floor}),
        Row("Incremental refresh, share of the full one", f"{share:.1%}", f"full: {full.seconds:.1f} s",
            round(share, 4), "≤ 3% at 100,000 customers" + ("" if at_scale else " (measured below that)"),
            share <= 0.03, {"share": share}),
        Row("Refresh memory (this process)", f"{rss_after - rss_before:+.0f} MB over the full refresh",
            f"{rss_before:.0f} MB before", None, "flat in the book size", None,
            {"rss_mb_before": rss_before, "rss_mb_after": rss_after}),
    ]
    return rows, full.customers
