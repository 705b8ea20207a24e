"""Who is asking: the principal every read is made for.

Access policy (which slices, fields and rows a role may read, ``tools/access/policy.py``) and
the audit trail (``tools/access/audit.py``) are built on this; every interface derives a
principal — the CLI from ``--as ROLE[:USER]`` (else ``CUSTCTX_ROLE`` / ``CUSTCTX_USER``),
MCP from its configuration, HTTP from the API key — and passes it down to the tools.
"""

from __future__ import annotations

import getpass
import re
from dataclasses import dataclass
from typing import Any

LOCAL_INTERFACES = frozenset({"cli", "runner"})
"""Interfaces that run in the operator's own process, with the operator's credentials to
every source and the state database: their default role is ``admin`` (a narrower default
would protect nothing from someone who can open those databases). Any other interface
(MCP, HTTP, LangGraph's server) defaults to ``support_agent``."""

_NAME = re.compile(r"^[A-Za-z0-9_.@+-]{1,100}$")


class BadPrincipal(ValueError):
    """An ``--as`` value (or a configured principal) that cannot be used; the message says why."""


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


def local_user() -> str:
    """The operating-system login, or ``local`` when there is none (containers)."""
    try:
        return getpass.getuser() or "local"
    except (KeyError, OSError):
        return "local"


def default_principal(settings: Any, interface: str = "cli") -> Principal:
    """The principal of a call that names none: ``CUSTCTX_ROLE`` / ``CUSTCTX_USER`` when set,
    else ``admin`` as the local login for local interfaces and ``support_agent`` otherwise."""
    role = settings.role or ("admin" if interface in LOCAL_INTERFACES else "support_agent")
    user = settings.user or (local_user() if interface in LOCAL_INTERFACES else "anonymous")
    return Principal(tenant=settings.tenant, user=user, role=role, interface=interface)


def parse_as(text: str, settings: Any, interface: str = "cli") -> Principal:
    """``ROLE[:USER]`` (the CLI's ``--as``) → a principal of this process's tenant.

    Without ``:USER`` the user is ``CUSTCTX_USER`` or the local login. Whether the role
    exists is the policy's business (``tools.access.gate.Access`` raises ``UnknownRole``).

    Raises:
        BadPrincipal: an empty role, or a role or user with characters outside ``[A-Za-z0-9_.@+-]``.
    """
    role, _, user = (text or "").strip().partition(":")
    role, user = role.strip(), user.strip() or settings.user or local_user()
    for what, value in (("role", role), ("user", user)):
        if not _NAME.match(value):
            raise BadPrincipal(f"--as {text!r}: the {what} must be 1-100 letters, digits or . _ @ + - "
                               "(e.g. --as account_exec:dana.scully)")
    return Principal(tenant=settings.tenant, user=user, role=role, interface=interface)


def as_principal(value: Any, settings: Any, interface: str) -> Principal:
    """The principal of a run: the Principal the application passed, else the default of
    ``interface``. A dict (what a client of LangGraph's server could put in the run
    context) is refused: a caller must not choose its own role."""
    if isinstance(value, Principal):
        return value
    if value is None:
        return default_principal(settings, interface)
    raise BadPrincipal(f"a principal is set by the application as a Principal, not a {type(value).__name__} "
                       "from the run's input")
