"""A store's customer in commerce words: orders and their items, refunds, cards on file and
addresses — lines for the brief, the offline answers and the reviews, each citing its slice.

An order is never told as a ticket or a deal: it is open, fulfilled, cancelled or refunded,
paid or not. Free text (refund notes, cancel reasons) is left out: only the store's own
structured fields are written.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from tools.slices import (
    Address,
    CardOnFile,
    CommerceAddresses,
    CommerceOrders,
    CommercePaymentMethods,
    CommerceRefunds,
    Order,
    Slice,
)

COMMERCE_SLICES = ("commerce.orders", "commerce.refunds", "commerce.payment_methods", "commerce.addresses")
STATUS_ORDER = ("open", "fulfilled", "cancelled", "refunded")
ORDERS_LISTED = 5


def amount(v: float | None, currency: str | None) -> str:
    """``1,234.50 EUR``; a dash for no amount."""
    return "—" if v is None else f"{v:,.2f}" + (f" {currency}" if currency else "")


def _day(v: datetime | None) -> str:
    return v.date().isoformat() if v else "—"


def _get(slices: Mapping[str, Slice], name: str, cls: type) -> Any:
    s = slices.get(name)
    return s if isinstance(s, cls) else None


def has_commerce(slices: Mapping[str, Slice]) -> bool:
    """Whether the customer has any commerce data among these slices."""
    return any(n in slices for n in COMMERCE_SLICES)


def status_counts(o: CommerceOrders) -> str:
    """``2 fulfilled, 1 open, 1 cancelled`` in a fixed order."""
    known = [s for s in STATUS_ORDER if o.status_counts.get(s)]
    return ", ".join(f"{o.status_counts[s]} {s}" for s in known)


def order_line(order: Order) -> str:
    items = ", ".join(f"{i.quantity}× {i.title}" for i in order.items[:4]) + (" …" if len(order.items) > 4 else "")
    money = [f"{order.financial_status}" if order.financial_status else None,
             f"refunded {amount(order.refunded, order.currency)}" if order.refunded else None]
    return (f"- Order {order.number or order.id} {_day(order.placed_at)}: **{order.status}**, "
            f"{amount(order.total, order.currency)}" + "".join(f", {m}" for m in money if m)
            + (f" — {items}" if items else "") + " [commerce.orders]")


def order_lines(slices: Mapping[str, Slice], listed: int = ORDERS_LISTED) -> list[str]:
    o = _get(slices, "commerce.orders", CommerceOrders)
    if not o:
        return []
    if not o.order_count:
        return ["- **Orders**: no orders placed [commerce.orders]"]
    head = (f"- **Orders**: {o.order_count} order{'s' if o.order_count != 1 else ''} ({status_counts(o)}); "
            f"paid {amount(o.total_paid, o.currency)}, refunded {amount(o.total_refunded, o.currency)}; "
            f"last order {_day(o.last_order_at)} [commerce.orders]")
    return [head, *(order_line(x) for x in o.orders[:listed])]


def refund_lines(slices: Mapping[str, Slice]) -> list[str]:
    r = _get(slices, "commerce.refunds", CommerceRefunds)
    if not r:
        return []
    if not r.refund_count:
        return ["- **Refunds**: none [commerce.refunds]"]
    out = [f"- **Refunds**: {r.refund_count} refund{'s' if r.refund_count != 1 else ''}, "
           f"{amount(r.total_refunded, r.currency)} in total [commerce.refunds]"]
    out += [f"- Refund {_day(x.date)} on order {x.order_number or x.order_id or '—'}: "
            f"{amount(x.amount, r.currency)} [commerce.refunds]" for x in r.refunds[:ORDERS_LISTED]]
    return out


def card_text(m: CardOnFile, masked: bool) -> str:
    text = str(m)
    if masked and not (m.exp_month and m.exp_year):
        text += " (expiry masked)"
    if m.expired:
        text += " — expired"
    return text


def card_lines(slices: Mapping[str, Slice]) -> list[str]:
    p = _get(slices, "commerce.payment_methods", CommercePaymentMethods)
    if not p:
        return []
    if not p.methods:
        return ["- **Cards on file**: none [commerce.payment_methods]"]
    masked = any(".exp_" in f for f in p.provenance.masked_fields)
    return [f"- **Cards on file** ({len(p.methods)}): "
            + "; ".join(card_text(m, masked) for m in p.methods) + " [commerce.payment_methods]"]


def address_text(a: Address) -> str:
    return str(a) or "—"


def address_lines(slices: Mapping[str, Slice]) -> list[str]:
    a = _get(slices, "commerce.addresses", CommerceAddresses)
    if not a:
        return []
    if not a.addresses:
        return ["- **Addresses**: none on file [commerce.addresses]"]
    return [f"- **Address**: {address_text(x)} [commerce.addresses]" for x in a.addresses]


def commerce_lines(slices: Mapping[str, Slice]) -> list[str]:
    """Every commerce fact of the slices: orders, refunds, cards, addresses."""
    return [*order_lines(slices), *refund_lines(slices), *card_lines(slices), *address_lines(slices)]


def commerce_summary(name: str, slices: Mapping[str, Slice]) -> str | None:
    """One sentence for a review: orders, what was paid and refunded."""
    o = _get(slices, "commerce.orders", CommerceOrders)
    if not o:
        return None
    if not o.order_count:
        return f"{name} has placed no orders [commerce.orders]."
    return (f"{name} has placed {o.order_count} order{'s' if o.order_count != 1 else ''} ({status_counts(o)}), "
            f"paid {amount(o.total_paid, o.currency)} and was refunded {amount(o.total_refunded, o.currency)} "
            "[commerce.orders].")
