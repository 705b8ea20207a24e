"""Commerce source: a store's orders with their items, refunds, cards on file and addresses
(Shopify, or any store's tables through a mapping).

Mapped entities, shared by every flavour: ``customer`` (id, email), ``order`` (customer_id,
number, placed_at, statuses, total, currency), ``order_item`` (order_id, title, quantity,
price), ``refund`` (order_id, created, amount or the sum of its refund ``transaction``\\ s),
``payment_method`` (customer_id, brand, last4, expiry, is_default) — or, when a store keeps
none (Shopify), the cards its payment ``transaction``\\ s used — and ``address``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from tools.slices import (
    Address,
    CardOnFile,
    CommerceAddresses,
    CommerceOrders,
    CommercePaymentMethods,
    CommerceRefunds,
    Order,
    OrderItem,
    OrderStatus,
    Refund,
)
from tools.sources.base import CustomerRef, ReadClock, SliceNotFound, SourceReader

ORDERS_SHOWN = 50
"""Orders listed in ``commerce.orders`` (newest first); counts and sums cover every order."""
REFUNDS_SHOWN = 50
"""Refunds listed in ``commerce.refunds`` (newest first); counts and sums cover every refund."""
PAID_STATUSES = frozenset({"paid", "partially_refunded", "refunded"})
"""Financial statuses of an order that was paid (a refund comes after the payment)."""
CANCELLED_STATUSES = frozenset({"voided", "cancelled", "canceled"})
"""Financial statuses that mean the order was cancelled before it was paid."""


def order_status(row: dict[str, Any]) -> OrderStatus:
    """An order's state in commerce words: cancelled, refunded (in full), fulfilled or open."""
    if row.get("cancelled_at") or (row.get("financial_status") or "") in CANCELLED_STATUSES:
        return "cancelled"
    if row.get("financial_status") == "refunded":
        return "refunded"
    if row.get("fulfillment_status") == "fulfilled":
        return "fulfilled"
    return "open"


def _last4(number: Any) -> str | None:
    digits = "".join(ch for ch in str(number or "") if ch.isdigit())
    return digits[-4:] if len(digits) >= 4 else None


def _newest(rows: list[dict[str, Any]], field: str) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (r.get(field) or datetime.min, str(r.get("id"))), reverse=True)


class CommerceReader(SourceReader):
    source = "commerce"

    def _has(self, entity: str) -> bool:
        return entity in self.mapping.entities

    def _setting(self, name: str, default: Sequence[str]) -> frozenset[str]:
        return frozenset(str(v).lower() for v in self.mapping.settings.get(name, default))

    def customer_ids(self, conn: Connection, customer: CustomerRef) -> list[str]:
        """The store's customer records of ``customer``: its commerce anchor, else the store
        customers holding one of its email addresses (a company's buyers); SliceNotFound if none."""
        if "commerce" in customer.anchors:
            return [customer.anchors["commerce"]]
        emails = [e.lower() for e in customer.emails]
        if emails and self._has("customer"):
            found = self.lookup(conn, "customer", "email", emails, fields=["id", "email"])
            ids = sorted({str(r["id"]) for r in found.rows})
            if ids:
                return ids
        raise SliceNotFound(f"no commerce record for {customer.name}")

    def _orders(self, conn: Connection, ids: list[str]) -> list[dict[str, Any]]:
        return _newest(self.lookup(conn, "order", "customer_id", ids).rows, "placed_at")

    def _refund_rows(self, conn: Connection, order_ids: list[str]) -> list[dict[str, Any]]:
        """Refunds of these orders, each with its ``amount`` (declared, or summed from its refund
        transactions), newest first."""
        if not order_ids or not self._has("refund"):
            return []
        refunds = [dict(r) for r in self.lookup(conn, "refund", "order_id", order_ids).rows]
        if refunds and "amount" not in self.mapping.entity("refund").parts[0].fields and self._has("transaction"):
            kinds, ok = self._setting("refund_kinds", ["refund"]), self._setting("succeeded", ["success"])
            txns = self.lookup(conn, "transaction", "refund_id", [str(r["id"]) for r in refunds]).rows
            by_refund: defaultdict[str, float] = defaultdict(float)
            for t in txns:
                if (t.get("kind") or "") in kinds and (t.get("status") or "") in ok:
                    by_refund[str(t["refund_id"])] += t.get("amount") or 0.0
            for r in refunds:
                r["amount"] = round(by_refund.get(str(r["id"]), 0.0), 2)
        return _newest(refunds, "created")

    def read_orders(self, conn: Connection, customer: CustomerRef, clock: ReadClock) -> CommerceOrders:
        ids = self.customer_ids(conn, customer)
        rows = self._orders(conn, ids)
        shown = rows[:ORDERS_SHOWN]
        order_ids = [str(r["id"]) for r in rows]
        items: dict[str, list[OrderItem]] = {}
        if shown and self._has("order_item"):
            for it in self.lookup(conn, "order_item", "order_id", [str(r["id"]) for r in shown],
                                  order_by="id", descending=False).rows:
                items.setdefault(str(it["order_id"]), []).append(OrderItem(
                    title=it["title"], sku=it.get("sku"), quantity=it.get("quantity") or 1, price=it.get("price"),
                    fulfillment_status=it.get("fulfillment_status")))
        refunded: defaultdict[str, float] = defaultdict(float)
        for r in self._refund_rows(conn, order_ids):
            refunded[str(r.get("order_id"))] += r.get("amount") or 0.0
        orders = [Order(
            id=str(r["id"]), number=r.get("number"), placed_at=r.get("placed_at"), status=order_status(r),
            financial_status=r.get("financial_status"), fulfillment_status=r.get("fulfillment_status"),
            cancelled_at=r.get("cancelled_at"), cancel_reason=r.get("cancel_reason"),
            currency=(r.get("currency") or "").upper() or None, total=r.get("total"),
            refunded=round(refunded.get(str(r["id"]), 0.0), 2), items=items.get(str(r["id"]), []),
        ) for r in rows]
        currency = next((o.currency for o in orders if o.currency), None)
        emails = [e for e in customer.emails if e]
        return CommerceOrders(
            provenance=self.provenance(clock, shown),
            commerce_id=ids[0], email=emails[0] if emails else None, currency=currency,
            order_count=len(orders), status_counts=dict(Counter(o.status for o in orders)),
            total_paid=round(sum(o.total or 0.0 for o in orders if o.financial_status in PAID_STATUSES), 2),
            total_refunded=round(sum(refunded.values()), 2),
            last_order_at=orders[0].placed_at if orders else None,
            orders=orders[:ORDERS_SHOWN],
        )

    def read_refunds(self, conn: Connection, customer: CustomerRef, clock: ReadClock) -> CommerceRefunds:
        ids = self.customer_ids(conn, customer)
        orders = {str(r["id"]): r for r in self._orders(conn, ids)}
        rows = self._refund_rows(conn, list(orders))
        refunds = [Refund(id=str(r["id"]), order_id=r.get("order_id"),
                          order_number=(orders.get(str(r.get("order_id"))) or {}).get("number"),
                          date=r.get("created"), amount=r.get("amount") or 0.0, note=r.get("note"))
                   for r in rows]
        currency = next(((o.get("currency") or "").upper() for o in orders.values() if o.get("currency")), None)
        return CommerceRefunds(
            provenance=self.provenance(clock, rows[:REFUNDS_SHOWN]), refund_count=len(refunds),
            total_refunded=round(sum(r.amount for r in refunds), 2), currency=currency,
            refunds=refunds[:REFUNDS_SHOWN])

    def read_payment_methods(self, conn: Connection, customer: CustomerRef,
                             clock: ReadClock) -> CommercePaymentMethods:
        ids = self.customer_ids(conn, customer)
        if self._has("payment_method"):
            rows = self.lookup(conn, "payment_method", "customer_id", ids, order_by="id", descending=False).rows
            methods = [self._method(r, clock) for r in rows]
        else:
            rows, methods = self._cards_used(conn, ids)
        methods.sort(key=lambda m: not m.default)  # stable: the default first, the rest as read
        return CommercePaymentMethods(provenance=self.provenance(clock, rows), methods=methods)

    @staticmethod
    def _method(r: dict[str, Any], clock: ReadClock) -> CardOnFile:
        month, year = r.get("exp_month"), r.get("exp_year")
        expired = None
        if month and year:
            expired = (year, month) < (clock.as_of.year, clock.as_of.month)
        return CardOnFile(kind=r.get("kind") or "card", brand=r.get("brand"), last4=_last4(r.get("last4")),
                          exp_month=month, exp_year=year, expired=expired, default=bool(r.get("is_default")))

    def _cards_used(self, conn: Connection, ids: list[str]) -> tuple[list[dict[str, Any]], list[CardOnFile]]:
        """A store without payment methods: the distinct cards its payment transactions used, newest first."""
        if not self._has("transaction"):
            return [], []
        kinds, ok = self._setting("payment_kinds", ["sale", "capture", "authorization"]), \
            self._setting("succeeded", ["success"])
        txns = [t for t in _newest(self.lookup(conn, "transaction", "customer_id", ids).rows, "created")
                if (t.get("kind") or "") in kinds and (t.get("status") or "") in ok]
        seen: dict[tuple[str | None, str | None], CardOnFile] = {}
        used = []
        for t in txns:
            key = (t.get("card_brand"), _last4(t.get("card_number")))
            if key[1] and key not in seen:
                seen[key] = CardOnFile(brand=key[0], last4=key[1])
                used.append(t)
        return used, list(seen.values())

    def read_addresses(self, conn: Connection, customer: CustomerRef, clock: ReadClock) -> CommerceAddresses:
        ids = self.customer_ids(conn, customer)
        rows = self.lookup(conn, "address", "customer_id", ids, order_by="id", descending=False).rows \
            if self._has("address") else []
        addresses = [Address(
            name=r.get("name") or " ".join(x for x in (r.get("first_name"), r.get("last_name")) if x) or None,
            company=r.get("company"), line1=r.get("line1"), line2=r.get("line2"), city=r.get("city"),
            region=r.get("region"), postcode=r.get("postcode"), country=r.get("country"), phone=r.get("phone"),
            default=bool(r.get("is_default")),
        ) for r in rows]
        addresses.sort(key=lambda a: not a.default)
        return CommerceAddresses(provenance=self.provenance(clock, rows), addresses=addresses)
