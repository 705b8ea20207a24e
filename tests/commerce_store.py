"""A small store of the tests' own: ≈50 shoppers with addresses, orders and their items,
refunds and several cards each — in tables whose names match no built-in mapping — plus
one mapping file per source (people as the CRM, the store as commerce) and the truth the
generator wrote, to check every answer against.

Deterministic: the same seed writes the same rows. Nothing here is read by the product.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
)

AS_OF = datetime(2026, 1, 15, 12, 0, 0)
SEED = 1601

meta = MetaData()
shoppers = Table(
    "shoppers", meta,
    Column("shopper_key", String(12), primary_key=True),
    Column("given", String(60)), Column("family", String(60)), Column("mail", String(120)),
    Column("phone_no", String(30)), Column("home_nation", String(2)), Column("touched_at", DateTime),
)
shopper_places = Table(
    "shopper_places", meta,
    Column("place_key", String(12), primary_key=True), Column("shopper_key", String(12)),
    Column("street", String(120)), Column("street_extra", String(120)), Column("town", String(60)),
    Column("county", String(60)), Column("post_code", String(12)), Column("nation", String(2)),
    Column("primary_flag", Integer),
)
purchases = Table(
    "purchases", meta,
    Column("purchase_key", String(12), primary_key=True), Column("shopper_key", String(12)),
    Column("ref_no", String(20)), Column("placed_on", DateTime), Column("pay_state", String(20)),
    Column("ship_state", String(20)), Column("voided_on", DateTime), Column("ccy", String(3)),
    Column("money_cents", BigInteger), Column("touched_at", DateTime),
)
purchase_lines = Table(
    "purchase_lines", meta,
    Column("line_key", String(14), primary_key=True), Column("purchase_key", String(12)),
    Column("product_title", String(120)), Column("stock_code", String(20)), Column("qty", Integer),
    Column("unit_cents", BigInteger),
)
givebacks = Table(
    "givebacks", meta,
    Column("giveback_key", String(12), primary_key=True), Column("purchase_key", String(12)),
    Column("given_back_on", DateTime), Column("giveback_cents", BigInteger), Column("reason", String(200)),
)
wallet_cards = Table(
    "wallet_cards", meta,
    Column("card_key", String(12), primary_key=True), Column("shopper_key", String(12)),
    Column("network", String(20)), Column("tail", String(4)), Column("exp_mm", Integer),
    Column("exp_yyyy", Integer), Column("is_primary", Integer),
)

GIVEN = ["Noah", "Olivia", "Liam", "Emma", "Mateo", "Aiko", "Chloé", "Jonas", "Priya", "Kwame", "Sofia",
         "Lars", "Amara", "Diego", "Ines", "Yusuf", "Hana", "Marek", "Zoe", "Tariq"]
FAMILY = ["Brown", "Okafor", "Nguyen", "Schmidt", "García", "Tanaka", "Dubois", "Kowalski", "Silva", "Haddad",
          "Larsen", "Moreau", "Patel", "Rossi", "Novak", "Byrne", "Ivanova", "Mensah", "Costa", "Weber"]
TOWNS = [("Leeds", "West Yorkshire", "LS1 4AP", "GB"), ("Lyon", "Rhône", "69002", "FR"),
         ("Porto", "Porto", "4000-322", "PT"), ("Graz", "Styria", "8010", "AT"), ("Cork", "Munster", "T12 X8F2", "IE"),
         ("Austin", "TX", "78701", "US"), ("Bremen", "Bremen", "28195", "DE")]
STREETS = ["Mill Lane", "Rue Victor Hugo", "Rua das Flores", "Herrengasse", "Oliver Plunkett St", "Congress Ave",
           "Am Wall", "King Street", "Station Road"]
NETWORKS = [("VISA", "visa"), ("MasterCard", "mastercard"), ("AMEX", "amex")]
PRODUCTS = [("Trail shoe", "TS-01", 8900), ("Rain jacket", "RJ-22", 12900), ("Wool socks", "WS-3P", 1800),
            ("Water bottle", "WB-75", 2200), ("Headlamp", "HL-300", 3400), ("Day pack", "DP-20", 6900)]
#: An order's fate → (pay_state, ship_state, cancelled, the status the product must report).
FATES = {
    "open": ("settled", "not_shipped", False, "open"),
    "awaiting": ("awaiting", "not_shipped", False, "open"),
    "fulfilled": ("settled", "shipped", False, "fulfilled"),
    "partly_refunded": ("part_refunded", "shipped", False, "fulfilled"),
    "refunded": ("refunded", "shipped", False, "refunded"),
    "cancelled": ("void", "not_shipped", True, "cancelled"),
}
PAID_FATES = {"open", "fulfilled", "partly_refunded", "refunded"}


@dataclass
class ShopperTruth:
    """What the product must say about one shopper."""

    key: str
    name: str
    email: str
    addresses: list[tuple[str, str, str, str, bool]] = field(default_factory=list)  # line1, city, postcode, country, default
    orders: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)
    paid: float = 0.0
    refunded: float = 0.0
    refunds: int = 0
    cards: list[tuple[str, str, int, int, bool]] = field(default_factory=list)  # brand, last4, month, year, default


def _cents(c: int) -> float:
    return round(c / 100, 2)


def generate(url: str, people: int = 50, seed: int = SEED) -> dict[str, ShopperTruth]:
    """Write the store at ``url`` (tables created) and return the truth by email."""
    rnd = random.Random(seed)
    eng = create_engine(url)
    meta.create_all(eng)
    rows: dict[str, list[dict]] = {t.name: [] for t in meta.sorted_tables}
    truth: dict[str, ShopperTruth] = {}
    names = rnd.sample([(g, f) for g in GIVEN for f in FAMILY], people)
    order_no = 10000
    for i, (given, family) in enumerate(names, start=1):
        key = f"S{i:04d}"
        # every shopper at the same shared domain: identity must not merge them by it
        email = f"{given.lower()}.{family.lower()}.{i}@example.com"
        t = truth[email] = ShopperTruth(key=key, name=f"{given} {family}", email=email)
        rows["shoppers"].append(dict(shopper_key=key, given=given, family=family, mail=email.upper() if i % 7 == 0
                                     else email, phone_no=f"+44 7700 9{i:05d}", home_nation="GB",
                                     touched_at=AS_OF - timedelta(days=i)))
        n_addr = rnd.randint(1, 3)
        default_at = rnd.randrange(n_addr)
        for a in range(n_addr):
            town, county, post, nation = rnd.choice(TOWNS)
            line1 = f"{rnd.randint(1, 220)} {rnd.choice(STREETS)}"
            rows["shopper_places"].append(dict(
                place_key=f"A{i:04d}{a}", shopper_key=key, street=line1, street_extra=None if a else "Flat 2",
                town=town, county=county, post_code=post, nation=nation, primary_flag=int(a == default_at)))
            t.addresses.append((line1, town, post, nation, a == default_at))
        n_cards = rnd.randint(1, 4)
        primary = rnd.randrange(n_cards)
        for c in range(n_cards):
            raw_brand, brand = rnd.choice(NETWORKS)
            last4 = f"{rnd.randint(0, 9999):04d}"
            month, year = rnd.randint(1, 12), rnd.randint(2024, 2031)
            rows["wallet_cards"].append(dict(card_key=f"W{i:04d}{c}", shopper_key=key, network=raw_brand, tail=last4,
                                             exp_mm=month, exp_yyyy=year, is_primary=int(c == primary)))
            t.cards.append((brand, last4, month, year, c == primary))
        for _ in range(rnd.randint(0, 6)):
            order_no += 1
            fate = rnd.choice(list(FATES))
            pay, ship, cancelled, status = FATES[fate]
            placed = AS_OF - timedelta(days=rnd.randint(1, 700), minutes=rnd.randint(0, 1439))
            pkey = f"P{order_no}"
            total = 0
            for li in range(rnd.randint(1, 3)):
                title, sku, price = rnd.choice(PRODUCTS)
                qty = rnd.randint(1, 3)
                total += qty * price
                rows["purchase_lines"].append(dict(line_key=f"{pkey}-{li}", purchase_key=pkey, product_title=title,
                                                   stock_code=sku, qty=qty, unit_cents=price))
            rows["purchases"].append(dict(
                purchase_key=pkey, shopper_key=key, ref_no=f"#{order_no}", placed_on=placed, pay_state=pay,
                ship_state=ship, voided_on=placed + timedelta(hours=3) if cancelled else None, ccy="EUR",
                money_cents=total, touched_at=placed + timedelta(days=2)))
            t.orders += 1
            t.status_counts[status] = t.status_counts.get(status, 0) + 1
            if fate in PAID_FATES:
                t.paid += _cents(total)
            back = {"refunded": [total], "partly_refunded": [total // 4, total // 5]}.get(fate, [])
            for r, cents in enumerate(back):
                rows["givebacks"].append(dict(giveback_key=f"R{order_no}{r}", purchase_key=pkey,
                                              given_back_on=placed + timedelta(days=5 + r), giveback_cents=cents,
                                              reason="damaged in transit" if r else "returned"))
                t.refunded += _cents(cents)
                t.refunds += 1
        t.paid, t.refunded = round(t.paid, 2), round(t.refunded, 2)
    with eng.begin() as conn:
        for tbl in meta.sorted_tables:
            if rows[tbl.name]:
                conn.execute(insert(tbl), rows[tbl.name])
    eng.dispose()
    return truth


NAME_FIELD = 'name: {concat: [given, " ", family], required: true}'
NAME_FALLBACK = "name: {column: given, required: true}"

PEOPLE_MAPPING = f"""\
# The store's shoppers as the CRM: one person per account, named first + last.
name: people
source: crm
system: corner-shop-people
identity:
  anchor: account.id
  keys:
    - {{entity: account, anchor: id, field: id, kind: crm_id}}
    - {{entity: account, anchor: id, field: name, kind: name}}
    - {{entity: contact, anchor: account_id, field: email, kind: email}}
entities:
  account:
    table: shoppers
    fields:
      id: {{column: shopper_key, required: true}}
      {NAME_FIELD}
      status: {{constant: active}}
      country: home_nation
      updated_at: {{column: touched_at, type: datetime}}
  contact:
    table: shoppers
    fields:
      id: {{column: shopper_key, required: true}}
      account_id: shopper_key
      first_name: given
      last_name: family
      email: {{column: mail, convert: lower}}
      phone: phone_no
"""

STORE_MAPPING = """\
# The store's orders, refunds, cards and addresses as the commerce source.
name: store
source: commerce
system: corner-shop
identity:
  anchor: customer.id
  keys:
    - {entity: customer, anchor: id, field: id, kind: commerce_id}
    - {entity: customer, anchor: id, field: email, kind: email}
entities:
  customer:
    table: shoppers
    fields:
      id: {column: shopper_key, required: true}
      email: {column: mail, convert: lower}
      first_name: given
      last_name: family
      updated_at: {column: touched_at, type: datetime}
  address:
    table: shopper_places
    fields:
      id: {column: place_key, required: true}
      customer_id: shopper_key
      line1: street
      line2: street_extra
      city: town
      region: county
      postcode: post_code
      country: nation
      is_default: {column: primary_flag, type: bool}
  order:
    table: purchases
    fields:
      id: {column: purchase_key, required: true}
      customer_id: shopper_key
      number: ref_no
      placed_at: {column: placed_on, type: datetime, required: true}
      cancelled_at: {column: voided_on, type: datetime}
      financial_status: {column: pay_state, values: {settled: paid, part_refunded: partially_refunded,
                                                     refunded: refunded, awaiting: pending, void: voided}}
      fulfillment_status: {column: ship_state, values: {shipped: fulfilled, not_shipped: unfulfilled}}
      currency: {column: ccy, convert: lower}
      total: {column: money_cents, convert: cents}
      updated_at: {column: touched_at, type: datetime}
  order_item:
    table: purchase_lines
    fields:
      id: {column: line_key, required: true}
      order_id: purchase_key
      title: {column: product_title, required: true}
      sku: stock_code
      quantity: {column: qty, type: int}
      price: {column: unit_cents, convert: cents}
  refund:
    table: givebacks
    fields:
      id: {column: giveback_key, required: true}
      order_id: purchase_key
      created: {column: given_back_on, type: datetime, required: true}
      amount: {column: giveback_cents, convert: cents}
      note: reason
  payment_method:
    table: wallet_cards
    fields:
      id: {column: card_key, required: true}
      customer_id: shopper_key
      brand: {column: network, convert: lower}
      last4: tail
      exp_month: {column: exp_mm, type: int}
      exp_year: {column: exp_yyyy, type: int}
      is_default: {column: is_primary, type: bool}
"""


def names_from_expressions() -> bool:
    """Whether the mapping engine takes field expressions (``concat``) yet."""
    import yaml

    from tools.mapping.conversions import MappingError
    from tools.mapping.loader import parse_mapping

    try:
        parse_mapping(yaml.safe_load(PEOPLE_MAPPING), "people")
    except MappingError:
        return False
    return True


def write_mappings(folder: Path) -> tuple[Path, Path]:
    """The people (CRM) and store (commerce) mapping files; the people mapping names each
    person first + last with a ``concat`` expression, or by first name where the engine
    cannot say it yet (:func:`names_from_expressions`)."""
    people = folder / "people.yaml"
    text = PEOPLE_MAPPING if names_from_expressions() else PEOPLE_MAPPING.replace(NAME_FIELD, NAME_FALLBACK)
    people.write_text(text, encoding="utf-8")
    store = folder / "store.yaml"
    store.write_text(STORE_MAPPING, encoding="utf-8")
    return people, store
