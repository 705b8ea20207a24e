"""Support source: ticket summary and recent tickets (Zendesk, ...)."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import Connection

from tools.mapping.engine import count_skipped
from tools.slices import SupportSummary, SupportTickets, Ticket
from tools.sources.base import CustomerRef, ReadClock, SourceReader

RECENT_TICKETS = 20


class SupportReader(SourceReader):
    source = "support"

    def _tickets(self, conn: Connection, org_id: str, clock: ReadClock, fields: list[str] | None = None,
                 limit: int | None = None) -> Any:
        return self.lookup(conn, "ticket", "organization_id", [org_id], window=("created_at", None, clock.as_of),
                           fields=fields, order_by="created_at", limit=limit)

    def _history(self, conn: Connection, ticket_ids: list[str]) -> list[dict[str, Any]]:
        return self.lookup(conn, "ticket_history", "ticket_id", ticket_ids, order_by="updated", descending=False).rows

    def read_summary(self, conn: Connection, customer: CustomerRef, clock: ReadClock) -> SupportSummary:
        org_id = self.anchor(customer)
        s = self.mapping.settings
        fetched = self._tickets(conn, org_id, clock, fields=["id", "status", "type", "created_at", "updated_at"])
        tickets = fetched.rows
        history = self._history(conn, [t["id"] for t in tickets])

        created = {t["id"]: t["created_at"] for t in tickets}
        solved_at: dict[str, Any] = {}
        csat: dict[str, float] = {}
        for h in history:
            if h["field"] == s.get("status_field", "status") and h.get("value") == s.get("solved_status", "solved"):
                solved_at.setdefault(h["ticket_id"], h["updated"])
            elif h["field"] == s.get("csat_field", "satisfaction_score"):
                try:
                    csat[h["ticket_id"]] = float(h["value"])  # the latest rating wins
                except (TypeError, ValueError):
                    count_skipped()  # an unreadable rating: left out, and counted
        hours = [(solved_at[t] - created[t]).total_seconds() / 3600 for t in solved_at if t in created]

        open_statuses = set(s.get("open_statuses", ["new", "open", "pending", "hold"]))
        open_tickets = [t for t in tickets if t["status"] in open_statuses]
        window_start = clock.as_of - timedelta(days=clock.settings.thresholds.repeat_window_days)
        recent_types = Counter(t["type"] for t in tickets if t["created_at"] > window_start and t.get("type"))
        repeat_type, repeat_n = recent_types.most_common(1)[0] if recent_types else (None, 0)
        newest = tickets[0] if tickets else None
        return SupportSummary(
            provenance=self.provenance(clock, tickets),
            organization_id=org_id,
            total_tickets=len(tickets),
            open_tickets=len(open_tickets),
            open_by_type=dict(Counter(t.get("type") or "other" for t in open_tickets)),
            avg_resolution_hours=round(sum(hours) / len(hours), 1) if hours else None,
            last_ticket_date=newest["created_at"] if newest else None,
            last_ticket_type=newest.get("type") if newest else None,
            csat=round(sum(csat.values()) / len(csat), 1) if csat else None,
            csat_responses=len(csat),
            repeat_issue_count=repeat_n if repeat_n > 1 else 0,
            repeat_issue_type=repeat_type if repeat_n > 1 else None,
        )

    def read_tickets(self, conn: Connection, customer: CustomerRef, clock: ReadClock) -> SupportTickets:
        org_id = self.anchor(customer)
        fetched = self._tickets(conn, org_id, clock, limit=RECENT_TICKETS)
        return SupportTickets(
            provenance=self.provenance(clock, fetched.rows),
            tickets=[Ticket(id=r["id"], subject=r.get("subject"), status=r.get("status"),
                            priority=r.get("priority"), type=r.get("type"), created_at=r.get("created_at"),
                            updated_at=r.get("updated_at"), body=r.get("body"))
                     for r in fetched.rows],
        )
