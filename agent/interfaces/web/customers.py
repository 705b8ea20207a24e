"""Find a customer, the customer page (brief, traits, conflicts, source report, provenance), refresh
now, and the account review (rendered markdown, JSON download)."""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from agent.brief import render_brief
from agent.interfaces.web.render import WebError, call, page
from agent.interfaces.web.session import User, check_csrf
from tools.context.assembly import CustomerContext

router = APIRouter()
# The brief's own tail (conflicts, missing context, source report, provenance) is drawn by the
# page itself, side by side and with links; the brief is cut before it.
_TAIL_HEADINGS = ("\n### Conflicts", "\n### Missing Context")


def brief_head(ctx: CustomerContext) -> str:
    """The brief's sections from the snapshot to the context from sources (markdown)."""
    text = render_brief(ctx)
    cut = min((i for h in _TAIL_HEADINGS if (i := text.find(h)) >= 0), default=len(text))
    head = text[:cut]
    if facts := getattr(ctx, "user_facts", None):  # what users told us (provenance user), read through the gate
        head += "\n### Told by Users\n" + "".join(
            f"- {str(f['at'])[:10]} {f['by']} ({f['role']}, provenance user): “{f['text']}”\n" for f in facts)
    return head.split("\n", 1)[1] if head.startswith("## ") else head  # the page has its own title


def customer_url(customer_id: str) -> str:
    return f"/web/customers/{quote(customer_id, safe='')}"


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def home(request: Request, user: User) -> Response:
    return page(request, "find.html", query="")


@router.get("/find", response_class=HTMLResponse, include_in_schema=False)
async def find(request: Request, user: User, q: str = "") -> Response:
    """One search box: email, domain, id or name; several matches → candidates; none → closest names."""
    query = q.strip()
    if not query:
        return page(request, "find.html", query="")
    try:
        customer, _ = await call(request, lambda s: s.resolve(query, principal=user.principal))
    except WebError as exc:
        if exc.status in (404, 409, 422):  # shown on the search page itself, with the same status
            return page(request, "find.html", exc.status, query=query, error=exc)
        raise
    return RedirectResponse(customer_url(customer.customer_id), status_code=303)


@router.get("/customers/{ref}", response_class=HTMLResponse, include_in_schema=False)
async def customer(request: Request, user: User, ref: str) -> Response:
    ctx, may_refresh = await call(request, lambda s: (s.context(ref, principal=user.principal),
                                                      s.may_refresh(user.principal)))
    return customer_page(request, ctx, may_refresh)


def customer_page(request: Request, ctx: CustomerContext, may_refresh: bool, refreshed: bool = False) -> Response:
    return page(request, "customer.html", c=ctx, brief=brief_head(ctx), may_refresh=may_refresh,
                refreshed=refreshed, url=customer_url(ctx.customer_id))


@router.post("/customers/{ref}/refresh", response_class=HTMLResponse, include_in_schema=False)
async def refresh(request: Request, user: User, ref: str, csrf: Annotated[str, Form()] = "") -> Response:
    """Read every slice from its source now (roles with the policy's ``refresh`` permission)."""
    check_csrf(user, csrf)
    ctx = await call(request, lambda s: s.refresh_customer(ref, principal=user.principal))
    return customer_page(request, ctx, True, refreshed=True)


@router.get("/customers/{ref}/provenance/{slice_name}", response_class=HTMLResponse, include_in_schema=False)
async def provenance(request: Request, user: User, ref: str, slice_name: str) -> Response:
    """One slice as the role may see it: where it came from (system, record ids, times) and its data."""
    ctx = await call(request, lambda s: s.context(ref, [slice_name], principal=user.principal))
    got = ctx.slices.get(slice_name)
    data = got.model_dump(mode="json", exclude={"provenance"}) if got is not None else None
    gaps = [g for g in ctx.gaps if g.slice == slice_name]
    return page(request, "provenance.html", c=ctx, name=slice_name, got=got, gaps=gaps,
                data=json.dumps(data, indent=2, ensure_ascii=False) if data is not None else None,
                url=customer_url(ctx.customer_id))


async def _review(request: Request, user: User, ref: str) -> dict[str, Any]:
    return await call(request, lambda s: s.review(ref, principal=user.principal))


@router.get("/customers/{ref}/review", response_class=HTMLResponse, include_in_schema=False)
async def review(request: Request, user: User, ref: str) -> Response:
    """The account review as rendered markdown, with a download of the same as JSON."""
    result = await _review(request, user, ref)
    return page(request, "review.html", r=result, url=customer_url(result["customer_id"]))


@router.get("/customers/{ref}/review.json", include_in_schema=False)
async def review_json(request: Request, user: User, ref: str) -> Response:
    result = await _review(request, user, ref)
    name = "review-" + "".join(ch for ch in result["customer_id"] if ch.isalnum() or ch in "_-") + ".json"
    return Response(json.dumps(result, indent=2, ensure_ascii=False, default=str), media_type="application/json",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
