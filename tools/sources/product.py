"""Product analytics source: active users, last login, feature adoption, trend (Segment, ...).

Aggregates are pushed down to SQL: one customer's events are counted by the
warehouse, never loaded into Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import bindparam, case, distinct, func, select, true
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Select

from tools.guard import MalformedSource
from tools.mapping.conversions import RowError, days_between
from tools.mapping.engine import IN_CHUNK, ROW_TAMPER, fetch_all, prepared
from tools.mapping.schema import LOGIN_EVENT, USAGE_DAYS, USAGE_RECENT_DAYS
from tools.slices import ProductUsage, UsageTrend
from tools.sources.base import CustomerRef, ReadClock, SliceNotFound, SourceReader


class ProductReader(SourceReader):
    source = "product"

    def read_usage(self, conn: Connection, customer: CustomerRef, clock: ReadClock) -> ProductUsage:
        """An account's usage: the events of its group's users; a customer product analytics knows
        only as people (application users in no group): the events of their own user ids."""
        group_id, users = self.account_or_persons(customer)
        login_event = self.mapping.settings.get("login_event", LOGIN_EVENT)
        if group_id is not None:
            members = [r["user_id"] for r in self.lookup(conn, "group", "group_id", [group_id],
                                                         fields=["user_id"]).rows if r.get("user_id") is not None]
            if not members:
                raise SliceNotFound(f"no product users for group {group_id}")
            read_by, ids = group_id, [group_id]
            usage = self.batched(conn, ("usage by group", clock.as_of, login_event), ids,
                                 lambda c, keys: self._usage_by(c, "group", keys, clock.as_of, login_event))[group_id]
        else:
            read_by, ids = ",".join(f"user:{u}" for u in users), [f"user:{u}" for u in users]
            per_user = self.batched(conn, ("usage by user", clock.as_of, login_event), list(users),
                                    lambda c, keys: self._usage_by(c, "user", keys, clock.as_of, login_event))
            usage = _combined([per_user[u] for u in users])
        events = self.mapping.entity("event").part
        window: Sequence[Any] = list(usage[:5])
        last_login = usage[5]
        features_known: list[str] = self.mapping.settings.get("features", [])
        used = sorted(set(usage[6]) & set(features_known))
        tamper = ROW_TAMPER.get()
        if tamper:
            window = tamper(events.table, ["users_30d", "users_7d", "last7", "prior7", "updated"], window)
        try:
            users30, users7, last7, prior7 = (int(v or 0) for v in window[:4])
            last_login_dt = events.fields["timestamp"].to_python(last_login) if last_login is not None else None
            updated = events.fields["updated_at"].to_python(window[4]) \
                if window[4] is not None and events.maps("updated_at") else None
        except (TypeError, ValueError, RowError) as exc:
            raise MalformedSource(f"product analytics returned malformed aggregates for {read_by}") from exc
        prov = self.provenance(clock, extra_ids=ids)
        prov.source_updated_at = updated
        return ProductUsage(
            provenance=prov,
            group_id=read_by,
            active_users_30d=users30,
            active_users_7d=users7,
            last_login=last_login_dt,
            days_since_login=days_between(last_login_dt, clock.as_of),
            features_used_30d=used,
            feature_adoption=round(len(used) / len(features_known), 2) if features_known else 0.0,
            events_last_7d=last7,
            events_prior_7d=prior7,
            trend=self.trend(last7, prior7, clock.settings.thresholds.trend_change),
        )

    def _usage_by(self, conn: Connection, by: str, keys: Sequence[Any], as_of: datetime,
                  login_event: str) -> dict[Any, tuple]:
        """Per group (``by="group"``: over the events of the group's users) or per user id
        (``"user"``: over their own events): (active users in 30 days, active users in 7 days,
        events in the last 7 days, events in the 7 before, newest update in 30 days, last login,
        event names of 30 days), raw values — aggregated by the warehouse (events are never
        loaded into Python), for many keys in one query."""
        events = self.mapping.entity("event").part
        src = events.fields["timestamp"].to_source
        # bind names d0, d7, d14, d30: as of, the recent window, the one before it, the usage window
        days = {"d0": 0, "d7": USAGE_RECENT_DAYS, "d14": 2 * USAGE_RECENT_DAYS, "d30": USAGE_DAYS}
        times = {name: src(as_of - timedelta(days=d)) for name, d in days.items()}
        out: dict[Any, tuple] = {k: (0, 0, 0, 0, None, None, set()) for k in keys}
        key = (self.mapping.entity("group").part.fields["group_id"] if by == "group"
               else events.fields["user_id"]).to_source
        for i in range(0, len(keys), IN_CHUNK):
            chunk = keys[i:i + IN_CHUNK]
            mine = {str(key(k)): k for k in chunk}  # raw key → as asked for
            values = {**times, "login": events.fields["event"].to_source(login_event),
                      **{f"g{j}": key(k) for j, k in enumerate(chunk)}}
            for what in ("stats", "names"):
                sql, bind = prepared(conn, (f"usage by {by}", id(self.mapping), what, len(chunk)),
                                     partial(self._usage_statement, by, what, len(chunk)))
                for raw, *figures in fetch_all(conn, sql, bind(values)):
                    if (k := mine.get(str(raw))) is None:
                        continue
                    if what == "stats":
                        out[k] = (*figures, set())
                    else:
                        out[k][6].add(figures[0])
        return out

    def _usage_statement(self, by: str, what: str, n: int) -> Select[Any]:
        """The usage aggregates (``stats``) or event names (``names``) of ``n`` groups or user ids
        (``by``), with bind parameters g0..g<n-1>, d0 (as of), d7, d14, d30 and login."""
        events = self.mapping.entity("event").part
        ts, user = events.col("timestamp"), events.col("user_id")
        now, d7, d14, d30 = (bindparam(f"d{d}", type_=ts.type) for d in (0, 7, 14, 30))
        asked: list[Any] = [bindparam(f"g{j}") for j in range(n)]
        if by == "group":
            groups = self.mapping.entity("group").part
            members = (select(groups.col("group_id").label("gid"), groups.col("user_id").label("uid"))
                       .select_from(groups.from_clause)
                       .where(groups.col("group_id").in_(asked))
                       .distinct().subquery("g"))
            joined: Any = events.from_clause.join(members, user == members.c.uid)
            gid: Any = members.c.gid
        else:
            joined, gid = events.from_clause, user
        in30 = (ts > d30) & (ts <= now)
        mine: Any = gid.in_(asked) if by == "user" else true()
        if what == "names":
            return select(gid, events.col("event")).distinct().select_from(joined).where(in30, mine)
        return select(
            gid,
            func.count(distinct(case((in30, user)))),
            func.count(distinct(case((ts > d7, user)))),
            func.sum(case((ts > d7, 1), else_=0)),
            func.sum(case((ts <= d7, case((ts > d14, 1), else_=0)), else_=0)),
            func.max(case((in30, events.col("updated_at")))),
            func.max(case((events.col("event") == bindparam("login"), ts))),
        ).select_from(joined).where(ts <= now, mine).group_by(gid)

    @staticmethod
    def trend(last7: int, prior7: int, change: float) -> UsageTrend:
        """Week-over-week event trend: ±``change`` counts as movement."""
        if last7 == 0 and prior7 == 0:
            return "no_activity"
        if prior7 == 0 or last7 >= prior7 * (1 + change):
            return "increasing"
        if last7 <= prior7 * (1 - change):
            return "declining"
        return "stable"



def _combined(figures: Sequence[tuple]) -> tuple:
    """One person's usage from that of each of their user ids: counts summed (distinct ids),
    the newest update and login, every event name."""
    def newest(i: int) -> Any:
        return max((f[i] for f in figures if f[i] is not None), default=None)

    return (*(sum(int(f[i] or 0) for f in figures) for i in range(4)), newest(4), newest(5),
            set().union(*(f[6] for f in figures)))
