"""The commerce source on the built-in Shopify mapping (Fivetran's Shopify tables): orders with
items and statuses in commerce words, refunds summed from their transactions, the cards the
payments used, addresses with the default first — on real SQLite; and the offline planner's
commerce intents."""

from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import create_engine, text

from agent.offline.planning import plan_question
from tools.context.assembly import assemble_context
from tools.context.scope import ReadScope
from tools.settings import Settings, SourceConfig

AS_OF = datetime(2026, 1, 15, 12, 0, 0)

SHOPIFY = """
CREATE TABLE customer (id BIGINT, email TEXT, first_name TEXT, last_name TEXT, phone TEXT, currency TEXT,
                       updated_at TIMESTAMP);
CREATE TABLE customer_address (id BIGINT, customer_id BIGINT, first_name TEXT, last_name TEXT, company TEXT,
                               address_1 TEXT, address_2 TEXT, city TEXT, province TEXT, zip TEXT,
                               country_code TEXT, phone TEXT, is_default BOOLEAN);
CREATE TABLE "order" (id BIGINT, customer_id BIGINT, name TEXT, created_at TIMESTAMP, cancelled_at TIMESTAMP,
                      cancel_reason TEXT, financial_status TEXT, fulfillment_status TEXT, currency TEXT,
                      total_price NUMERIC, updated_at TIMESTAMP);
CREATE TABLE order_line (id BIGINT, order_id BIGINT, title TEXT, sku TEXT, quantity INT, price NUMERIC,
                         fulfillment_status TEXT);
CREATE TABLE refund (id BIGINT, order_id BIGINT, created_at TIMESTAMP, note TEXT);
CREATE TABLE "transaction" (id BIGINT, order_id BIGINT, refund_id BIGINT, kind TEXT, status TEXT, amount NUMERIC,
                            created_at TIMESTAMP, payment_credit_card_company TEXT,
                            payment_credit_card_number TEXT);
INSERT INTO customer VALUES (501, 'Mia.Lund@example.com', 'Mia', 'Lund', NULL, 'USD', '2026-01-10 09:00:00'),
                            (502, 'ola.berg@example.com', 'Ola', 'Berg', NULL, 'USD', '2026-01-10 09:00:00');
INSERT INTO customer_address VALUES
  (1, 501, 'Mia', 'Lund', NULL, '12 Elm St', NULL, 'Portland', 'OR', '97201', 'US', NULL, 0),
  (2, 501, 'Mia', 'Lund', 'Lund Design', '400 Pine Ave', 'Suite 3', 'Seattle', 'WA', '98101', 'US', NULL, 1),
  (3, 502, 'Ola', 'Berg', NULL, '1 Fjord Rd', NULL, 'Bergen', NULL, '5003', 'NO', NULL, 1);
INSERT INTO "order" VALUES
  (9001, 501, '#1001', '2025-11-02 10:00:00', NULL, NULL, 'paid', 'fulfilled', 'USD', 120.00, '2025-11-05 10:00:00'),
  (9002, 501, '#1002', '2025-12-01 10:00:00', '2025-12-01 12:00:00', 'customer', 'voided', NULL, 'USD', 45.50,
   '2025-12-01 12:00:00'),
  (9003, 501, '#1003', '2025-12-20 10:00:00', NULL, NULL, 'refunded', 'fulfilled', 'USD', 80.00,
   '2026-01-02 10:00:00'),
  (9004, 501, '#1004', '2026-01-12 10:00:00', NULL, NULL, 'partially_refunded', 'fulfilled', 'USD', 200.00,
   '2026-01-14 10:00:00'),
  (9005, 501, '#1005', '2026-01-14 10:00:00', NULL, NULL, 'paid', NULL, 'USD', 60.00, '2026-01-14 10:00:00'),
  (9101, 502, '#1101', '2026-01-03 10:00:00', NULL, NULL, 'paid', 'fulfilled', 'USD', 30.00, '2026-01-04 10:00:00');
INSERT INTO order_line VALUES (1, 9001, 'Trail shoe', 'TS-01', 1, 120.00, 'fulfilled'),
  (2, 9002, 'Wool socks', 'WS-3P', 2, 22.75, NULL), (3, 9003, 'Headlamp', 'HL-300', 2, 40.00, 'fulfilled'),
  (4, 9004, 'Rain jacket', 'RJ-22', 1, 150.00, 'fulfilled'), (5, 9004, 'Day pack', 'DP-20', 1, 50.00, 'fulfilled'),
  (6, 9005, 'Water bottle', 'WB-75', 3, 20.00, NULL), (7, 9101, 'Wool socks', 'WS-3P', 1, 30.00, 'fulfilled');
INSERT INTO refund VALUES (71, 9003, '2026-01-02 10:00:00', 'returned'),
                          (72, 9004, '2026-01-14 10:00:00', 'one item damaged');
INSERT INTO "transaction" VALUES
  (1, 9001, NULL, 'sale', 'success', 120.00, '2025-11-02 10:00:00', 'Visa', '•••• •••• •••• 4242'),
  (2, 9002, NULL, 'authorization', 'failure', 45.50, '2025-12-01 10:00:00', 'Visa', '•••• •••• •••• 0002'),
  (3, 9003, NULL, 'sale', 'success', 80.00, '2025-12-20 10:00:00', 'Mastercard', '•••• •••• •••• 5454'),
  (4, 9003, 71, 'refund', 'success', 80.00, '2026-01-02 10:00:00', NULL, NULL),
  (5, 9004, NULL, 'sale', 'success', 200.00, '2026-01-12 10:00:00', 'Visa', '•••• •••• •••• 4242'),
  (6, 9004, 72, 'refund', 'success', 50.00, '2026-01-14 10:00:00', NULL, NULL),
  (7, 9004, 72, 'refund', 'failure', 50.00, '2026-01-14 10:00:00', NULL, NULL),
  (8, 9005, NULL, 'sale', 'success', 60.00, '2026-01-14 10:00:00', 'American Express', '•••• •••••• •1005'),
  (9, 9101, NULL, 'sale', 'success', 30.00, '2026-01-03 10:00:00', 'Visa', '•••• •••• •••• 1111');
"""


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    from agent.bootstrap import ready

    folder = tmp_path_factory.mktemp("shopify")
    url = f"sqlite:///{folder / 'shopify.sqlite'}"
    eng = create_engine(url)
    with eng.begin() as conn:
        for stmt in SHOPIFY.split(";"):
            if stmt.strip():
                conn.execute(text(stmt))
    eng.dispose()
    settings = Settings(home=folder, embedded=False, as_of=AS_OF, state_url=f"sqlite:///{folder / 'state.sqlite'}",
                        sources={"commerce": SourceConfig(url=url)})  # the built-in mapping: shopify
    return ready(settings)


def context(shop, ref: str):
    customer, matched_by = shop.index.resolve(ref)
    return assemble_context(ReadScope.build(shop.settings, shop.clock), customer), matched_by


def test_shopify_orders_refunds_cards_and_addresses(shop):
    c, matched_by = context(shop, "mia.lund@example.com")
    assert matched_by == "email" and c.anchors == {"commerce": "501"} and c.name == "Mia Lund"
    assert set(c.slices) == {"commerce.orders", "commerce.refunds", "commerce.payment_methods",
                             "commerce.addresses"}
    o = c.slices["commerce.orders"]
    assert o.order_count == 5 and o.currency == "USD"
    assert o.status_counts == {"open": 1, "fulfilled": 2, "cancelled": 1, "refunded": 1}
    assert [x.number for x in o.orders] == ["#1005", "#1004", "#1003", "#1002", "#1001"]  # newest first
    assert o.total_paid == 460.00 and o.total_refunded == 130.00  # paid: 120 + 80 + 200 + 60; voided not paid
    by_number = {x.number: x for x in o.orders}
    assert by_number["#1002"].status == "cancelled" and by_number["#1002"].cancel_reason == "customer"
    assert by_number["#1004"].refunded == 50.00 and [i.title for i in by_number["#1004"].items] == \
        ["Rain jacket", "Day pack"]
    r = c.slices["commerce.refunds"]
    assert r.refund_count == 2 and r.total_refunded == 130.00  # the failed refund transaction does not count
    assert [(x.order_number, x.amount) for x in r.refunds] == [("#1004", 50.00), ("#1003", 80.00)]
    cards = c.slices["commerce.payment_methods"].methods
    assert [(m.brand, m.last4) for m in cards] == [("american express", "1005"), ("visa", "4242"),
                                                   ("mastercard", "5454")]  # used, newest first; failed one left out
    addresses = c.slices["commerce.addresses"].addresses
    assert addresses[0].default and addresses[0].city == "Seattle" and addresses[0].company == "Lund Design"
    assert [a.postcode for a in addresses] == ["98101", "97201"]


def test_a_shopper_resolves_by_store_id_and_shoppers_at_one_domain_stay_apart(shop):
    c, matched_by = context(shop, "commerce:502")
    assert matched_by == "commerce_id" and c.slices["commerce.orders"].order_count == 1
    assert c.slices["commerce.addresses"].addresses[0].country == "NO"
    other, _ = context(shop, "mia.lund@example.com")
    assert other.customer_id != c.customer_id


def test_commerce_is_left_out_of_every_slice_until_connected(tmp_path):
    settings = Settings(home=tmp_path, embedded=True)
    assert settings.source("commerce").url is None  # the embedded warehouse holds no store
    from tools.sources.registry import default_slices

    assert not any(n.startswith("commerce.") for n in default_slices(settings))


@pytest.mark.parametrize("question, commerce, wanted", [
    ("How many orders has she placed?", True, ["commerce.orders"]),
    ("Which cards are on file?", True, ["commerce.payment_methods"]),
    ("How much was refunded?", True, ["commerce.refunds"]),
    ("Where do we ship to? What is her address?", True, ["commerce.addresses"]),
    ("Has the parcel been delivered?", True, ["commerce.orders"]),
    ("Is the invoice past due and which card is on file?", True,
     ["billing.status", "billing.invoices", "commerce.payment_methods"]),
    ("Was anything refunded?", False, ["billing.status", "billing.invoices"]),  # no store: a billing question
])
def test_the_planner_maps_commerce_questions_to_commerce_slices(question, commerce, wanted):
    assert plan_question(question, commerce=commerce)[1] == wanted


def test_the_embedded_demo_store_links_a_contact_to_their_company_and_names_a_shopper(tmp_path):
    """tools/embedded/store.py: Wile Coyote's store record joins Acme Corp through his email; Mia Lund,
    known to the store only, is a customer of her own, named first + last by the mapping."""
    from agent.bootstrap import ready
    from tools.embedded.store import ensure_store

    url = ensure_store(tmp_path)
    assert ensure_store(tmp_path) == url  # written once, kept after
    settings = Settings(home=tmp_path, embedded=False, as_of=AS_OF, state_url=f"sqlite:///{tmp_path / 's.sqlite'}",
                        sources={"commerce": SourceConfig(url=url)})
    shop = ready(settings)
    mia, matched_by = context(shop, "Mia Lund")
    assert matched_by == "name" and mia.name == "Mia Lund"
    assert mia.slices["commerce.orders"].total_paid == 460.00
    wile, _ = context(shop, "wile.coyote@acme.com")
    assert wile.slices["commerce.orders"].order_count == 2 and wile.slices["commerce.refunds"].total_refunded == 75.00


def test_a_review_with_a_store_has_an_orders_step_and_section(shop):
    from agent.runs import Runner

    with Runner(shop.settings) as r:
        res = r.review("mia.lund@example.com")
    assert res["error"] is None
    assert [p["name"] for p in res["plan"]][-1] == "orders and refunds"
    assert "### Orders and Refunds" in res["markdown"] and "Mia Lund has placed 5 orders" in res["summary"]
    assert "**Orders**: 5 orders (1 open, 2 fulfilled, 1 cancelled, 1 refunded)" in res["markdown"]
