"""Support source: ticket summary and recent tickets (Zendesk, ...)."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy.engine import Connection

from tools.mapping.engine import count_skipped
from tools.mapping.schema import MAX_TICKET_COMMENTS, RECENT_TICKETS, SUPPORT_DEFAULTS
from tools.slices import SupportSummary, SupportTickets, Ticket, TicketComment
from tools.sources.base import CustomerRef, ReadClock, SliceNotFound, SourceReader


class SupportReader(SourceReader):
    source = "support"

    def _tickets(self, conn: Connection, customer: CustomerRef, clock: ReadClock, fields: list[str] | None = None,
                 limit: int | None = None) -> tuple[str, Any]:
        """The customer's tickets, newest first: their organization's, or — for a customer support
        knows only as people (no organization) — those they requested; with the id read by."""
        org_id, requesters = self.account_or_persons(customer)
        if org_id is None and not all(p.maps("requester_id") for p in self.mapping.entity("ticket").parts):
            raise SliceNotFound(f"no support organization for {customer.name}, and the {self.mapping.name} "
                                "mapping maps no ticket requester_id to find their own tickets by")
        field, keys, read_by = ("organization_id", [org_id], org_id) if org_id is not None else \
            ("requester_id", list(requesters), ",".join(f"support_user:{r}" for r in requesters))
        return read_by, self.lookup(conn, "ticket", field, keys, window=("created_at", None, clock.as_of),
                                    fields=fields, order_by="created_at", limit=limit)

    def _history(self, conn: Connection, ticket_ids: list[str]) -> list[dict[str, Any]]:
        return self.lookup(conn, "ticket_history", "ticket_id", ticket_ids, order_by="updated", descending=False).rows

    def read_summary(self, conn: Connection, customer: CustomerRef, clock: ReadClock) -> SupportSummary:
        s = self.mapping.settings

        def setting(key: str) -> Any:
            return s.get(key, SUPPORT_DEFAULTS[key])

        org_id, fetched = self._tickets(conn, customer, clock,
                                        fields=["id", "status", "type", "created_at", "updated_at"])
        tickets = fetched.rows
        history = self._history(conn, [t["id"] for t in tickets])

        created = {t["id"]: t["created_at"] for t in tickets}
        solved_at: dict[str, Any] = {}
        csat: dict[str, float] = {}
        for h in history:
            if h["field"] == setting("status_field") and h.get("value") == setting("solved_status"):
                solved_at.setdefault(h["ticket_id"], h["updated"])
            elif h["field"] == setting("csat_field"):
                try:
                    value: Any = h.get("value")  # null (or not mapped): unreadable, counted
                    csat[h["ticket_id"]] = float(value)  # the latest rating wins
                except (TypeError, ValueError):
                    count_skipped()  # an unreadable rating: left out, and counted
        hours = [(solved_at[t] - created[t]).total_seconds() / 3600 for t in solved_at if t in created]

        open_statuses = set(setting("open_statuses"))
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
        _, fetched = self._tickets(conn, customer, clock, limit=RECENT_TICKETS)
        comments = self._comments(conn, fetched.rows, clock)
        return SupportTickets(
            provenance=self.provenance(clock, fetched.rows),
            tickets=[Ticket(id=r["id"], subject=r.get("subject"), status=r.get("status"),
                            priority=r.get("priority"), type=r.get("type"), created_at=r.get("created_at"),
                            updated_at=r.get("updated_at"), body=r.get("body"), comments=comments[r["id"]])
                     for r in fetched.rows],
        )

    def _comments(self, conn: Connection, tickets: list[dict[str, Any]],
                  clock: ReadClock) -> dict[str, list[TicketComment]]:
        """The comments of ``tickets`` after their description, up to the as-of date, oldest first (an
        optional entity: none when the mapping leaves it out); the requester's are the customer's."""
        out: dict[str, list[TicketComment]] = defaultdict(list)
        requester = {t["id"]: t.get("requester_id") for t in tickets}
        opening = {t["id"]: (t.get("body") or "").strip() for t in tickets}
        if not requester:
            return out
        rows = self.lookup(conn, "ticket_comment", "ticket_id", list(requester),
                           window=("created_at", None, clock.as_of), order_by="created_at", descending=False).rows
        for c in rows:
            if (c.get("text") or "").strip() == opening[c["ticket_id"]]:
                continue  # the opening comment is the ticket's description, already its body
            who = c.get("author_id")
            author: Literal["customer", "agent"] | None = \
                None if who is None else "customer" if who == requester.get(c["ticket_id"]) else "agent"
            if len(out[c["ticket_id"]]) < MAX_TICKET_COMMENTS:
                out[c["ticket_id"]].append(TicketComment(author=author, public=c.get("public"),
                                                         created_at=c.get("created_at"), text=c.get("text")))
        return out
