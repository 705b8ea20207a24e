"""Authentication and authorization of the graphs served by LangGraph's server.

``langgraph.json`` declares ``"auth": {"path": "agent.interfaces.langgraph_auth:auth",
"disable_studio_auth": true}``, so ``langgraph dev`` and LangGraph Platform run :data:`auth`
on every request:

- **Who asks.** The caller sends an API key (``X-API-Key: <key>`` or ``Authorization: Bearer
  <key>``) that the HTTP API's key file (``CUSTCTX_API_KEYS_FILE``, read once when the server
  starts) maps to a principal. The user the server keeps for the request — and puts in every
  run it creates — carries ``identity`` (the user), ``tenant`` and ``role``; the graphs read as
  that principal, interface ``langgraph`` (``agent.run_context.served_principal``). No key or
  an unknown key: 401. No key file configured: every request is refused (401).
- **What a run may set.** A run's ``context`` (or ``config.configurable``) holds run settings
  only — ``model``, ``max_plan_steps``, ``fresh``: any other key (``settings``, ``principal``,
  ``role``, ``user``, ``tenant``, …) is refused with 403 instead of being dropped.
- **Whose threads.** Threads (and their runs, state and history) belong to the principal that
  created them: stamped with its user, tenant and role, and filtered on them, so another
  key reads 404.
- **Nothing else.** The assistants are the deployment's graphs (read and search only); the
  store (long-term memory holds unmasked slices), crons (a scheduled run would lose its
  caller) and writes to assistants are refused with 403. Anything this module does not allow
  is denied (a default-deny handler), so a resource the server adds later is closed too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from langgraph_sdk import Auth

from agent.interfaces.service import ApiKeys, check_role, load_api_keys
from agent.run_context import RunContext, served_principal
from tools.access.principal import BadPrincipal, Principal
from tools.settings import Settings

RUN_SETTINGS = frozenset(f.name for f in fields(RunContext))
"""The only keys a run's context may carry: what ``RunContext`` defines."""
CALLER_KEYS = frozenset({"settings", "principal", "role", "user", "tenant"})
"""Keys that would say who asks or which settings apply: refused in ``config.configurable`` too
(where the server adds keys of its own, so only these are checked there)."""

NO_KEYS_FILE = ("this server has no API keys, so every request is refused: set CUSTCTX_API_KEYS_FILE to the key "
                "file (the HTTP API's format, docs/SERVING.md) and restart it")
NO_KEY = "an API key is required: send 'X-API-Key: <key>' or 'Authorization: Bearer <key>'"
UNKNOWN_KEY = "unknown API key"
NOT_RUN_SETTINGS = ("a run's context holds run settings only ({allowed}); refused: {keys}. Who asks and which "
                    "settings apply come from the API key and the server, never from the run")
NOT_SERVED = ("{what} is not available through this server: it serves the assistant, triage and review graphs "
              "and their threads (docs/SERVING.md)")
STORE_REFUSED = ("the store is not available through this server: long-term memory holds customer slices before "
                 "the access policy masks them; read customers through a graph run")

auth = Auth()


def server_keys(settings: Settings) -> ApiKeys | None:
    """The server's API keys (None when ``CUSTCTX_API_KEYS_FILE`` is not set: every request is refused).

    Raises:
        ApiKeyFileError: the key file cannot be used.
        ConfigError: a key's role is not defined by the access policy.
    """
    if settings.api_keys_file is None:
        return None
    keys = load_api_keys(settings.api_keys_file, settings.tenant, interface="langgraph")
    for role in keys.roles():
        check_role(settings, role)
    return keys


# Read once when the server loads this module: a bad key file or an unknown role stops the
# server at start-up, as it stops `custctx serve api`.
SETTINGS = Settings()
KEYS = server_keys(SETTINGS)


def api_key(headers: Mapping[bytes, bytes]) -> str | None:
    """The API key of a request: ``X-API-Key``, else ``Authorization: Bearer``."""
    if key := headers.get(b"x-api-key", b"").decode("latin-1").strip():
        return key
    scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def caller_user(principal: Principal) -> dict[str, Any]:
    """The user LangGraph's server keeps for a request (and puts in the runs it creates)."""
    return {"identity": principal.user, "display_name": principal.label(), "tenant": principal.tenant,
            "role": principal.role, "permissions": []}


def authenticated_user(keys: ApiKeys | None, headers: Mapping[bytes, bytes]) -> dict[str, Any]:
    """The caller the request's API key maps to.

    Raises:
        Auth.exceptions.HTTPException: 401 — no key file, no key, or an unknown key.
    """
    if keys is None:
        raise Auth.exceptions.HTTPException(401, NO_KEYS_FILE)
    key = api_key(headers)
    if not key:
        raise Auth.exceptions.HTTPException(401, NO_KEY)
    who = keys.principal(key)
    if who is None:
        raise Auth.exceptions.HTTPException(401, UNKNOWN_KEY)
    return caller_user(who)


@auth.authenticate
async def authenticate(headers: dict[bytes, bytes]) -> dict[str, Any]:
    """Every request: its API key → the caller (401 otherwise)."""
    return authenticated_user(KEYS, headers)


def caller(ctx: Auth.types.AuthContext) -> Principal:
    """The principal of an authorized request (403 for a user this module did not authenticate)."""
    try:
        return served_principal(SETTINGS, ctx.user)
    except BadPrincipal as exc:
        raise Auth.exceptions.HTTPException(403, str(exc)) from None


def owner(who: Principal) -> dict[str, str]:
    """The metadata that makes a thread the principal's (and the filter that finds its threads)."""
    return {"owner": who.user, "owner_tenant": who.tenant, "owner_role": who.role}


def refused_run_settings(kwargs: Mapping[str, Any]) -> list[str]:
    """The keys of a run's ``context`` that are no run settings, and any key of its
    ``config.configurable`` that names a caller or settings (sorted; empty when the run is fine)."""
    context = kwargs.get("context") or {}
    configurable = (kwargs.get("config") or {}).get("configurable") or {}
    return sorted((set(context) - RUN_SETTINGS) | (set(configurable) & CALLER_KEYS))


def _stamp(ctx: Auth.types.AuthContext, value: Any) -> dict[str, str]:
    """Stamp the caller as the owner of what ``value`` creates or updates; the owner filter."""
    mine = owner(caller(ctx))
    metadata = value.get("metadata")
    if not isinstance(metadata, dict):
        metadata = value["metadata"] = {}
    metadata.update(mine)
    return mine


@auth.on.threads.create_run
async def on_run(ctx: Auth.types.AuthContext, value: Auth.types.RunsCreate) -> Auth.types.FilterType:
    """A run: run settings only in its context; its (new) thread is the caller's, an existing one must be."""
    if refused := refused_run_settings(value.get("kwargs") or {}):
        raise Auth.exceptions.HTTPException(403, NOT_RUN_SETTINGS.format(
            allowed=", ".join(sorted(RUN_SETTINGS)), keys=", ".join(refused)))
    return _stamp(ctx, value)


@auth.on.threads.create
async def on_thread_create(ctx: Auth.types.AuthContext, value: Auth.types.ThreadsCreate) -> Auth.types.FilterType:
    """A new thread is the caller's."""
    return _stamp(ctx, value)


@auth.on.threads.update
async def on_thread_update(ctx: Auth.types.AuthContext, value: Auth.types.ThreadsUpdate) -> Auth.types.FilterType:
    """Only the owner updates a thread, and its metadata keeps saying so."""
    return _stamp(ctx, value)


@auth.on(resources=["threads"], actions=["read", "delete", "search"])
async def on_thread_access(ctx: Auth.types.AuthContext, value: Any) -> Auth.types.FilterType:
    """Threads, their runs, state and history: the caller's own only (another's reads 404)."""
    return owner(caller(ctx))


@auth.on(resources=["assistants"], actions=["read", "search"])
async def on_assistant_read(ctx: Auth.types.AuthContext, value: Any) -> None:
    """The deployment's graphs and their schemas: any authenticated caller may list and read them."""
    caller(ctx)


@auth.on.store
async def on_store(ctx: Auth.types.AuthContext, value: Any) -> None:
    """The store is long-term memory: never served to a client."""
    raise Auth.exceptions.HTTPException(403, STORE_REFUSED)


@auth.on
async def deny_the_rest(ctx: Auth.types.AuthContext, value: Any) -> None:
    """Default deny: crons, writes to assistants, anything not allowed above."""
    raise Auth.exceptions.HTTPException(403, NOT_SERVED.format(what=f"{ctx.resource}.{ctx.action}"))
