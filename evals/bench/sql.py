"""The benchmark's floor for cold assembly: one customer's reference view in one SQL query.

The product assembles ``reference_view``'s ``customer``/``billing``/``usage``/``support``
sections from five slices (``crm.account``, ``crm.contacts``, ``billing.status``,
``product.usage``, ``support.summary``), each read through its mapping, guarded and
converted. :data:`REFERENCE_SQL` computes the same facts from the same raw fixture tables
(HubSpot, Stripe, Segment, Zendesk) in a single hand-written statement of indexed point
lookups for one customer; :func:`reference_row` runs it on the bare DB-API driver (no
SQLAlchemy, no pydantic) and shapes its one row like those sections. Nothing can assemble
the view cold for less, so the benchmark reports the product's time as a ratio to this.

The query is written against the built-in mappings (``tools/mapping/hubspot.yaml``,
``stripe.yaml``, ``segment.yaml``, ``zendesk.yaml``): their columns, filters and
conversions are spelled out in SQL; their ``settings`` (login event, solved status, CSAT
field, open statuses, status map) are read from the mapping files. Python only converts
units (cents, epoch seconds, timestamps), applies the status map and rounds, as the
readers do. Only the epoch arithmetic and the list aggregate differ between dialects:
:data:`REFERENCE_SQL_POSTGRES` is the same query for PostgreSQL (psycopg).
"""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, date, datetime, timedelta
from typing import Any

from tools.mapping.loader import load_mapping
from tools.settings import Thresholds
from tools.sources.base import CustomerRef
from tools.sources.product import ProductReader
from tools.traits import tier_for

_STRIPE = load_mapping("stripe").settings
_SEGMENT = load_mapping("segment").settings
_ZENDESK = load_mapping("zendesk").settings
_OPEN_STATUSES: tuple[str, ...] = tuple(_ZENDESK.get("open_statuses", ["new", "open", "pending", "hold"]))

# One row for one customer. Every CTE is a point lookup by the customer's id in one source
# (or a join on a primary key from one): at most one row, or one aggregate row. Where the
# readers skip a malformed row (a non-numeric CSAT, an unparseable date) this query does
# not; the fixture warehouse has none, and the benchmark measures the clean path.
_TEMPLATE = """
WITH
crm_account AS (  -- crm.account: company (not deleted, named) and its owner
    SELECT c.property_name AS name, c.property_plan_name AS plan, c.property_mrr AS mrr,
           lower(trim(c.property_customer_status)) AS status, o.email AS owner_email
    FROM company c
    LEFT JOIN owner o ON o.owner_id = c.property_hubspot_owner_id
    WHERE c.id = :crm_id AND (c.is_deleted = FALSE OR c.is_deleted IS NULL)
      AND c.property_name IS NOT NULL
),
first_contact AS (  -- crm.contacts in read_contacts' order; the first with an email
    SELECT lower(trim(property_email)) AS email
    FROM contact
    WHERE property_associatedcompanyid = :crm_id AND (is_deleted = FALSE OR is_deleted IS NULL)
      AND trim(property_email) <> ''
    ORDER BY CASE WHEN property_hs_buying_role IN ('CHAMPION', 'champion') THEN 0
                  WHEN property_hs_buying_role IN ('EXECUTIVE_SPONSOR', 'exec sponsor') THEN 1
                  WHEN property_hs_buying_role IN ('DECISION_MAKER', 'decision maker') THEN 2
                  ELSE 9 END,
             property_notes_last_contacted DESC NULLS LAST, id
    LIMIT 1
),
billing_customer AS (
    SELECT lower(trim(email)) AS email, delinquent FROM customer WHERE id = :billing_id
),
latest_subscription AS (
    SELECT lower(trim(status)) AS status, created, plan_nickname AS plan, plan_amount,
           plan_interval, trial_end
    FROM subscription WHERE customer_id = :billing_id
    ORDER BY created DESC NULLS LAST, id LIMIT 1
),
last_payment AS (
    SELECT created, amount FROM charge
    WHERE customer_id = :billing_id AND status = 'succeeded'
    ORDER BY created DESC NULLS LAST, id LIMIT 1
),
latest_payment_method AS (
    SELECT 1 AS found, lower(trim(card.brand)) AS brand, card.last4
    FROM payment_method pm
    LEFT JOIN payment_method_card card ON card.payment_method_id = pm.id
    WHERE pm.customer_id = :billing_id
    ORDER BY pm.created DESC NULLS LAST, pm.id LIMIT 1
),
open_invoices AS (
    SELECT SUM(amount_remaining) AS cents FROM invoice
    WHERE customer_id = :billing_id AND status = 'open'
),
product_users AS (
    SELECT DISTINCT user_id FROM "groups" WHERE group_id = :product_id AND user_id IS NOT NULL
),
product_usage AS (  -- events up to as-of of the group's users (ix_tracks_user_ts)
    SELECT (SELECT COUNT(*) FROM product_users) AS users,
           COUNT(DISTINCT CASE WHEN e."timestamp" > :since_30d THEN e.user_id END) AS active_users_30d,
           SUM(CASE WHEN e."timestamp" > :since_7d THEN 1 ELSE 0 END) AS events_last_7d,
           SUM(CASE WHEN e."timestamp" > :since_14d AND e."timestamp" <= :since_7d
                    THEN 1 ELSE 0 END) AS events_prior_7d,
           MAX(CASE WHEN e.event = :login_event THEN e."timestamp" END) AS last_login
    FROM tracks e
    WHERE e.user_id IN (SELECT user_id FROM product_users) AND e."timestamp" <= :as_of
),
tickets AS (  -- support.summary: the organization's tickets created up to as-of
    SELECT id, lower(trim(status)) AS status, lower(trim(custom_issue_type)) AS issue_type,
           created_at
    FROM ticket
    WHERE organization_id = :support_id AND created_at <= :as_of AND status IS NOT NULL
),
ticket_counts AS (
    SELECT COUNT(*) AS total,
           SUM(CASE WHEN status IN ({open_statuses}) THEN 1 ELSE 0 END) AS open
    FROM tickets
),
first_solved AS (  -- a ticket's first change to the solved status (any time: history is not windowed)
    SELECT ticket_id, MIN(updated) AS solved_at FROM ticket_field_history
    WHERE ticket_id IN (SELECT id FROM tickets) AND field_name = :status_field
      AND value = :solved_status
    GROUP BY ticket_id
),
resolutions AS (  -- microseconds to resolution, in the order the reader meets them
    SELECT s.ticket_id, s.solved_at, {resolution_us} AS us
    FROM first_solved s JOIN ticket t ON t.id = s.ticket_id
    ORDER BY s.solved_at, s.ticket_id
),
ratings AS (  -- each ticket's latest rating, averaged
    SELECT SUM(CAST(h.value AS DOUBLE PRECISION)) AS total, COUNT(*) AS n
    FROM ticket_field_history h
    WHERE h.ticket_id IN (SELECT id FROM tickets) AND h.field_name = :csat_field
      AND h.value IS NOT NULL
      AND h.updated = (SELECT MAX(h2.updated) FROM ticket_field_history h2
                       WHERE h2.ticket_id = h.ticket_id AND h2.field_name = h.field_name
                         AND h2.value IS NOT NULL)
),
issue_types AS (
    SELECT COUNT(*) AS n FROM tickets
    WHERE created_at > :repeat_since AND issue_type <> ''
    GROUP BY issue_type
)
SELECT
    a.name AS account_name, a.plan AS account_plan, a.mrr AS account_mrr,
    a.status AS account_status, a.owner_email,
    fc.email AS contact_email,
    bc.email AS billing_email, bc.delinquent,
    sub.status AS sub_status, sub.created AS sub_created, sub.plan AS sub_plan,
    sub.plan_amount, sub.plan_interval, sub.trial_end,
    pay.created AS paid_created, pay.amount AS paid_amount,
    pm.found AS has_method, pm.brand AS card_brand, pm.last4 AS card_last4,
    inv.cents AS balance_cents,
    u.users AS product_users, u.active_users_30d, u.events_last_7d, u.events_prior_7d, u.last_login,
    tc.total AS total_tickets, tc.open AS open_tickets,
    (SELECT {resolution_list} FROM resolutions) AS resolution_us,
    rt.total AS csat_sum, rt.n AS csat_count,
    (SELECT MAX(n) FROM issue_types) AS repeat_max
FROM (SELECT 1 AS one) AS base
LEFT JOIN crm_account a ON TRUE
LEFT JOIN first_contact fc ON TRUE
LEFT JOIN billing_customer bc ON TRUE
LEFT JOIN latest_subscription sub ON TRUE
LEFT JOIN last_payment pay ON TRUE
LEFT JOIN latest_payment_method pm ON TRUE
CROSS JOIN open_invoices inv
CROSS JOIN product_usage u
CROSS JOIN ticket_counts tc
CROSS JOIN ratings rt
"""


def _sqlite_epoch_us(col: str) -> str:
    # SQLAlchemy stores DATETIME as 'YYYY-MM-DD HH:MM:SS.ffffff': whole seconds from
    # strftime, microseconds from the text (padded when the fraction is short or absent).
    return f"(CAST(strftime('%s', {col}) AS BIGINT) * 1000000 + CAST(substr({col} || '000000', 21, 6) AS BIGINT))"


def _postgres_epoch_us(col: str) -> str:
    return f"CAST(EXTRACT(EPOCH FROM {col}) * 1000000 AS BIGINT)"


def _sql(dialect: str) -> str:
    epoch = _sqlite_epoch_us if dialect == "sqlite" else _postgres_epoch_us
    sql = _TEMPLATE.format(
        resolution_us=f"{epoch('s.solved_at')} - {epoch('t.created_at')}",
        # SQLite keeps the ordered subquery's order (an aggregate never flattens an ORDER BY
        # subquery); PostgreSQL is told the order.
        resolution_list="group_concat(us, ',')" if dialect == "sqlite"
        else "string_agg(CAST(us AS TEXT), ',' ORDER BY solved_at, ticket_id)",
        open_statuses=", ".join(f":open_status_{i}" for i in range(len(_OPEN_STATUSES))),
    )
    return sql if dialect == "sqlite" else re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", sql)


#: The reference query, SQLite dialect (named ``:params``).
REFERENCE_SQL = _sql("sqlite")
#: The same query for PostgreSQL through psycopg (``%(name)s`` params).
REFERENCE_SQL_POSTGRES = _sql("postgresql")


def reference_row(conn: Any, customer: CustomerRef, as_of: datetime,
                  thresholds: Thresholds | None = None) -> dict[str, Any]:
    """The ``customer``, ``billing``, ``usage`` and ``support`` sections of ``reference_view``
    for ``customer`` as of ``as_of``, computed by one execution of the reference query.

    Args:
        conn: A ``sqlite3.Connection`` to the warehouse file, or a psycopg connection to a
            PostgreSQL warehouse.
        customer: The resolved customer; its per-source anchors are the query's keys (a
            missing anchor leaves that source's section ``None``, as a gap would).
        as_of: The clock (naive UTC).
        thresholds: Trend, repeat-window and tier thresholds (default: the defaults).
    """
    t = thresholds or Thresholds()
    as_of = _naive_utc(as_of)
    if isinstance(conn, sqlite3.Connection):
        sql, dialect = REFERENCE_SQL, "sqlite"
    elif type(conn).__module__.startswith("psycopg"):
        sql, dialect = REFERENCE_SQL_POSTGRES, "postgresql"
    else:
        raise TypeError(f"reference_row needs a sqlite3 or psycopg connection, not {type(conn).__name__}")
    cur = conn.cursor()
    try:
        cur.execute(sql, query_params(customer, as_of, t, dialect))
        row = dict(zip([d[0] for d in cur.description], cur.fetchone(), strict=True))
    finally:
        cur.close()
    anchors = customer.anchors
    billing = _billing(row) if "billing" in anchors else None
    return {
        "customer": _customer(row, customer, billing, t),
        "billing": None if billing is None else {k: v for k, v in billing.items() if not k.startswith("_")},
        "usage": _usage(row, as_of, t) if "product" in anchors and row["product_users"] else None,
        "support": _support(row) if "support" in anchors else None,
    }


def query_params(customer: CustomerRef, as_of: datetime, thresholds: Thresholds | None = None,
                 dialect: str = "sqlite") -> dict[str, Any]:
    """The reference query's parameters for ``customer`` (e.g. to ``EXPLAIN QUERY PLAN`` it).

    Args:
        customer: The resolved customer (its anchors are the keys).
        as_of: The clock (naive UTC).
        thresholds: The repeat-issue window comes from here (default: the defaults).
        dialect: ``sqlite`` (times as SQLAlchemy's stored text) or ``postgresql``.
    """
    t = thresholds or Thresholds()
    as_of = _naive_utc(as_of)
    stamp = _sqlite_stamp if dialect == "sqlite" else _same
    a = customer.anchors
    return {
        "crm_id": _int_id(a.get("crm")), "billing_id": a.get("billing"),
        "product_id": a.get("product"), "support_id": _int_id(a.get("support")),
        "as_of": stamp(as_of),
        "since_7d": stamp(as_of - timedelta(days=7)), "since_14d": stamp(as_of - timedelta(days=14)),
        "since_30d": stamp(as_of - timedelta(days=30)),
        "repeat_since": stamp(as_of - timedelta(days=t.repeat_window_days)),
        "login_event": _SEGMENT.get("login_event", "logged_in"),
        "status_field": _ZENDESK.get("status_field", "status"),
        "solved_status": _ZENDESK.get("solved_status", "solved"),
        "csat_field": _ZENDESK.get("csat_field", "satisfaction_score"),
        **{f"open_status_{i}": s for i, s in enumerate(_OPEN_STATUSES)},
    }


def _int_id(anchor: str | None) -> int | None:
    """HubSpot and Zendesk ids are integers in the source (``id_text``); anything else matches nothing."""
    try:
        return int(anchor) if anchor is not None else None
    except ValueError:
        return None


def _naive_utc(v: datetime) -> datetime:
    return v if v.tzinfo is None else v.astimezone(UTC).replace(tzinfo=None)


def _sqlite_stamp(v: datetime) -> str:
    return v.strftime("%Y-%m-%d %H:%M:%S.%f")  # how SQLAlchemy stores DATETIME in SQLite


def _same(v: datetime) -> datetime:
    return v


def _timestamp(raw: Any) -> datetime:
    return raw if isinstance(raw, datetime) else datetime.fromisoformat(str(raw))


def _epoch_date(raw: Any) -> date:
    return datetime.fromtimestamp(int(raw), UTC).date()


def _cents(raw: Any) -> float:
    return round(int(raw) / 100, 2)


def _billing(r: dict[str, Any]) -> dict[str, Any]:
    """billing.status as ``read_status`` derives it; ``_``-keys feed the customer section."""
    has_sub = r["sub_status"] is not None and r["sub_created"] is not None  # required fields
    status = _STRIPE.get("status_map", {}).get(r["sub_status"], "past_due") if has_sub else "none"
    if status == "current" and r["delinquent"]:
        status = "past_due"
    mrr = None
    if has_sub and status != "canceled" and r["plan_amount"] is not None:
        amount = _cents(r["plan_amount"])
        mrr = round(amount / 12, 2) if (r["plan_interval"] or "month") == "year" else amount
    paid = r["paid_created"] is not None and r["paid_amount"] is not None
    method = None
    if r["has_method"]:
        method = f"{r['card_brand'] or 'card'} •{r['card_last4'] or '????'}"
    return {
        "status": status,
        "last_payment": _epoch_date(r["paid_created"]).isoformat() if paid else None,
        "last_payment_amount": _cents(r["paid_amount"]) if paid else None,
        "method": method,
        "balance_due": round(int(r["balance_cents"] or 0) / 100, 2),  # PostgreSQL sums to numeric
        "trial_ends": _epoch_date(r["trial_end"]).isoformat()
        if has_sub and r["trial_end"] is not None and r["sub_status"] == "trialing" else None,
        "_mrr": mrr, "_plan": r["sub_plan"] if has_sub else None, "_email": r["billing_email"] or None,
    }


def _customer(r: dict[str, Any], customer: CustomerRef, billing: dict[str, Any] | None,
              t: Thresholds) -> dict[str, Any]:
    has_account = r["account_name"] is not None
    mrr = float(r["account_mrr"]) if has_account and r["account_mrr"] is not None else None
    if mrr is None and billing is not None:
        mrr = billing["_mrr"]
    if has_account:
        status = r["account_status"]
    else:
        status = "active" if billing and billing["status"] not in ("canceled", "none") else None
    owner = r["owner_email"]
    return {
        "name": str(r["account_name"]) if has_account else customer.name,
        "email": r["contact_email"] or (billing["_email"] if billing else None),
        "tier": tier_for(mrr, t) if mrr is not None else None,
        "mrr": mrr,
        "plan": (r["account_plan"] if has_account else None) or (billing["_plan"] if billing else None),
        "status": status,
        "owner": str(owner).split("@", 1)[0].lower() if has_account and owner is not None else None,
    }


def _usage(r: dict[str, Any], as_of: datetime, t: Thresholds) -> dict[str, Any]:
    last_login = _timestamp(r["last_login"]) if r["last_login"] is not None else None
    return {
        "active_users": int(r["active_users_30d"] or 0),
        "last_login": last_login.date().isoformat() if last_login else None,
        "days_since_login": (as_of.date() - last_login.date()).days if last_login else None,
        "trend": ProductReader.trend(int(r["events_last_7d"] or 0), int(r["events_prior_7d"] or 0),
                                     t.trend_change),
    }


def _support(r: dict[str, Any]) -> dict[str, Any]:
    # Hours summed per ticket in the reader's order, so the float rounding is the reader's:
    # an SQL AVG over the same tickets rounds 2 of the 53 fixture customers differently.
    hours = [int(us) / 10**6 / 3600 for us in (r["resolution_us"] or "").split(",") if us]
    avg = round(sum(hours) / len(hours), 1) if hours else None
    repeat = int(r["repeat_max"] or 0)
    return {
        "open_tickets": int(r["open_tickets"] or 0),
        "total_tickets": int(r["total_tickets"]),
        "avg_resolution_time": f"{avg} hours" if avg is not None else None,
        "satisfaction_score": round(float(r["csat_sum"]) / r["csat_count"], 1) if r["csat_count"] else None,
        "repeat_issue_count": repeat if repeat > 1 else 0,
    }
