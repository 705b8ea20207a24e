"""``POST /v1/customers/{ref}/facts`` and ``GET /v1/customers/{ref}/facts``: facts users supply.

What no connected source holds (onboarding status, NPS, budget) the assistant asks for; what a
caller tells us is kept in long-term memory with provenance ``user`` (the key's user and the
time), through the access gate and audited (``tools.facts``). The routes take the app's API-key
dependency and worker-thread runner from ``agent.interfaces.http`` (passed in, so this module
does not import the app that includes it). Errors are the app's one-line JSON errors: 404 a
customer the key may not see or that does not exist, 422 empty or over-long text.
"""

# No ``from __future__ import annotations``: the routes are defined inside facts_router, and FastAPI
# must see their annotations (the app's own caller dependency) evaluated, not as names to look up.
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from agent.interfaces.service import ContextService
from tools.access.principal import Principal
from tools.facts import MAX_FACT_CHARS


class FactBody(BaseModel):
    """A fact about the customer, in the caller's words."""

    text: str = Field(min_length=1, max_length=MAX_FACT_CHARS,
                      description="The fact, e.g. 'their onboarding finished last week'.")


def facts_router(caller: Callable[..., Principal],
                 run_service: Callable[[Request, Callable[[ContextService], Any]], Awaitable[Any]],
                 responses: dict[int | str, dict[str, Any]]) -> APIRouter:
    """The facts routes, authenticated by ``caller`` and run by ``run_service`` (the app's own)."""
    router = APIRouter()
    who_dep = Annotated[Principal, Depends(caller)]
    ref_param = Annotated[str, PathParam(description="Customer email, domain, id (c_..., crm:1001) or name.")]

    @router.post("/v1/customers/{ref}/facts", tags=["context"], responses=responses, status_code=201,
                 summary="Record a fact about a customer (provenance user: who, when)")
    async def add_fact(request: Request, who: who_dep, ref: ref_param, body: FactBody) -> dict[str, Any]:
        """Kept in long-term memory for the key's tenant, shown as told by the key's user; audited."""
        return await run_service(request, lambda s: s.note(ref, body.text, principal=who))

    @router.get("/v1/customers/{ref}/facts", tags=["context"], responses=responses,
                summary="The facts users supplied about a customer, oldest first")
    async def list_facts(request: Request, who: who_dep, ref: ref_param) -> dict[str, Any]:
        """Each with ``text``, ``by``, ``role``, ``at`` and ``provenance`` ``user``; audited."""
        return await run_service(request, lambda s: s.facts(ref, principal=who))

    return router
