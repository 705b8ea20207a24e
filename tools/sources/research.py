"""External research source: company news of the last 30 days."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.engine import Connection

from tools.mapping.schema import NEWS_WINDOW_DAYS
from tools.slices import NewsArticle, ResearchNews
from tools.sources.base import CustomerRef, ReadClock, SourceReader, require_domains


class ResearchReader(SourceReader):
    source = "research"

    def read_news(self, conn: Connection, customer: CustomerRef, clock: ReadClock) -> ResearchNews:
        domains = require_domains(customer, self.source)
        since = clock.as_of - timedelta(days=self.mapping.settings.get("window_days", NEWS_WINDOW_DAYS))
        fetched = self.lookup(conn, "article", "domain", domains, window=("published_at", since, clock.as_of),
                              order_by="published_at")
        return ResearchNews(
            provenance=self.provenance(clock, fetched.rows),
            articles=[NewsArticle(id=r["id"], headline=r["headline"], date=r["published_at"], kind=r.get("kind"),
                                  url=r.get("url")) for r in fetched.rows],
        )
