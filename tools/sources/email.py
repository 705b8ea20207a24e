"""Email source: recent threads with the customer's domains, open questions, commitments."""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import timedelta

from sqlalchemy.engine import Connection

from tools.mapping.schema import EMAIL_WINDOW_DAYS, MAX_THREADS
from tools.slices import EmailMessage, EmailThread, EmailThreads
from tools.sources.base import CustomerRef, ReadClock, SourceReader, require_domains

_SENTENCE = re.compile(r"(?<=[.?!])\s+")
_COMMITMENT = re.compile(r"\b(?:we|i)\s+will\b|\b(?:we|i)'ll\b|\bwill\s+send\b", re.IGNORECASE)


def sentences(text: str | None) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text or "") if s.strip()]


class EmailReader(SourceReader):
    source = "email"

    def read_threads(self, conn: Connection, customer: CustomerRef, clock: ReadClock) -> EmailThreads:
        domains = require_domains(customer, self.source)
        since = clock.as_of - timedelta(days=self.mapping.settings.get("window_days", EMAIL_WINDOW_DAYS))
        ids = [r["message_id"] for r in self.lookup(conn, "recipient", "domain", domains,
                                                     fields=["message_id"]).rows]
        fetched = self.lookup(conn, "message", "id", ids, window=("sent_at", since, clock.as_of),
                              order_by="sent_at", descending=False)
        msg_ids = [m["id"] for m in fetched.rows]
        people: dict[str, set[str]] = defaultdict(set)
        if msg_ids:
            for r in self.lookup(conn, "recipient", "message_id", msg_ids).rows:
                if r.get("address") is not None:
                    people[r["message_id"]].add(r["address"])
        by_thread: dict[str, list[dict]] = defaultdict(list)
        for m in fetched.rows:
            by_thread[m["thread_id"]].append(m)
        threads = [self._thread(tid, msgs, people) for tid, msgs in by_thread.items()]
        threads.sort(key=lambda t: t.last_message_at or clock.as_of, reverse=True)
        return EmailThreads(provenance=self.provenance(clock, fetched.rows),
                            threads=threads[:MAX_THREADS])

    @staticmethod
    def _thread(tid: str, msgs: list[dict], people: dict[str, set[str]]) -> EmailThread:
        last = msgs[-1]
        questions: list[str] = []
        if last.get("direction") == "inbound":  # unanswered: the customer spoke last
            questions = [s for s in sentences(last.get("body")) if s.endswith("?")]
        commitments = [s for m in msgs for s in sentences(m.get("body")) if _COMMITMENT.search(s)]
        return EmailThread(
            thread_id=tid,
            subject=last.get("subject") or msgs[0].get("subject"),
            participants=sorted(set().union(*(people[m["id"]] for m in msgs))),
            messages=len(msgs),
            last_message_at=last["sent_at"],
            last_direction=last.get("direction"),
            last_message=last.get("body"),
            open_questions=questions,
            commitments=list(dict.fromkeys(commitments)),
            # their words, once: the last message's text is `last_message`
            history=[EmailMessage(sent_at=m["sent_at"], direction=m.get("direction"), sender=m.get("from_address"),
                                  text=m.get("body") if m.get("direction") == "inbound" and m is not last else None)
                     for m in msgs],
        )
