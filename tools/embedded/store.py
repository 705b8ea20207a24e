"""The embedded demo store: a small Shopify-schema commerce source (Fivetran's ``customer``,
``customer_address``, ``order``, ``order_line``, ``refund``, ``transaction``) in a file of its
own beside the fixture warehouse — its ``customer`` table would collide with Stripe's.

Two shoppers, as of the fixtures' 2026-01-15: Mia Lund (mia.lund@example.com), a person
known to the store only — five orders (one open, two fulfilled, one cancelled, one refunded in
full, one of the fulfilled refunded in part), paid 460.00 USD, refunded 130.00 USD, three
cards used, two addresses (the Seattle one the default); and Wile Coyote
(wile.coyote@acme.com), Acme Corp's champion, who bought two orders of team gear — his
email links the store's record to Acme Corp. Commerce is an optional source: connect it with
``CUSTCTX_SOURCES__COMMERCE__URL=sqlite:///<home>/store.sqlite`` (:func:`ensure_store`
writes the file on first use).
"""

from __future__ import annotations

import sys
from pathlib import Path

from sqlalchemy import create_engine, inspect, text

STORE_FILE = "store.sqlite"

_TABLES = """
CREATE TABLE customer (id BIGINT PRIMARY KEY, email TEXT, first_name TEXT, last_name TEXT, phone TEXT,
                       currency TEXT, updated_at TIMESTAMP);
CREATE TABLE customer_address (id BIGINT PRIMARY KEY, customer_id BIGINT, first_name TEXT, last_name TEXT,
                               company TEXT, address_1 TEXT, address_2 TEXT, city TEXT, province TEXT, zip TEXT,
                               country_code TEXT, phone TEXT, is_default BOOLEAN);
CREATE TABLE "order" (id BIGINT PRIMARY KEY, customer_id BIGINT, name TEXT, created_at TIMESTAMP,
                      cancelled_at TIMESTAMP, cancel_reason TEXT, financial_status TEXT, fulfillment_status TEXT,
                      currency TEXT, total_price NUMERIC, updated_at TIMESTAMP);
CREATE TABLE order_line (id BIGINT PRIMARY KEY, order_id BIGINT, title TEXT, sku TEXT, quantity INT,
                         price NUMERIC, fulfillment_status TEXT);
CREATE TABLE refund (id BIGINT PRIMARY KEY, order_id BIGINT, created_at TIMESTAMP, note TEXT);
CREATE TABLE "transaction" (id BIGINT PRIMARY KEY, order_id BIGINT, refund_id BIGINT, kind TEXT, status TEXT,
                            amount NUMERIC, created_at TIMESTAMP, payment_credit_card_company TEXT,
                            payment_credit_card_number TEXT)
"""

_ROWS = """
INSERT INTO customer VALUES
  (501, 'Mia.Lund@example.com', 'Mia', 'Lund', NULL, 'USD', '2026-01-14 10:00:00'),
  (502, 'wile.coyote@acme.com', 'Wile', 'Coyote', NULL, 'USD', '2026-01-06 10:00:00');
INSERT INTO customer_address VALUES
  (1, 501, 'Mia', 'Lund', NULL, '12 Elm St', NULL, 'Portland', 'OR', '97201', 'US', NULL, 0),
  (2, 501, 'Mia', 'Lund', 'Lund Design', '400 Pine Ave', 'Suite 3', 'Seattle', 'WA', '98101', 'US', NULL, 1),
  (3, 502, 'Wile', 'Coyote', 'Acme Corp', '1 Mesa Road', NULL, 'Phoenix', 'AZ', '85001', 'US', NULL, 1);
INSERT INTO "order" VALUES
  (9001, 501, '#1001', '2025-11-02 10:00:00', NULL, NULL, 'paid', 'fulfilled', 'USD', 120.00, '2025-11-05 10:00:00'),
  (9002, 501, '#1002', '2025-12-01 10:00:00', '2025-12-01 12:00:00', 'customer', 'voided', NULL, 'USD', 45.50,
   '2025-12-01 12:00:00'),
  (9003, 501, '#1003', '2025-12-20 10:00:00', NULL, NULL, 'refunded', 'fulfilled', 'USD', 80.00,
   '2026-01-02 10:00:00'),
  (9004, 501, '#1004', '2026-01-12 10:00:00', NULL, NULL, 'partially_refunded', 'fulfilled', 'USD', 200.00,
   '2026-01-14 10:00:00'),
  (9005, 501, '#1005', '2026-01-14 10:00:00', NULL, NULL, 'paid', NULL, 'USD', 60.00, '2026-01-14 10:00:00'),
  (9101, 502, '#1101', '2025-12-03 10:00:00', NULL, NULL, 'paid', 'fulfilled', 'USD', 300.00, '2025-12-06 10:00:00'),
  (9102, 502, '#1102', '2026-01-05 10:00:00', NULL, NULL, 'refunded', 'fulfilled', 'USD', 75.00,
   '2026-01-06 10:00:00');
INSERT INTO order_line VALUES
  (1, 9001, 'Trail shoe', 'TS-01', 1, 120.00, 'fulfilled'), (2, 9002, 'Wool socks', 'WS-3P', 2, 22.75, NULL),
  (3, 9003, 'Headlamp', 'HL-300', 2, 40.00, 'fulfilled'), (4, 9004, 'Rain jacket', 'RJ-22', 1, 150.00, 'fulfilled'),
  (5, 9004, 'Day pack', 'DP-20', 1, 50.00, 'fulfilled'), (6, 9005, 'Water bottle', 'WB-75', 3, 20.00, NULL),
  (7, 9101, 'Team hoodie', 'TH-10', 10, 30.00, 'fulfilled'), (8, 9102, 'Rocket skates', 'RS-01', 1, 75.00, 'fulfilled');
INSERT INTO refund VALUES (71, 9003, '2026-01-02 10:00:00', 'returned'), (72, 9004, '2026-01-14 10:00:00', 'damaged'),
  (73, 9102, '2026-01-06 10:00:00', 'did not work as advertised');
INSERT INTO "transaction" VALUES
  (1, 9001, NULL, 'sale', 'success', 120.00, '2025-11-02 10:00:00', 'Visa', '•••• •••• •••• 4242'),
  (2, 9002, NULL, 'authorization', 'failure', 45.50, '2025-12-01 10:00:00', 'Visa', '•••• •••• •••• 0002'),
  (3, 9003, NULL, 'sale', 'success', 80.00, '2025-12-20 10:00:00', 'Mastercard', '•••• •••• •••• 5454'),
  (4, 9003, 71, 'refund', 'success', 80.00, '2026-01-02 10:00:00', NULL, NULL),
  (5, 9004, NULL, 'sale', 'success', 200.00, '2026-01-12 10:00:00', 'Visa', '•••• •••• •••• 4242'),
  (6, 9004, 72, 'refund', 'success', 50.00, '2026-01-14 10:00:00', NULL, NULL),
  (7, 9004, 72, 'refund', 'failure', 50.00, '2026-01-14 10:00:00', NULL, NULL),
  (8, 9005, NULL, 'sale', 'success', 60.00, '2026-01-14 10:00:00', 'American Express', '•••• •••••• •1005'),
  (9, 9101, NULL, 'sale', 'success', 300.00, '2025-12-03 10:00:00', 'Visa', '•••• •••• •••• 4242'),
  (10, 9102, NULL, 'sale', 'success', 75.00, '2026-01-05 10:00:00', 'Visa', '•••• •••• •••• 4242'),
  (11, 9102, 73, 'refund', 'success', 75.00, '2026-01-06 10:00:00', NULL, NULL)
"""


def write_store(url: str) -> None:
    """Create the demo store's tables at ``url`` and fill them (an existing store is kept)."""
    eng = create_engine(url)
    try:
        if inspect(eng).has_table("customer"):
            return
        with eng.begin() as conn:
            for stmt in (*_TABLES.split(";"), *_ROWS.split(";")):
                if stmt.strip():
                    conn.execute(text(stmt))
    finally:
        eng.dispose()


def store_url(home: Path) -> str:
    """The demo store's URL in a data home."""
    return f"sqlite:///{home / STORE_FILE}"


def ensure_store(home: Path) -> str:
    """The demo store's URL in ``home``, written on first use."""
    home.mkdir(parents=True, exist_ok=True)
    url = store_url(home)
    write_store(url)
    return url


if __name__ == "__main__":  # python -m tools.embedded.store DIR: write the demo store into DIR
    print(ensure_store(Path(sys.argv[1] if len(sys.argv) > 1 else ".")))
