"""Internal chat source: messages that mention the customer by name in the last 30 days."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import String, bindparam, func, select, type_coerce, union_all
from sqlalchemy.engine import Connection
from sqlalchemy.types import NullType

from tools.mapping.engine import (
    ROW_TAMPER,
    SKIP_TALLY,
    Entity,
    EntityPart,
    Fetched,
    count_skipped,
    order_rows,
    prepared,
)
from tools.slices import ChatMention, ChatMentions
from tools.sources.base import CustomerRef, ReadClock, SourceReader
from tools.sources.batch import in_batch

MAX_MENTIONS = 20
#: Names matched per statement (SQLite allows 500 terms in a compound SELECT).
NAMES_PER_STATEMENT = 400


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class ChatReader(SourceReader):
    source = "chat"

    def read_mentions(self, conn: Connection, customer: CustomerRef, clock: ReadClock) -> ChatMentions:
        since = clock.as_of - timedelta(days=self.mapping.settings.get("window_days", 30))
        name = customer.name.lower()
        if in_batch():  # every customer of the batch matched by the database in one statement
            lookup = MentionLookup(self.mapping.entity("message"), since, clock.as_of)
            fetched = self.batched(conn, ("mentions", since, clock.as_of), [name], lookup)[name]
            count_skipped(fetched.skipped)  # loaded without a tally: this customer's skipped rows
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


class MentionLookup:
    """The newest :data:`MAX_MENTIONS` messages of the window that mention each of many names,
    found by the database: the names as a derived table joined to the messages on
    ``lower(text) LIKE '%name%'`` and ranked per name (``ROW_NUMBER() OVER (PARTITION BY
    name ORDER BY ts DESC)``) — what the single read's query does for one name, for all of
    them at once, instead of matching every customer against every message in Python."""

    empty = Fetched  # a placeholder while a bulk read notes what its methods need

    def __init__(self, entity: Entity, since: datetime, until: datetime):
        self.entity, self.since, self.until = entity, since, until

    def __call__(self, conn: Connection, names: Sequence[str]) -> dict[str, Fetched]:
        out = {n: Fetched() for n in names}
        tamper = ROW_TAMPER.get()
        token = SKIP_TALLY.set(None)
        try:
            # the names split evenly over the statements (a chunk of 500: two of 250, padded to 256),
            # so every chunk of a refresh runs the same statement size: one compile, not one per remainder
            per = -(-len(names) // -(-len(names) // NAMES_PER_STATEMENT)) if names else 0
            for i in range(0, len(names), max(1, per)):
                self._match(conn, names[i:i + per], out, tamper)
        finally:
            SKIP_TALLY.reset(token)
        if len(self.entity.parts) > 1:
            for f in out.values():
                order_rows(f.rows, "ts", True, MAX_MENTIONS)
        return out

    def _match(self, conn: Connection, names: Sequence[str], out: dict[str, Fetched], tamper: Any) -> None:
        # padded to a power of two (or the most per statement) with NULL names, which match nothing: a
        # statement is built and compiled once per size and window, run with the names as parameters
        size = min(NAMES_PER_STATEMENT, 1 << max(0, len(names) - 1).bit_length())
        padded = [*names, *[None] * (size - len(names))]
        params = {f"n{j}": n for j, n in enumerate(padded)}
        params.update({f"p{j}": None if n is None else f"%{_like_escape(n)}%" for j, n in enumerate(padded)})
        for i, p in enumerate(self.entity.parts):
            fields = list(p.fields)
            sql, bind = prepared(conn, ("mentions", id(self.entity), i, size, self.since, self.until),
                                 partial(self._statement, p, fields, size))
            conv = p.converter(fields)
            for raw in conn.exec_driver_sql(sql, bind(params)):
                row = raw[:-1]
                out[raw[-1]].add_converted(conv, tamper(p.table, fields, row) if tamper else row)

    def _statement(self, p: EntityPart, fields: list[str], n: int) -> Any:
        """The part's statement for ``n`` names, bound as n0.. (the name) and p0.. (its pattern)."""
        # the names as a derived table (UNION ALL of one-row selects: every dialect reads it)
        wanted = union_all(*(select(bindparam(f"n{j}", type_=String).label("name"),
                                    bindparam(f"p{j}", type_=String).label("pattern"))
                             for j in range(n))).subquery("wanted")
        ts = p.col("ts")
        rank = func.row_number().over(partition_by=wanted.c.name, order_by=ts.desc().nulls_last())
        match = func.lower(p.col("text")).like(wanted.c.pattern, escape="\\")
        stmt = (select(*(type_coerce(p.col(f), NullType()).label(f) for f in fields),
                       wanted.c.name.label("_name_"), rank.label("_rank_"))
                .select_from(p.from_clause.join(wanted, match))
                .where(*p.filters(), *p.within("ts", self.since, self.until)))
        ranked = stmt.subquery("ranked")
        return select(*(ranked.c[f] for f in fields), ranked.c["_name_"]).where(ranked.c["_rank_"] <= MAX_MENTIONS)
