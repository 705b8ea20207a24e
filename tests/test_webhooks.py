"""Signed webhooks (tools/refresh/webhooks.py, POST /v1/webhooks/{system}): each provider's own
signature scheme, replays and unsigned requests refused, and a signed Stripe event refreshing one
customer at once through a real `custctx serve api` on loopback."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import create_engine, text

from agent.bootstrap import ready
from tools.booktable import BookQuery, find_customers
from tools.embedded.generate import seed
from tools.memory import ContextMemory, open_store
from tools.refresh.jobs import refresh_full
from tools.refresh.webhooks import (
    WebhookRefused,
    handle,
    hubspot_delivery,
    verify,
    verify_hubspot,
    verify_stripe,
    verify_zendesk,
    zendesk_delivery,
)
from tools.settings import Settings, WebhookSettings
from tools.sources.registry import dispose_engines

from .conftest import settings_for
from .test_mcp import custctx_cmd, free_port, server_env, stop, wait_until_up

NOW = 1_768_478_400  # 2026-01-15T12:00:00Z
STRIPE, ZENDESK, HUBSPOT = "whsec_test_5f2a", "zd-signing-secret", "hubspot-client-secret"
ADMIN = "k-admin-webhooks"


def stripe_headers(body: bytes, secret: str = STRIPE, t: int = NOW) -> dict[str, str]:
    sig = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={t},v1={sig},v0=deadbeef"}


def zendesk_headers(body: bytes, secret: str = ZENDESK, at: str = "2026-01-15T12:00:00Z") -> dict[str, str]:
    sig = base64.b64encode(hmac.new(secret.encode(), at.encode() + body, hashlib.sha256).digest()).decode()
    return {"X-Zendesk-Webhook-Signature": sig, "X-Zendesk-Webhook-Signature-Timestamp": at}


def hubspot_headers(body: bytes, uri: str, secret: str = HUBSPOT, ms: int = NOW * 1000) -> dict[str, str]:
    msg = b"POST" + uri.encode() + body + str(ms).encode()
    sig = base64.b64encode(hmac.new(secret.encode(), msg, hashlib.sha256).digest()).decode()
    return {"X-HubSpot-Signature-v3": sig, "X-HubSpot-Request-Timestamp": str(ms)}


def refused(fn, status: int, code: str) -> str:  # noqa: ANN001
    with pytest.raises(WebhookRefused) as exc:
        fn()
    assert (exc.value.status, exc.value.code) == (status, code), exc.value.message
    assert "\n" not in exc.value.message
    return exc.value.message


# ------------------------------------------------------------------ the signature schemes
def test_stripe_signature_verified_on_the_raw_body_with_a_tolerance():
    body = b'{"id": "evt_1", "type": "invoice.paid", "data": {"object": {"customer": "cus_0000001"}}}'
    assert verify_stripe(STRIPE, stripe_headers(body), body, NOW + 299, 300)
    refused(lambda: verify_stripe(STRIPE, stripe_headers(body, "whsec_other"), body, NOW, 300), 401, "bad_signature")
    refused(lambda: verify_stripe(STRIPE, stripe_headers(body), body + b" ", NOW, 300), 401, "bad_signature")
    refused(lambda: verify_stripe(STRIPE, stripe_headers(body), body, NOW + 301, 300), 401, "stale_signature")
    refused(lambda: verify_stripe(STRIPE, {}, body, NOW, 300), 400, "unsigned")
    refused(lambda: verify_stripe(STRIPE, {"Stripe-Signature": "v1=abc"}, body, NOW, 300), 400, "unsigned")


def test_zendesk_signature_is_base64_hmac_of_timestamp_and_body():
    body = b'{"type": "zen:event-type:ticket.created", "id": "e1", "detail": {"organization_id": "360001"}}'
    assert verify_zendesk(ZENDESK, zendesk_headers(body), body, NOW + 10, 300)
    refused(lambda: verify_zendesk(ZENDESK, zendesk_headers(body, "nope"), body, NOW, 300), 401, "bad_signature")
    stale = zendesk_headers(body, at="2026-01-15T11:50:00Z")
    refused(lambda: verify_zendesk(ZENDESK, stale, body, NOW, 300), 401, "stale_signature")
    refused(lambda: verify_zendesk(ZENDESK, {"X-Zendesk-Webhook-Signature": "x"}, body, NOW, 300), 400, "unsigned")
    d = zendesk_delivery(body, "sig", {})
    assert d.events == [("ticket.created", "support:360001")] and d.delivery_id == "e1"


def test_hubspot_v3_signs_method_uri_body_and_timestamp_within_five_minutes():
    uri = "https://api.example.com/v1/webhooks/hubspot"
    body = b'[{"eventId": 1, "subscriptionType": "company.propertyChange", "objectId": 1001}]'
    assert verify_hubspot(HUBSPOT, hubspot_headers(body, uri), body, NOW + 299, "POST", uri)
    refused(lambda: verify_hubspot(HUBSPOT, hubspot_headers(body, uri), body, NOW, "POST", uri + "?x=1"),
            401, "bad_signature")
    refused(lambda: verify_hubspot(HUBSPOT, hubspot_headers(body, uri), body, NOW + 301, "POST", uri),
            401, "stale_signature")
    refused(lambda: verify_hubspot(HUBSPOT, {}, body, NOW, "POST", uri), 400, "unsigned")
    d = hubspot_delivery(Settings(embedded=False), body, "sig")
    assert d.events == [("company.updated", "crm:1001")]


def test_unconfigured_and_unknown_systems_are_refused(tmp_path):
    settings = Settings(home=tmp_path, embedded=False, webhooks=WebhookSettings(stripe_secret=STRIPE))
    refused(lambda: verify(settings, "zendesk", "POST", "/", {}, b"{}", NOW), 404, "webhook_not_configured")
    refused(lambda: verify(settings, "github", "POST", "/", {}, b"{}", NOW), 404, "unknown_webhook")
    body = b"not json"
    refused(lambda: verify(settings, "stripe", "POST", "/", stripe_headers(body), body, NOW), 400, "invalid_payload")
    ignored = b'{"id": "evt_2", "type": "balance.available", "data": {"object": {}}}'
    d = verify(settings, "stripe", "POST", "/", stripe_headers(ignored), ignored, NOW)
    assert d.events == [] and "balance.available" in d.ignored[0]


# ------------------------------------------------------------------ in process: one customer at once
@pytest.fixture
def world(tmp_path_factory, tmp_path):
    url = f"sqlite:///{tmp_path_factory.mktemp('webhook-warehouse') / 'warehouse.sqlite'}"
    seed(url, customers=5)
    r = ready(settings_for(url, tmp_path, webhooks=WebhookSettings(stripe_secret=STRIPE, tolerance_s=300)))
    with open_store(r.settings.state_db_url) as store:
        yield r, ContextMemory.of(store, r.settings), url
    dispose_engines()


def test_a_signed_stripe_event_updates_one_customer_at_once_and_a_bad_signature_changes_nothing(world):
    r, memory, url = world
    acme, globex = (r.index.resolve(x)[0].customer_id for x in ("acme.com", "globex.com"))
    refresh_full(r.settings, memory, customers=[acme, globex])
    before = {c: memory.get(c, "billing.status").slice for c in (acme, globex)}
    eng = create_engine(url)
    with eng.begin() as conn:  # Acme pays at the source; memory (TTL 24 h) does not know yet
        conn.execute(text("UPDATE subscription SET status = 'active' WHERE customer_id = 'cus_0000001'"))
        conn.execute(text("UPDATE customer SET delinquent = 0 WHERE id = 'cus_0000001'"))
    eng.dispose()
    body = json.dumps({"id": "evt_1", "type": "customer.subscription.updated",
                       "data": {"object": {"id": "sub_0000001", "customer": "cus_0000001"}}}).encode()

    def deliver(headers: dict[str, str]) -> dict:
        return handle(r.settings, memory, "stripe", "POST", "http://x/v1/webhooks/stripe", headers, body, now=NOW)

    refused(lambda: deliver(stripe_headers(body, "whsec_forged")), 401, "bad_signature")
    refused(lambda: deliver({}), 400, "unsigned")
    assert memory.get(acme, "billing.status").slice.status == "past_due"
    result = deliver(stripe_headers(body))
    assert [(x["kind"], x["customer_id"]) for x in result["refreshed"]] == [("subscription.updated", acme)]
    assert memory.get(acme, "billing.status").slice.status == "current"
    assert memory.get(globex, "billing.status").slice.provenance.fetched_at == before[globex].provenance.fetched_at
    assert not find_customers(r.settings, BookQuery(risk="billing_issue")).entries  # its book row too
    refused(lambda: deliver(stripe_headers(body)), 401, "replayed")


# ------------------------------------------------------------------ end to end, over HTTP
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    home = tmp_path_factory.mktemp("webhooks-home")
    (home / "keys.yaml").write_text(json.dumps({ADMIN: {"user": "ops", "role": "admin"}}), encoding="utf-8")
    env = {**server_env(home), "CUSTCTX_API_KEYS_FILE": str(home / "keys.yaml"),
           "CUSTCTX_WEBHOOKS__STRIPE_SECRET": STRIPE, "CUSTCTX_WEBHOOKS__ZENDESK_SECRET": ZENDESK,
           "CUSTCTX_WEBHOOKS__TOLERANCE_S": "3600"}
    port = free_port()
    proc = subprocess.Popen(custctx_cmd("serve", "api", "--port", str(port)), env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_up(proc, f"http://127.0.0.1:{port}/healthz")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            yield home, client
    finally:
        stop(proc)


def billing_of(client: httpx.Client, ref: str) -> dict:
    view = client.get(f"/v1/customers/{ref}/context", params={"slices": "billing.status"},
                      headers={"X-API-Key": ADMIN}).json()
    return {**view["slices"]["billing.status"], "provenance": view["provenance"]["billing.status"]}


@pytest.mark.slow  # starts `custctx serve api` (seeding its warehouse): ~10-25 s
def test_a_signed_stripe_event_refreshes_one_customer_at_once_over_http(served):
    home, client = served
    assert billing_of(client, "acme.com")["status"] == "past_due"  # read once: now in memory (TTL 24 h)
    globex_before = billing_of(client, "globex.com")
    eng = create_engine(f"sqlite:///{home / 'warehouse.sqlite'}")
    with eng.begin() as conn:  # Acme pays: its subscription is active again at the source
        conn.execute(text("UPDATE subscription SET status = 'active' WHERE customer_id = 'cus_0000001'"))
        conn.execute(text("UPDATE customer SET delinquent = 0 WHERE id = 'cus_0000001'"))
    eng.dispose()
    assert billing_of(client, "acme.com")["status"] == "past_due"  # memory still serves the old snapshot

    now = int(datetime.now(UTC).timestamp())
    body = json.dumps({"id": "evt_acme_paid", "type": "customer.subscription.updated",
                       "data": {"object": {"id": "sub_0000001", "customer": "cus_0000001"}}}).encode()
    forged = {"Stripe-Signature": stripe_headers(body, "whsec_forged", now)["Stripe-Signature"]}
    bad = client.post("/v1/webhooks/stripe", content=body, headers={**forged, "Content-Type": "application/json"})
    assert bad.status_code == 401 and bad.json()["error"] == "bad_signature"
    unsigned = client.post("/v1/webhooks/stripe", content=body, headers={"Content-Type": "application/json"})
    assert unsigned.status_code == 400 and unsigned.json()["error"] == "unsigned"
    assert billing_of(client, "acme.com")["status"] == "past_due"  # nothing refused did anything

    signed = {**stripe_headers(body, t=now), "Content-Type": "application/json"}
    resp = client.post("/v1/webhooks/stripe", content=body, headers=signed)
    assert resp.status_code == 200, resp.text
    refreshed = resp.json()["refreshed"]
    assert [(r["kind"], r["failures"]) for r in refreshed] == [("subscription.updated", 0)]
    assert billing_of(client, "acme.com")["status"] == "current"  # at once: no cadence, no TTL
    assert billing_of(client, "globex.com")["provenance"]["fetched_at"] == globex_before["provenance"]["fetched_at"]

    replay = client.post("/v1/webhooks/stripe", content=body, headers=signed)
    assert replay.status_code == 401 and replay.json()["error"] == "replayed"

    book = client.get("/v1/customers", params={"tier": "enterprise"}, headers={"X-API-Key": ADMIN}).json()
    acme = [c for c in book["customers"] if c["name"] == "Acme Corp"]  # its book row was recomputed with it
    assert acme and "billing_issue" not in acme[0]["risk_indicators"]


@pytest.mark.slow
def test_zendesk_event_and_health_over_http(served):
    _, client = served
    body = json.dumps({"type": "zen:event-type:ticket.created", "id": "zd-1",
                       "detail": {"id": "10001", "organization_id": "360001"}}).encode()
    at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    resp = client.post("/v1/webhooks/zendesk", content=body,
                       headers={**zendesk_headers(body, at=at), "Content-Type": "application/json"})
    assert resp.status_code == 200, resp.text
    assert [r["kind"] for r in resp.json()["refreshed"]] == ["ticket.created"]
    unknown = client.post("/v1/webhooks/github", content=b"{}", headers={"Content-Type": "application/json"})
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_webhook"
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["worker"] == []  # no worker ran against this home


def test_hubspot_contacts_and_deals_refresh_their_company(world):
    r, memory, _ = world
    settings = r.settings.model_copy(update={"webhooks": WebhookSettings(hubspot_secret=HUBSPOT)})
    uri = "https://custctx.example.com/v1/webhooks/hubspot"
    body = json.dumps([{"eventId": 1, "subscriptionType": "contact.propertyChange", "objectId": 20001},
                       {"eventId": 2, "subscriptionType": "deal.propertyChange", "objectId": 30001},
                       {"eventId": 3, "subscriptionType": "deal.creation", "objectId": 99999999}]).encode()
    d = verify(settings, "hubspot", "POST", uri, hubspot_headers(body, uri), body, NOW)
    assert d.events == [("contact.updated", "crm:1001"), ("deal.updated", "crm:1001")]
    assert "has no company" in d.ignored[0]
    result = handle(settings, memory, "hubspot", "POST", uri, hubspot_headers(body, uri), body, now=NOW)
    acme = r.index.resolve("acme.com")[0].customer_id
    assert [(x["kind"], x["customer_id"]) for x in result["refreshed"]] == [("contact.updated", acme),
                                                                            ("deal.updated", acme)]
    assert memory.get(acme, "crm.contacts") is not None and memory.get(acme, "crm.opportunities") is not None
