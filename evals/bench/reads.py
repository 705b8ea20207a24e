"""Reads beside their floors: the warm context lookup (memory vs. raw SQL + json) and the cold
assembly (the reference view from the sources vs. one hand-written query)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from evals.bench.common import Row, driver_connection, figures, paired, raw_json_rows
from tools.settings import Settings

#: The slices the reference view reads (its customer, billing, usage and support sections).
REFERENCE_VIEW_SLICES = ("crm.account", "crm.contacts", "billing.status", "product.usage", "support.summary")
WARM_SAMPLES = 2_000
COLD_SAMPLES = 300


def measure_warm(settings: Settings, memory: Any, ids: Sequence[str]) -> Row:
    from tools.slices import SLICE_NAMES

    prefix = f"customers.{memory.tenant}."
    sql = "SELECT key, value FROM store WHERE prefix = ?"
    with driver_connection(settings.state_db_url) as con:
        floor_n = [len(raw_json_rows(con, sql, (prefix + cid,))) for cid in ids[:50]]
        ours_n = [len(memory.get_many(cid, SLICE_NAMES)) for cid in ids[:50]]
        assert ours_n == floor_n, "the warm lookup and the floor read different slices"
        ours, floor = paired(ids, lambda cid: memory.get_many(cid, SLICE_NAMES),
                             lambda cid: raw_json_rows(con, sql, (prefix + cid,)))
    p50, p99, f50, f99, ratio = figures(ours, floor)
    return Row("Warm context lookup (memory, every slice)", f"p50 {p50:.3f} ms, p99 {p99:.3f} ms",
               f"raw SQL + json: p50 {f50:.3f} ms, p99 {f99:.3f} ms", round(ratio, 2),
               "p50 ≤ 3× floor, p99 ≤ 5 ms", ratio <= 3 and p99 <= 5,
               {"p50_ms": p50, "p99_ms": p99, "floor_p50_ms": f50, "floor_p99_ms": f99, "samples": len(ours),
                "slices_per_customer": round(sum(ours_n) / len(ours_n), 1)})



def measure_cold(settings: Settings, refs: Sequence[Any], as_of: datetime) -> Row:
    from evals.bench.sql import reference_row
    from tools.context.assembly import assemble_context
    from tools.context.scope import ReadScope
    from tools.context.view import reference_view
    from tools.sources.base import ReadClock

    scope = ReadScope.build(settings, ReadClock(as_of=as_of, settings=settings))
    crm_url = settings.source("crm").url
    if crm_url is None:  # the bench seeds its own warehouse, so this is a setup mistake
        raise RuntimeError("the cold-assembly bench needs the CRM source connected")

    def ours(ref: Any) -> dict[str, Any]:
        return reference_view(assemble_context(scope, ref, REFERENCE_VIEW_SLICES), include_slices=False)

    with driver_connection(crm_url) as con:
        for ref in refs[:20]:  # warm-up, and the two compute the same view
            view, row = ours(ref), reference_row(con, ref, as_of)
            assert floor_part(view, row) == row, f"the floor query disagrees for {ref.name}"
        mine, floor = paired(refs, ours, lambda ref: reference_row(con, ref, as_of))
    p50, p99, f50, f99, ratio = figures(mine, floor)
    return Row("Cold assembly (reference view from the sources)", f"p50 {p50:.2f} ms, p99 {p99:.2f} ms",
               f"one hand-written SQL query: p50 {f50:.2f} ms, p99 {f99:.2f} ms", round(ratio, 2),
               "≤ 3× the query (stretch 1.5×), p50 ≤ 25 ms", ratio <= 3 and p50 <= 25,
               {"p50_ms": p50, "p99_ms": p99, "floor_p50_ms": f50, "floor_p99_ms": f99, "samples": len(mine),
                "slices": list(REFERENCE_VIEW_SLICES)})


def floor_part(view: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """The part of ``view`` the floor computes: its keys, and within a section the floor's
    fields (the view may carry more, e.g. a mapping's custom fields)."""
    return {k: ({f: view[k].get(f) for f in row[k]} if isinstance(row[k], dict) and isinstance(view[k], dict)
                else view[k]) for k in row}
