"""``POST /v1/webhooks/{system}``: signed webhooks from Stripe, Zendesk and HubSpot (docs/SERVING.md).

No API key: a delivery is authenticated by its provider's signature over the raw body
(``tools.refresh.webhooks``), with the secret from ``CUSTCTX_WEBHOOKS__<SYSTEM>_SECRET``.
Refusals are one-line JSON errors: 400 ``unsigned`` / ``invalid_payload``, 401
``bad_signature`` / ``stale_signature`` / ``replayed``, 404 ``unknown_webhook`` /
``webhook_not_configured``. A verified delivery is applied at once (the event refresh of the
customer it names, as the refresh job) and answered 200 with what was refreshed or ignored.
"""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse

from agent.interfaces.service import ContextService
from tools.refresh.webhooks import SYSTEMS, WebhookRefused

router = APIRouter()

WEBHOOK_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "Unsigned (no signature headers), or a body that is not the provider's JSON."},
    401: {"description": "The signature does not verify, its timestamp is outside the tolerance, or the "
                         "delivery was received before (replayed)."},
    404: {"description": "An unknown system, or one whose signing secret is not configured."},
}


@router.post("/v1/webhooks/{system}", tags=["refresh"], responses=WEBHOOK_RESPONSES,
             summary="A signed webhook from Stripe, Zendesk or HubSpot: refresh the customer it names at once")
async def webhook(request: Request, system: Annotated[str, PathParam(
        description=f"The sending system: {', '.join(SYSTEMS)}.")]) -> Any:
    """Verified with the provider's own signature scheme (no API key); replays refused."""
    body = await request.body()
    svc: ContextService = request.app.state.service
    headers = {k: v for k, v in request.headers.items()}
    try:
        return await anyio.to_thread.run_sync(
            lambda: svc.webhook(system, request.method, str(request.url), headers, body),
            limiter=request.app.state.limiter)
    except WebhookRefused as exc:
        return JSONResponse({"error": exc.code, "message": exc.message}, status_code=exc.status)
