"""Product analytics source: active users, last login, feature adoption, trend (Segment, ...).

Aggregates are pushed down to SQL: one customer's events are counted by the
warehouse, never loaded into Python.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.engine import Connection

from tools.guard import MalformedSource
from tools.mapping import IN_CHUNK, ROW_TAMPER, RowError, days_between
from tools.slices import ProductUsage
from tools.source import CustomerRef, ReadContext, SliceNotFound, SourceReader


class ProductReader(SourceReader):
    source = "product"

    def read_usage(self, conn: Connection, customer: CustomerRef, ctx: ReadContext) -> ProductUsage:
        group_id = self.anchor(customer)
        users = list(dict.fromkeys(r["user_id"] for r in self.lookup(
            conn, "group", "group_id", [group_id], fields=["user_id"]).rows if r.get("user_id") is not None))
        if not users:
            raise SliceNotFound(f"no product users for group {group_id}")
        login_event = self.mapping.settings.get("login_event", "logged_in")
        per_user = self.batched(conn, ("usage by user", ctx.as_of, login_event), users,
                                lambda c, keys: self._usage_by_user(c, keys, ctx.as_of, login_event))
        rows = [per_user[u] for u in users]
        events = self.mapping.entity("event").part
        window = [sum(r[0] for r in rows), sum(r[1] for r in rows), sum(r[2] for r in rows),
                  sum(r[3] for r in rows), _newest(r[4] for r in rows)]
        last_login = _newest(r[5] for r in rows)
        features_known: list[str] = self.mapping.settings.get("features", [])
        used = sorted({e for r in rows for e in r[6]} & set(features_known))
        tamper = ROW_TAMPER.get()
        if tamper:
            window = tamper(events.table, ["users_30d", "users_7d", "last7", "prior7", "updated"], window)
        try:
            users30, users7, last7, prior7 = (int(v or 0) for v in window[:4])
            last_login_dt = events.fields["timestamp"].to_python(last_login) if last_login is not None else None
            updated = events.fields["updated_at"].to_python(window[4]) if window[4] is not None else None
        except (TypeError, ValueError, RowError) as exc:
            raise MalformedSource(f"product analytics returned malformed aggregates for group {group_id}") from exc
        prov = self.provenance(ctx, extra_ids=[group_id])
        prov.source_updated_at = updated
        return ProductUsage(
            provenance=prov,
            group_id=group_id,
            active_users_30d=users30,
            active_users_7d=users7,
            last_login=last_login_dt,
            days_since_login=days_between(last_login_dt, ctx.as_of),
            features_used_30d=used,
            feature_adoption=round(len(used) / len(features_known), 2) if features_known else 0.0,
            events_last_7d=last7,
            events_prior_7d=prior7,
            trend=self.trend(last7, prior7, ctx.settings.thresholds.trend_change),
        )

    def _usage_by_user(self, conn: Connection, users: Sequence[Any], as_of: datetime,
                       login_event: str) -> dict[Any, tuple]:
        """Per user: (active in 30 days, active in 7 days, events in the last 7 days, events in the
        7 before, newest update in 30 days, last login, event names of 30 days), raw values.

        Aggregated by the warehouse (one user's events are never loaded into Python); a
        group's figures are sums, maxima and unions of its users' — a user is active when it
        has any event in the window, so counting active users counts distinct users.
        """
        events = self.mapping.entity("event").part
        ts, user = events.col("timestamp"), events.col("user_id")
        src = events.fields["timestamp"].to_source
        now, d7, d14, d30 = (src(as_of - timedelta(days=d)) for d in (0, 7, 14, 30))
        out: dict[Any, tuple] = {u: (0, 0, 0, 0, None, None, set()) for u in users}
        in30 = (ts > d30) & (ts <= now)
        key = events.fields["user_id"].to_source
        for i in range(0, len(users), IN_CHUNK):
            chunk = users[i:i + IN_CHUNK]
            mine = {str(key(u)): u for u in chunk}  # raw user id → as asked for
            stats = conn.execute(
                select(
                    user,
                    func.max(case((in30, 1), else_=0)),
                    func.max(case((ts > d7, 1), else_=0)),
                    func.sum(case((ts > d7, 1), else_=0)),
                    func.sum(case((ts <= d7, case((ts > d14, 1), else_=0)), else_=0)),
                    func.max(case((in30, events.col("updated_at")))),
                    func.max(case((events.eq("event", login_event), ts))),
                ).select_from(events.from_clause).where(events.in_("user_id", chunk), ts <= now).group_by(user))
            for raw, a30, a7, last7, prior7, updated, login in stats:
                if (u := mine.get(str(raw))) is not None:
                    out[u] = (int(a30 or 0), int(a7 or 0), int(last7 or 0), int(prior7 or 0), updated, login, set())
            names = conn.execute(select(user, events.col("event")).distinct().select_from(events.from_clause)
                                 .where(events.in_("user_id", chunk), in30))
            for raw, name in names:
                if (u := mine.get(str(raw))) is not None:
                    out[u][6].add(name)
        return out

    @staticmethod
    def trend(last7: int, prior7: int, change: float) -> str:
        """Week-over-week event trend: ±``change`` counts as movement."""
        if last7 == 0 and prior7 == 0:
            return "no_activity"
        if prior7 == 0 or last7 >= prior7 * (1 + change):
            return "increasing"
        if last7 <= prior7 * (1 - change):
            return "declining"
        return "stable"


def _newest(values: Iterable[Any]) -> Any:
    """The largest of raw values (None when there are none)."""
    present = [v for v in values if v is not None]
    return max(present) if present else None
