"""Internal chat source: messages that mention the customer by name in the last 30 days."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func
from sqlalchemy.engine import Connection

from tools.mapping.engine import Fetched, count_skipped
from tools.slices import ChatMention, ChatMentions
from tools.sources.base import CustomerRef, ReadClock, SourceReader
from tools.sources.batch import in_batch

MAX_MENTIONS = 20


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class ChatReader(SourceReader):
    source = "chat"

    def read_mentions(self, conn: Connection, customer: CustomerRef, clock: ReadClock) -> ChatMentions:
        since = clock.as_of - timedelta(days=self.mapping.settings.get("window_days", 30))
        name = customer.name.lower()
        if in_batch():  # the window's messages once for the whole batch, matched here
            messages = self.mapping.entity("message")
            window = self.batched(conn, ("chat window", since, clock.as_of), [None], lambda c, _keys: {
                None: messages.rows(c, where=lambda p: p.within("ts", since, clock.as_of), order_by="ts")}, keep=True)[None]
            fetched = Fetched(rows=[r for r in window.rows if name in (r.get("text") or "").lower()][:MAX_MENTIONS])
            # the window's malformed rows that mention the customer, as the single read's filter finds them
            count_skipped(sum(name in str(r.get("text") or "").lower() for r in window.skipped_raw))
        else:
            needle = f"%{_like_escape(name)}%"
            fetched = self.mapping.entity("message").rows(
                conn,
                where=lambda p: [*p.within("ts", since, clock.as_of),
                                 func.lower(p.col("text")).like(needle, escape="\\")],
                order_by="ts", limit=MAX_MENTIONS)
        return ChatMentions(
            provenance=self.provenance(clock, fetched.rows),
            mentions=[ChatMention(id=r["id"], channel=r.get("channel"), author=r.get("author"),
                                  text=r.get("text"), ts=r["ts"]) for r in fetched.rows],
        )
