"""Billing source: payment status and invoices (Stripe, ...)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.engine import Connection

from tools.mapping.conversions import days_between
from tools.mapping.schema import (
    CHARGE_FAILED,
    CHARGE_PAID,
    FAILED_CHARGE_WINDOW_DAYS,
    INVOICE_OPEN,
    INVOICES_SHOWN,
    REVENUE_AGGREGATE,
)
from tools.slices import (
    BillingInvoices,
    BillingState,
    BillingStatus,
    FailedCharge,
    Invoice,
    PaymentMethod,
)
from tools.sources.base import CustomerRef, ReadClock, SourceReader, first
from tools.sources.batch import SetAggregate


class BillingReader(SourceReader):
    source = "billing"

    def _for_customer(self, conn: Connection, entity: str, billing_id: str, order_by: str = "created",
                      limit: int | None = None) -> Any:
        return self.lookup(conn, entity, "customer_id", [billing_id], order_by=order_by, limit=limit)

    def monthly_amount(self, sub: dict[str, Any]) -> float | None:
        amount = sub.get("amount")
        if amount is None:
            return None
        return round(amount / 12, 2) if (sub.get("interval") or "month") == "year" else amount

    def read_status(self, conn: Connection, customer: CustomerRef, clock: ReadClock) -> BillingStatus:
        billing_id = self.anchor(customer)
        cust = self.lookup(conn, "customer", "id", [billing_id])
        subs = self._for_customer(conn, "subscription", billing_id, limit=1)
        charges = self.lookup(conn, "charge", "customer_id", [billing_id], where=[("status", CHARGE_PAID)],
                              order_by="created", limit=1)
        methods = self._for_customer(conn, "payment_method", billing_id, limit=1)
        invoices = self.lookup(conn, "invoice", "customer_id", [billing_id], where=[("status", INVOICE_OPEN)])

        c = first(cust.rows) or {}
        sub = first(subs.rows)
        # the mapping's values are BillingStatus states (checked when the slice is built)
        status_map: dict[str, BillingState] = self.mapping.settings.get("status_map", {})
        status = status_map.get(sub["status"], "past_due") if sub else "none"
        if status == "current" and c.get("delinquent"):
            status = "past_due"
        paid = first(charges.rows)
        pm = first(methods.rows)
        used = [*cust.rows, *subs.rows, *charges.rows, *methods.rows, *invoices.rows]
        return BillingStatus(
            provenance=self.provenance(clock, used),
            billing_id=billing_id,
            billing_email=c.get("email"),
            status=status,
            plan=sub.get("plan") if sub else None,
            mrr=self.monthly_amount(sub) if sub and status != "canceled" else None,
            currency=(c.get("currency") or "usd").upper(),
            last_payment_date=paid["created"].date() if paid else None,
            last_payment_amount=paid["amount"] if paid else None,
            days_since_last_payment=days_between(paid["created"], clock.as_of) if paid else None,
            payment_method=PaymentMethod(brand=pm.get("brand"), last4=pm.get("last4")) if pm else None,
            balance_due=round(sum(i.get("amount_remaining") or 0 for i in invoices.rows), 2),
            delinquent=bool(c.get("delinquent")),
            trial_ends=sub["trial_end"].date() if sub and sub.get("trial_end") and sub["status"] == "trialing" else None,
            canceled_at=sub["canceled_at"].date() if sub and sub.get("canceled_at") else None,
            custom=self.mapping.entity("customer").custom(c),
        )

    def read_invoices(self, conn: Connection, customer: CustomerRef, clock: ReadClock) -> BillingInvoices:
        billing_id = self.anchor(customer)
        invoices = self._for_customer(conn, "invoice", billing_id, limit=INVOICES_SHOWN)
        since = clock.as_of - timedelta(days=FAILED_CHARGE_WINDOW_DAYS)
        failed = self.lookup(conn, "charge", "customer_id", [billing_id], where=[("status", CHARGE_FAILED)],
                             window=("created", since, None), order_by="created")
        charges = self.mapping.entity("charge")
        if REVENUE_AGGREGATE in charges.aggregates:  # the warehouse sums it (a mapping's own definition)
            revenue = self.batched(conn, ("aggregate", "charge", REVENUE_AGGREGATE), [billing_id],
                                   SetAggregate(charges, REVENUE_AGGREGATE))[billing_id] or 0.0
            first_paid = None
        else:
            succeeded = self.lookup(conn, "charge", "customer_id", [billing_id], where=[("status", CHARGE_PAID)],
                                    fields=["id", "amount", "created", "updated_at"])
            revenue = round(sum(r.get("amount") or 0 for r in succeeded.rows), 2)
            first_paid = min((r["created"] for r in succeeded.rows if r.get("created")), default=None)
        return BillingInvoices(
            provenance=self.provenance(clock, [*invoices.rows, *failed.rows]),
            invoices=[Invoice(id=r["id"], number=r.get("number"), status=r.get("status"),
                              amount_due=r.get("amount_due"), amount_paid=r.get("amount_paid"),
                              amount_remaining=r.get("amount_remaining"),
                              created=r["created"].date(),
                              due_date=r["due_date"].date() if r.get("due_date") else None)
                      for r in invoices.rows],
            failed_charges=[FailedCharge(id=r["id"], date=r["created"].date(), amount=r.get("amount"),
                                         failure_code=r.get("failure_code"),
                                         failure_message=r.get("failure_message"))
                            for r in failed.rows],
            total_revenue=revenue,
            first_payment_date=first_paid.date() if first_paid else None,
        )
