"""Documents source: proposals, contracts, notes and plans filed for the customer."""

from __future__ import annotations

from sqlalchemy.engine import Connection

from tools.mapping.schema import MAX_DOCUMENTS
from tools.slices import Document, Documents
from tools.sources.base import CustomerRef, ReadClock, SourceReader, require_domains


class DocumentsReader(SourceReader):
    source = "documents"

    def read_documents(self, conn: Connection, customer: CustomerRef, clock: ReadClock) -> Documents:
        domains = require_domains(customer, self.source)
        fetched = self.lookup(conn, "document", "domain", domains, window=("updated", None, clock.as_of),
                              order_by="updated", limit=MAX_DOCUMENTS)
        return Documents(
            provenance=self.provenance(clock, fetched.rows),
            documents=[Document(id=r["id"], title=r.get("title"), kind=r.get("kind"), updated=r.get("updated"),
                                owner=r.get("owner"), url=r.get("url"), objectives=r.get("objectives"))
                       for r in fetched.rows],
        )
