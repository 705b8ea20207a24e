"""Internal chat source: messages that mention the customer by name in the last 30 days."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func
from sqlalchemy.engine import Connection

from tools.slices import ChatMention, ChatMentions
from tools.source import CustomerRef, ReadContext, SourceReader

MAX_MENTIONS = 20


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class ChatReader(SourceReader):
    source = "chat"

    def read_mentions(self, conn: Connection, customer: CustomerRef, ctx: ReadContext) -> ChatMentions:
        since = ctx.as_of - timedelta(days=self.mapping.settings.get("window_days", 30))
        needle = f"%{_like_escape(customer.name.lower())}%"
        fetched = self.mapping.entity("message").rows(
            conn,
            where=lambda p: [*p.within("ts", since, ctx.as_of),
                             func.lower(p.col("text")).like(needle, escape="\\")],
            order_by="ts", limit=MAX_MENTIONS)
        return ChatMentions(
            provenance=self.provenance(ctx, fetched.rows, skipped=fetched.skipped),
            mentions=[ChatMention(id=r["id"], channel=r.get("channel"), author=r.get("author"),
                                  text=r.get("text"), ts=r["ts"]) for r in fetched.rows],
        )
