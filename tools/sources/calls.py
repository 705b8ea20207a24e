"""Conversation intelligence source: recent calls and their flagged key moments."""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import timedelta

from sqlalchemy.engine import Connection

from tools.mapping.schema import CALLS_WINDOW_DAYS, MAX_CALLS
from tools.slices import CallHighlights, CallSummary, KeyMoment
from tools.sources.base import CustomerRef, ReadClock, SourceReader, require_domains


def call_topics(raw: str | None) -> list[str]:
    """A call's topics as the recorder lands them: one text, topics separated by ``;`` or ``,``."""
    return list(dict.fromkeys(t.strip() for t in re.split(r"[;,]", raw or "") if t.strip()))


class CallsReader(SourceReader):
    source = "calls"

    def read_highlights(self, conn: Connection, customer: CustomerRef, clock: ReadClock) -> CallHighlights:
        domains = require_domains(customer, self.source)
        since = clock.as_of - timedelta(days=self.mapping.settings.get("window_days", CALLS_WINDOW_DAYS))
        ids = [r["call_id"] for r in self.lookup(conn, "participant", "domain", domains, fields=["call_id"]).rows]
        fetched = self.lookup(conn, "call", "id", ids, window=("started_at", since, clock.as_of),
                              order_by="started_at", limit=MAX_CALLS)
        call_ids = [c["id"] for c in fetched.rows]
        people: dict[str, list[str]] = defaultdict(list)
        moments: dict[str, list[KeyMoment]] = defaultdict(list)
        if call_ids:
            for r in self.lookup(conn, "participant", "call_id", call_ids).rows:
                if r.get("email") is not None:
                    people[r["call_id"]].append(r["email"])
            for r in self.lookup(conn, "highlight", "call_id", call_ids).rows:
                moments[r["call_id"]].append(KeyMoment(kind=r.get("kind") or "moment", text=r.get("text")))
        return CallHighlights(
            provenance=self.provenance(clock, fetched.rows),
            calls=[CallSummary(id=c["id"], title=c.get("title"), date=c["started_at"],
                               duration_minutes=round(c["duration_s"] / 60) if c.get("duration_s") else None,
                               participants=sorted(people[c["id"]]), talk_ratio=c.get("talk_ratio"),
                               moments=moments[c["id"]], topics=call_topics(c.get("topics")))
                   for c in fetched.rows],
        )
