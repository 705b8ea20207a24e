"""Calendar source: meetings with the customer's people, 60 days back to 30 days ahead."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

from sqlalchemy.engine import Connection

from tools.mapping.schema import CALENDAR_PAST_DAYS, CALENDAR_WINDOW_DAYS
from tools.slices import CalendarMeetings, Meeting
from tools.sources.base import CustomerRef, ReadClock, SourceReader, require_domains


class CalendarReader(SourceReader):
    source = "calendar"

    def read_meetings(self, conn: Connection, customer: CustomerRef, clock: ReadClock) -> CalendarMeetings:
        domains = require_domains(customer, self.source)
        days = timedelta(days=self.mapping.settings.get("window_days", CALENDAR_WINDOW_DAYS))
        # the past reaches further back than the future ahead: the engagement trend compares the
        # last 30 days with the 30 before (tools/signals.py)
        past = timedelta(days=self.mapping.settings.get("past_days", CALENDAR_PAST_DAYS))
        ids = [r["event_id"] for r in self.lookup(conn, "attendee", "domain", domains, fields=["event_id"]).rows]
        fetched = self.lookup(conn, "event", "id", ids,
                              window=("start", clock.as_of - max(days, past), clock.as_of + days),
                              order_by="start", descending=False)
        people: dict[str, list[str]] = defaultdict(list)
        event_ids = [e["id"] for e in fetched.rows]
        if event_ids:
            for r in self.lookup(conn, "attendee", "event_id", event_ids).rows:
                if r.get("email") is not None:
                    people[r["event_id"]].append(r["email"])
        meetings = [Meeting(id=e["id"], title=e.get("title"), start=e["start"], end=e.get("end"),
                            attendees=sorted(people[e["id"]]), upcoming=e["start"] > clock.as_of,
                            organizer=e.get("organizer"), agenda=e.get("agenda"))
                    for e in fetched.rows]
        return CalendarMeetings(provenance=self.provenance(clock, fetched.rows),
                                meetings=meetings)
