"""Signed webhooks from Stripe, Zendesk and HubSpot → event refreshes of one customer.

Each provider's own signature scheme is verified on the raw body, with the secret from
settings (``CUSTCTX_WEBHOOKS__*``):

* **Stripe**: ``Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=...]``; ``v1`` is the
  HMAC-SHA256 (hex) of ``"<t>.<body>"`` with the endpoint secret; ``t`` must be within
  ``tolerance_s`` of now.
* **Zendesk**: ``X-Zendesk-Webhook-Signature`` is base64 HMAC-SHA256 of
  ``<X-Zendesk-Webhook-Signature-Timestamp> + <body>`` with the webhook's signing secret;
  the timestamp (ISO 8601) must be within ``tolerance_s``.
* **HubSpot** (v3): ``X-HubSpot-Signature-v3`` is base64 HMAC-SHA256 of
  ``<method><uri><body><X-HubSpot-Request-Timestamp>`` with the app's client secret; the
  timestamp (milliseconds) must be at most 5 minutes old.

A request without its signature headers is refused with 400 ``unsigned``; a signature
that does not verify, with 401 ``bad_signature``; a timestamp outside the window, with 401
``stale_signature``; a delivery seen before (the provider's event id, else the signature),
with 401 ``replayed`` — deliveries are claimed in the ``webhook_delivery`` table of the
state database, so two API processes cannot both take one. A verified delivery maps to the
event kinds of ``tools.refresh.jobs.EVENTS`` and the affected customer's identity key
(``billing:<customer>``, ``support:<organization>``, ``crm:<company>``); each is applied
with :func:`tools.refresh.jobs.refresh_event` as the refresh job, and the customer's book
row is recomputed. Event types nothing maps, and customers nobody knows, are answered
200 and listed as ignored (a provider retries any non-2xx answer).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Column, DateTime, MetaData, String, Table, delete, insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from tools.identity import CustomerNotFound, IdentityIndex, ReferenceError_
from tools.memory import ContextMemory
from tools.refresh.jobs import EVENTS, refresh_event
from tools.settings import Settings
from tools.sources.base import utcnow
from tools.sources.registry import engine_for

SYSTEMS = ("stripe", "zendesk", "hubspot")
HUBSPOT_WINDOW_S = 300  # HubSpot: "reject the request if the timestamp is older than 5 minutes"


class WebhookRefused(Exception):
    """A delivery that is not taken; answered ``{"error": code, "message": message}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Delivery:
    """A verified webhook delivery: its id and the (event kind, customer reference) it carries."""

    system: str
    delivery_id: str
    events: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ signatures
def _mac(secret: str, message: bytes) -> bytes:
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()


def _window(age_s: float, tolerance_s: float, system: str) -> None:
    if abs(age_s) > tolerance_s:
        raise WebhookRefused(401, "stale_signature", f"the {system} signature's timestamp is {abs(age_s):.0f} s "
                             f"from now, outside the {tolerance_s:.0f} s tolerance (a replay, or a clock off)")


def _header(headers: Mapping[str, str], name: str, system: str) -> str:
    value = headers.get(name) or headers.get(name.lower())
    if not value:
        raise WebhookRefused(400, "unsigned", f"the {system} webhook has no {name} header")
    return value


def verify_stripe(secret: str, headers: Mapping[str, str], body: bytes, now: float, tolerance_s: float) -> str:
    """Check ``Stripe-Signature``; returns the signature that matched."""
    raw = _header(headers, "Stripe-Signature", "stripe")
    parts = [p.split("=", 1) for p in raw.split(",") if "=" in p]
    stamps = [v.strip() for k, v in parts if k.strip() == "t"]
    sigs = [v.strip() for k, v in parts if k.strip() == "v1"]
    if len(stamps) != 1 or not stamps[0].isdigit() or not sigs:
        raise WebhookRefused(400, "unsigned", "the Stripe-Signature header needs t=<timestamp> and v1=<signature>")
    want = _mac(secret, stamps[0].encode() + b"." + body).hex()
    match = next((s for s in sigs if hmac.compare_digest(s.lower(), want)), None)
    if match is None:
        raise WebhookRefused(401, "bad_signature", "the Stripe-Signature does not match the body and the secret")
    _window(now - int(stamps[0]), tolerance_s, "Stripe")
    return match


def verify_zendesk(secret: str, headers: Mapping[str, str], body: bytes, now: float, tolerance_s: float) -> str:
    """Check ``X-Zendesk-Webhook-Signature`` (+ ``-Timestamp``); returns the signature."""
    sig = _header(headers, "X-Zendesk-Webhook-Signature", "zendesk").strip()
    stamp = _header(headers, "X-Zendesk-Webhook-Signature-Timestamp", "zendesk").strip()
    want = base64.b64encode(_mac(secret, stamp.encode() + body)).decode()
    if not hmac.compare_digest(sig, want):
        raise WebhookRefused(401, "bad_signature", "the X-Zendesk-Webhook-Signature does not match the timestamp, "
                             "the body and the secret")
    try:
        at = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        raise WebhookRefused(400, "unsigned", "X-Zendesk-Webhook-Signature-Timestamp is not an ISO 8601 time") \
            from None
    if at.tzinfo is None:
        raise WebhookRefused(400, "unsigned", "X-Zendesk-Webhook-Signature-Timestamp has no time zone")
    _window(now - at.timestamp(), tolerance_s, "Zendesk")
    return sig


def verify_hubspot(secret: str, headers: Mapping[str, str], body: bytes, now: float, method: str, uri: str) -> str:
    """Check ``X-HubSpot-Signature-v3`` (+ ``X-HubSpot-Request-Timestamp``); returns the signature."""
    sig = _header(headers, "X-HubSpot-Signature-v3", "hubspot").strip()
    stamp = _header(headers, "X-HubSpot-Request-Timestamp", "hubspot").strip()
    if not stamp.isdigit():
        raise WebhookRefused(400, "unsigned", "X-HubSpot-Request-Timestamp is not a time in milliseconds")
    message = method.upper().encode() + uri.encode() + body + stamp.encode()
    want = base64.b64encode(_mac(secret, message)).decode()
    if not hmac.compare_digest(sig, want):
        raise WebhookRefused(401, "bad_signature", "the X-HubSpot-Signature-v3 does not match the method, URI, "
                             "body, timestamp and the secret")
    _window(now - int(stamp) / 1000, HUBSPOT_WINDOW_S, "HubSpot")
    return sig


# ------------------------------------------------------------------ payloads → events
STRIPE_KINDS = {
    "customer.subscription.created": "subscription.created", "customer.subscription.updated": "subscription.updated",
    "customer.subscription.deleted": "subscription.deleted", "customer.updated": "subscription.updated",
    "payment_method.attached": "payment_method.updated", "payment_method.detached": "payment_method.updated",
    "payment_method.updated": "payment_method.updated", "invoice.payment_succeeded": "invoice.paid",
    "invoice.finalized": "invoice.created", "invoice.updated": "invoice.created",
}


def _payload(body: bytes, system: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise WebhookRefused(400, "invalid_payload", f"the {system} webhook body is not JSON") from None


def stripe_delivery(body: bytes, signature: str) -> Delivery:
    data = _payload(body, "stripe")
    if not isinstance(data, dict):
        raise WebhookRefused(400, "invalid_payload", "a Stripe event is a JSON object")
    d = Delivery("stripe", str(data.get("id") or signature)[:200])
    etype = str(data.get("type") or "")
    kind = etype if etype in EVENTS else STRIPE_KINDS.get(etype)
    obj = (data.get("data") or {}).get("object") if isinstance(data.get("data"), dict) else None
    obj = obj if isinstance(obj, dict) else {}
    customer = obj.get("customer") if isinstance(obj.get("customer"), str) else (
        obj.get("id") if obj.get("object") == "customer" else None)
    if kind is None:
        d.ignored.append(f"event type {etype[:80]!r} changes nothing custctx keeps")
    elif not customer:
        d.ignored.append(f"{etype} names no customer")
    else:
        d.events.append((kind, f"billing:{customer}"))
    return d


def zendesk_delivery(body: bytes, signature: str, headers: Mapping[str, str]) -> Delivery:
    data = _payload(body, "zendesk")
    if not isinstance(data, dict):
        raise WebhookRefused(400, "invalid_payload", "a Zendesk event is a JSON object")
    invocation = headers.get("X-Zendesk-Webhook-Invocation-Id") or headers.get("x-zendesk-webhook-invocation-id")
    d = Delivery("zendesk", str(data.get("id") or invocation or signature)[:200])
    etype = str(data.get("type") or "ticket.updated").removeprefix("zen:event-type:")
    detail = data.get("detail") if isinstance(data.get("detail"), dict) else data.get("ticket")
    detail = detail if isinstance(detail, dict) else data
    org = detail.get("organization_id")
    if not etype.startswith("ticket"):
        d.ignored.append(f"event type {etype[:80]!r} changes nothing custctx keeps")
    elif org in (None, ""):
        d.ignored.append(f"{etype} names no organization")
    else:
        status = str((data.get("event") or {}).get("current") or "") if isinstance(data.get("event"), dict) else ""
        kind = etype if etype in EVENTS else "ticket.solved" if status == "SOLVED" else "ticket.updated"
        d.events.append((kind, f"support:{org}"))
    return d


def hubspot_delivery(settings: Settings, body: bytes, signature: str) -> Delivery:
    data = _payload(body, "hubspot")
    events = data if isinstance(data, list) else [data]
    d = Delivery("hubspot", signature)
    for e in events[:100]:
        if not isinstance(e, dict):
            continue
        sub, oid = str(e.get("subscriptionType") or ""), str(e.get("objectId") or "")
        obj = sub.split(".", 1)[0]
        kind = {"company": "company.updated", "contact": "contact.updated", "deal": "deal.updated"}.get(obj)
        if kind is None or not oid:
            d.ignored.append(f"subscription {sub[:80]!r} changes nothing custctx keeps")
            continue
        company = oid if obj == "company" else _crm_account_of(settings, obj, oid)
        if company is None:
            d.ignored.append(f"{sub}: {obj} {oid[:40]} has no company in the CRM source")
        else:
            d.events.append((kind, f"crm:{company}"))
    return d


def _crm_account_of(settings: Settings, obj: str, oid: str) -> str | None:
    """The CRM company a contact or deal belongs to, through the CRM mapping."""
    from tools.mapping.loader import load_mapping

    cfg = settings.source("crm")
    if not cfg.url:
        return None
    entity = load_mapping(cfg.mapping or "crm").entities.get("contact" if obj == "contact" else "opportunity")
    if entity is None or not entity.has("account_id"):
        return None
    try:
        with engine_for(cfg.url).connect() as conn:
            rows = entity.rows(conn, where=lambda p: [p.in_("id", [oid])], fields=["id", "account_id"]).rows
    except SQLAlchemyError:
        return None
    return str(rows[0]["account_id"]) if rows and rows[0].get("account_id") is not None else None


# ------------------------------------------------------------------ replay protection
webhook_state = MetaData()
webhook_delivery = Table(
    "webhook_delivery", webhook_state,
    Column("tenant", String(100), primary_key=True),
    Column("system", String(20), primary_key=True),
    Column("delivery_id", String(200), primary_key=True),
    Column("received_at", DateTime, nullable=False),
)


def _claim(settings: Settings, d: Delivery) -> None:
    eng = engine_for(settings.state_db_url)
    webhook_state.create_all(eng)
    try:
        with eng.begin() as conn:
            conn.execute(insert(webhook_delivery).values(tenant=settings.tenant, system=d.system,
                                                         delivery_id=d.delivery_id, received_at=utcnow()))
    except IntegrityError:
        raise WebhookRefused(401, "replayed", f"this {d.system} delivery ({d.delivery_id[:60]}) was received "
                             "before") from None


def _release(settings: Settings, d: Delivery) -> None:
    t = webhook_delivery.c
    with engine_for(settings.state_db_url).begin() as conn:
        conn.execute(delete(webhook_delivery).where(t.tenant == settings.tenant, t.system == d.system,
                                                    t.delivery_id == d.delivery_id))


# ------------------------------------------------------------------ intake
def verify(settings: Settings, system: str, method: str, uri: str, headers: Mapping[str, str], body: bytes,
           now: float | None = None) -> Delivery:
    """Verify one delivery's signature and read the events it carries (raises WebhookRefused)."""
    if system not in SYSTEMS:
        raise WebhookRefused(404, "unknown_webhook", f"no webhook for {system[:40]!r}; systems: {', '.join(SYSTEMS)}")
    secret = getattr(settings.webhooks, f"{system}_secret")
    if secret is None:
        raise WebhookRefused(404, "webhook_not_configured", f"{system} webhooks are not configured (set "
                             f"CUSTCTX_WEBHOOKS__{system.upper()}_SECRET)")
    key, now = secret.get_secret_value(), time.time() if now is None else now
    tol = settings.webhooks.tolerance_s
    if system == "stripe":
        return stripe_delivery(body, verify_stripe(key, headers, body, now, tol))
    if system == "zendesk":
        return zendesk_delivery(body, verify_zendesk(key, headers, body, now, tol), headers)
    return hubspot_delivery(settings, body, verify_hubspot(key, headers, body, now, method, uri))


def handle(settings: Settings, memory: ContextMemory, system: str, method: str, uri: str,
           headers: Mapping[str, str], body: bytes, now: float | None = None,
           on_refresh: Callable[[str, str], None] | None = None) -> dict[str, Any]:
    """Verify, claim (once) and apply one delivery: each event refreshes its customer's slices and
    book row at once, as the refresh job. Raises WebhookRefused; a failure while refreshing
    releases the claim so the provider's retry is taken."""
    d = verify(settings, system, method, uri, headers, body, now)
    _claim(settings, d)
    index = IdentityIndex.for_settings(settings)
    refreshed, ignored = [], list(d.ignored)
    try:
        for kind, ref in dict.fromkeys(d.events):  # a batch (HubSpot) may name one company many times
            try:
                customer = index.resolve(ref)[0]
            except (CustomerNotFound, ReferenceError_):
                ignored.append(f"{kind}: no customer has {ref[:80]}")
                continue
            report = refresh_event(settings, memory, kind, customer.customer_id)  # + its book row
            refreshed.append({"kind": kind, "customer_id": customer.customer_id,
                              "slices_written": report.slices_written, "failures": report.failures})
            if on_refresh is not None:
                on_refresh(kind, customer.customer_id)
    except BaseException:
        _release(settings, d)
        raise
    return {"system": system, "delivery": d.delivery_id, "refreshed": refreshed, "ignored": ignored}
