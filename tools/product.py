"""Product analytics source: active users, last login, feature adoption, trend (Segment, ...).

Aggregates are pushed down to SQL: one customer's events are counted by the
warehouse, never loaded into Python.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import case, distinct, func, select
from sqlalchemy.engine import Connection

from tools.guard import MalformedSource
from tools.mapping import ROW_TAMPER, RowError, days_between
from tools.slices import ProductUsage
from tools.source import CustomerRef, ReadContext, SliceNotFound, SourceReader


class ProductReader(SourceReader):
    source = "product"

    def read_usage(self, conn: Connection, customer: CustomerRef, ctx: ReadContext) -> ProductUsage:
        group_id = self.anchor(customer)
        groups = self.mapping.entity("group").part
        events = self.mapping.entity("event").part
        users = select(groups.col("user_id")).select_from(groups.from_clause).where(groups.eq("group_id", group_id))
        if conn.execute(select(func.count()).select_from(users.subquery())).scalar_one() == 0:
            raise SliceNotFound(f"no product users for group {group_id}")

        ts, user = events.col("timestamp"), events.col("user_id")
        src = events.fields["timestamp"].to_source
        now, d7, d14, d30 = (src(ctx.as_of - timedelta(days=d)) for d in (0, 7, 14, 30))
        in_users = user.in_(users.scalar_subquery())
        window = conn.execute(
            select(
                func.count(distinct(user)),
                func.count(distinct(case((ts > d7, user)))),
                func.sum(case((ts > d7, 1), else_=0)),
                func.sum(case((ts <= d7, case((ts > d14, 1), else_=0)), else_=0)),
                func.max(events.col("updated_at")),
            ).select_from(events.from_clause).where(in_users, ts > d30, ts <= now)
        ).one()
        login_event = self.mapping.settings.get("login_event", "logged_in")
        last_login = conn.execute(
            select(func.max(ts)).select_from(events.from_clause)
            .where(in_users, events.eq("event", login_event), ts <= now)
        ).scalar_one()
        features_known: list[str] = self.mapping.settings.get("features", [])
        used = sorted(
            e for (e,) in conn.execute(
                select(events.col("event")).distinct().select_from(events.from_clause)
                .where(in_users, ts > d30, ts <= now))
            if e in features_known
        )
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
