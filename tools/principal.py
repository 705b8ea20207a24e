"""Who is asking: the principal every read is made for.

Access policy (which slices, fields and rows a role may read) and the audit trail are
built on this; every interface derives a principal — the CLI from ``--as ROLE[:USER]``,
MCP from its configuration, HTTP from the API key — and passes it down to the tools.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    """A caller: tenant, user, role and scope, plus the interface the call came through."""

    tenant: str
    user: str
    role: str
    scope: str = "customers"
    interface: str = "cli"

    def label(self) -> str:
        return f"{self.role}:{self.user}@{self.tenant}"
