"""The checks the interfaces make before and around the service (``agent.interfaces.service``
re-exports every name here): the typed errors each interface turns into its own kind (an MCP
tool error, an HTTP status), a session's reference, the server's principal and role, the API
key file the HTTP API and LangGraph's server authentication read (:func:`load_api_keys`), and
a ticket given in a request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tools.access.principal import Principal
from tools.settings import Settings
from tools.sources.tickets import TicketInput, check_ticket_input


class ConfigError(ValueError):
    """A server cannot start with this configuration; the message says what to fix."""


class InvalidRequest(ValueError):
    """The caller's input cannot be used; the message says what to change."""


class WorkflowFailed(RuntimeError):
    """A workflow ran but could not produce a result (e.g. the ticket names no known customer)."""


class NotAvailable(RuntimeError):
    """A capability this build does not have yet (the message names it)."""


def session_reference(customer: str | None = None, user_id: str | None = None,
                      anonymous_id: str | None = None) -> str:
    """The customer reference of a request that names a customer, or the session's person instead:
    an application user id (``user:<id>``) or a Segment anonymous id (``anon:<id>``).

    Raises:
        InvalidRequest: none, or more than one, of the three is given.
    """
    given = [(p, v.strip()) for p, v in (("", customer), ("user:", user_id), ("anon:", anonymous_id))
             if v is not None and v.strip()]
    if len(given) != 1:
        raise InvalidRequest("name exactly one of: customer (an email, a domain, an id or a name), "
                             "user_id (the application's user id) or anonymous_id (the Segment anonymous id)")
    prefix, value = given[0]
    return prefix + value


def mcp_principal(settings: Settings) -> Principal:
    """The MCP server's principal: from configuration (``CUSTCTX_MCP__ROLE`` / ``__USER``)."""
    return Principal(tenant=settings.tenant, user=settings.mcp.user, role=settings.mcp.role, interface="mcp")


def policy_errors() -> tuple[type[Exception], ...]:
    """The access policy's error for a role it does not define (none before the policy exists)."""
    try:
        from tools.access.policy import UnknownRole
    except ImportError:
        return ()
    return (UnknownRole,)


def check_role(settings: Settings, role: str) -> None:
    """Fail at start-up, not on every call, when the access policy does not define ``role``.

    Raises:
        ConfigError: the role is unknown or the policy file cannot be used.
    """
    try:
        from tools.access.policy import PolicyError, load_policy
    except ImportError:
        return
    policy = getattr(settings, "policy", None)
    try:
        load_policy(str(policy) if policy else None).role(role)
    except PolicyError as exc:
        raise ConfigError(str(exc)) from None


# ------------------------------------------------------------------ API keys
# The key file is shared by the HTTP API and the authentication of LangGraph's server
# (agent/interfaces/langgraph_auth.py): one file says who each key is, whichever door it knocks on.
_HEX_DIGEST = re.compile(r"^(?:sha256:)?([0-9a-f]{64})$")


class ApiKeyFileError(ConfigError):
    """The API key file cannot be used; the message names the file and the problem."""


def key_digest(key: str) -> str:
    """The SHA-256 hex digest of an API key: what the key file stores."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiKeys:
    """API keys (kept as SHA-256 digests only) → principals, compared in constant time."""

    def __init__(self, entries: dict[str, Principal]):
        self._entries = list(entries.items())

    def __len__(self) -> int:
        return len(self._entries)

    def roles(self) -> set[str]:
        return {p.role for _, p in self._entries}

    def principal(self, key: str) -> Principal | None:
        digest = key_digest(key)
        found = None
        for stored, principal in self._entries:  # every entry is compared: no early exit to time
            if hmac.compare_digest(stored, digest):
                found = principal
        return found

    def principal_of_digest(self, digest: str) -> Principal | None:
        """The principal of the key whose SHA-256 digest is ``digest`` (the web console's session
        keeps the digest, never the key)."""
        found = None
        for stored, principal in self._entries:
            if hmac.compare_digest(stored, digest):
                found = principal
        return found


def load_api_keys(path: Path | None, tenant: str, interface: str = "http") -> ApiKeys:
    """Read the key file: ``{<sha256 hex of the key>: {user, role, tenant?}}`` in YAML or JSON.

    An entry whose name is not 64 hex digits (optionally ``sha256:``-prefixed) is taken as the
    key itself and hashed on load (for development; the file then holds a secret). ``tenant``
    defaults to this server's tenant; ``interface`` is the one the principals call through (the
    audit log records it). No file: no keys, so every call is refused.

    Raises:
        ApiKeyFileError: the file cannot be read or an entry lacks user or role.
    """
    if path is None:
        return ApiKeys({})
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))  # JSON is YAML too
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ApiKeyFileError(f"{path}: cannot read the API key file: {getattr(exc, 'strerror', None) or exc}") \
            from None
    if not isinstance(data, dict):
        raise ApiKeyFileError(f"{path}: expected a mapping of key digests to {{user, role, tenant}}")
    entries: dict[str, Principal] = {}
    for name, spec in data.items():
        where = f"{path}: entry {str(name)[:8]}…"
        if not isinstance(spec, dict) or not spec.get("user") or not spec.get("role"):
            raise ApiKeyFileError(f"{where} needs a user and a role")
        unknown = sorted(set(spec) - {"user", "role", "tenant"})
        if unknown:
            raise ApiKeyFileError(f"{where} has unknown field(s) {', '.join(unknown)}; known: user, role, tenant")
        m = _HEX_DIGEST.match(str(name).strip().lower())
        digest = m.group(1) if m else key_digest(str(name))
        entries[digest] = Principal(tenant=str(spec.get("tenant") or tenant), user=str(spec["user"]),
                                    role=str(spec["role"]), interface=interface)
    return ApiKeys(entries)


def ticket_input(settings: Settings, ticket_id: str | None, fields: dict[str, Any] | None) -> TicketInput | str:
    """The id of a support-source ticket (read by :meth:`ContextService.triage` as the caller may see
    it), or the ticket made of the given fields (subject, description, ...).

    Raises:
        InvalidRequest: neither or both given, or the fields are not a usable ticket.
        TicketNotFound / TicketSourceUnavailable: from the support source.
    """
    fields = {k: v for k, v in (fields or {}).items() if v is not None}
    if (ticket_id is None) == (not fields):
        raise InvalidRequest("give either a ticket id, or the ticket itself (subject and/or description, "
                             "requester_email), not both")
    if ticket_id is not None:
        return str(ticket_id)
    try:
        ticket = TicketInput.model_validate(fields)
    except ValidationError as exc:
        raise InvalidRequest("; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'ticket'}: {e['msg']}"
                                       for e in exc.errors())) from None
    try:
        check_ticket_input(ticket)  # no text, text over the limits, a requester email that is not one
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    return ticket
