"""What each source's reader asks of a mapping: entities, fields, and the rules it applies.

The readers (``tools/sources/<source>.py``) take their windows, limits and accepted
values from the constants here, and the loader checks every mapping file against
:data:`SOURCES` (a required field or entity left out is a load error; an optional one
reads as null / no rows). ``docs/MAPPINGS.md``'s reference section is rendered from this
module (``python -m tools.mapping.docs``), and a test fails when the two disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

# ----------------------------------------------------------------------------- CRM
#: A contact whose last activity is at most this many days old is ``active`` (else ``cold``).
ACTIVE_CONTACT_DAYS = 30
#: Contact roles listed first, in this order; then by most recent activity.
CONTACT_ROLE_ORDER = ("champion", "exec sponsor", "decision maker")
#: Closed deals shown: closed in the last this many days (or without a close date).
CLOSED_DEALS_DAYS = 365
#: Activities shown: the newest this many up to the as-of date.
RECENT_ACTIVITIES = 20
#: Account statuses the traits and the book understand.
ACCOUNT_STATUSES = ("active", "churned", "prospect")

# ------------------------------------------------------------------------- billing
#: Failed charges shown: those of the last this many days.
FAILED_CHARGE_WINDOW_DAYS = 90
#: Invoices shown: the newest this many by ``created``.
INVOICES_SHOWN = 12
#: The ``charge.status`` of a paid charge, and of a failed one; the ``invoice.status`` that counts as owed.
CHARGE_PAID, CHARGE_FAILED, INVOICE_OPEN = "succeeded", "failed", "open"
#: What ``settings.status_map`` may map a subscription status to.
BILLING_STATES = ("current", "past_due", "canceled", "trialing")
#: The aggregate on ``charge`` that, when declared, gives the total revenue instead of summing paid charges.
REVENUE_AGGREGATE = "total_revenue"

# ------------------------------------------------------------------------- support
#: Tickets listed: the newest this many created up to the as-of date.
RECENT_TICKETS = 20
#: Comments listed per ticket: the oldest this many (the opening description first).
MAX_TICKET_COMMENTS = 10
#: Defaults of the support mapping's settings.
SUPPORT_DEFAULTS = {"open_statuses": ["new", "open", "pending", "hold"], "solved_status": "solved",
                    "csat_field": "satisfaction_score", "status_field": "status"}

# ------------------------------------------------------------------------- product
#: Product usage windows, in days: active users (30 and 7), event trend (last 7 against the 7 before).
USAGE_DAYS, USAGE_RECENT_DAYS = 30, 7
#: The login event when the mapping's ``settings.login_event`` is not set.
LOGIN_EVENT = "logged_in"

# ------------------------------------------------------------------------ commerce
#: Orders and refunds listed, newest first (counts and sums cover every one).
ORDERS_SHOWN, REFUNDS_SHOWN = 50, 50
#: An order's ``financial_status`` that means it was paid, and those that mean it was cancelled.
PAID_ORDER_STATUSES = ("paid", "partially_refunded", "refunded")
CANCELLED_ORDER_STATUSES = ("voided", "cancelled", "canceled")
#: Defaults of the commerce mapping's settings.
COMMERCE_DEFAULTS = {"refund_kinds": ["refund"], "payment_kinds": ["sale", "capture", "authorization"],
                     "succeeded": ["success"]}

# ------------------------------------------------------- email, calendar, calls, ...
#: ``settings.window_days`` defaults and the most items listed, per source.
EMAIL_WINDOW_DAYS, MAX_THREADS = 60, 10
CALENDAR_WINDOW_DAYS = 30
#: Past meetings reach back this many days (the engagement trend compares 30 days with the 30 before).
CALENDAR_PAST_DAYS = 60
CALLS_WINDOW_DAYS, MAX_CALLS = 90, 10
CHAT_WINDOW_DAYS, MAX_MENTIONS = 30, 20
MAX_DOCUMENTS = 20
NEWS_WINDOW_DAYS = 30


@dataclass(frozen=True)
class Field:
    """A field a reader reads: its name, the type of its value and whether the reader needs it."""

    name: str
    type: str = "text"
    required: bool = False
    doc: str = ""


@dataclass(frozen=True)
class EntitySchema:
    """An entity a reader reads, its fields and the rules (window, ordering, accepted values)."""

    name: str
    fields: tuple[Field, ...]
    required: bool = False
    doc: str = ""
    rules: tuple[str, ...] = ()
    custom: str | None = None  # the slice that carries this entity's custom fields

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)


@dataclass(frozen=True)
class SourceSchema:
    """One source: its entities and its ``settings`` keys (key, meaning)."""

    source: str
    entities: tuple[EntitySchema, ...]
    settings: tuple[tuple[str, str], ...] = ()

    def entity(self, name: str) -> EntitySchema | None:
        return next((e for e in self.entities if e.name == name), None)


def F(name: str, type_: str = "text", doc: str = "") -> Field:  # noqa: N802 - reads as a table
    """A required field."""
    return Field(name, type_, True, doc)


def O(name: str, type_: str = "text", doc: str = "") -> Field:  # noqa: N802, E743 - reads as a table
    """An optional field."""
    return Field(name, type_, False, doc)


UPDATED = O("updated_at", "datetime", "newest change: the slice's `source_updated_at`")

CRM = SourceSchema("crm", (
    EntitySchema("account", (
        F("id", "text", "the CRM's account id"), F("name", "text", "company name"),
        O("domain", "text", "website domain (`convert: domain`)"), O("industry"), O("employees", "int"),
        O("segment", "text", "enterprise, mid_market, smb, ..."), O("owner", "text", "account owner"),
        O("plan"), O("mrr", "float"), O("contract_value", "float"), O("renewal_date", "date"),
        O("status", "text", " / ".join(ACCOUNT_STATUSES)), O("lifecycle_stage"), O("churn_date", "date"),
        O("region"), O("country"), O("parent_id", "text", "the parent account's id (a relation)"),
        O("parent_name", "text", "the parent account's name"), UPDATED,
    ), required=True, custom="crm.account", rules=("one row per account id",)),
    EntitySchema("contact", (
        O("id"), F("account_id", "text", "the account the contact belongs to"), O("email"),
        O("first_name"), O("last_name"), O("name", "text", "full name, when the source has no first/last"),
        O("title"), O("phone"),
        O("role", "text", "champion, exec sponsor, decision maker, budget holder, ..."),
        O("last_activity", "datetime"), UPDATED,
    ), custom="crm.contacts", rules=(
        f"roles {', '.join(CONTACT_ROLE_ORDER)} first, then by `last_activity`, newest first",
        f"`active` when `last_activity` is at most {ACTIVE_CONTACT_DAYS} days old, else `cold`",
        "display name: first + last name, else `name`, else the email")),
    EntitySchema("opportunity", (
        O("id"), F("account_id"), F("name"), O("stage"), O("amount", "float"), O("close_date", "date"),
        O("is_closed", "bool"), O("is_won", "bool"), O("loss_reason"), O("next_step"), UPDATED,
    ), rules=("open deals: all; closed deals: closed in the last "
              f"{CLOSED_DEALS_DAYS} days or without a `close_date`", "by `close_date`, latest first")),
    EntitySchema("activity", (
        O("id"), F("account_id"), F("date", "datetime"), O("kind", "text", "email, call, meeting, note, ..."),
        O("summary"), UPDATED,
    ), rules=(f"the newest {RECENT_ACTIVITIES} up to the as-of date",)),
))

BILLING = SourceSchema("billing", (
    EntitySchema("customer", (
        F("id", "text", "the billing customer id"), O("email"), O("name"),
        O("crm_company_id", "text", "the CRM account id (identity)"), O("delinquent", "bool"),
        O("balance", "float"), O("currency", "text", "ISO code; `usd` when missing"), O("created", "datetime"),
        UPDATED,
    ), required=True, custom="billing.status"),
    EntitySchema("subscription", (
        O("id"), F("customer_id"), F("status", "text", "the billing system's status, see `status_map`"),
        O("plan"), O("amount", "float", "per `interval`"), O("interval", "text", "month (default) or year"),
        O("current_period_end", "datetime"), O("trial_end", "datetime"), O("canceled_at", "datetime"),
        O("created", "datetime"), UPDATED,
    ), rules=("the newest by `created` gives status, plan and MRR (a yearly amount / 12)",
              f"`settings.status_map`: subscription status → one of {', '.join(BILLING_STATES)}; "
              "an unmapped status is `past_due`; no subscription is `none`; a delinquent customer "
              "of a `current` subscription is `past_due`")),
    EntitySchema("invoice", (
        F("id"), F("customer_id"), O("number"), O("status", "text", f"`{INVOICE_OPEN}` counts toward the balance due"),
        O("amount_due", "float"), O("amount_paid", "float"), O("amount_remaining", "float"),
        F("created", "datetime"), O("due_date", "datetime"), O("paid_at", "datetime"), UPDATED,
    ), rules=(f"the newest {INVOICES_SHOWN} by `created`",
              f"balance due: the sum of `amount_remaining` of the `{INVOICE_OPEN}` invoices")),
    EntitySchema("charge", (
        F("id"), F("customer_id"), F("amount", "float"),
        F("status", "text", f"`{CHARGE_PAID}` and `{CHARGE_FAILED}` are read"), O("failure_code"),
        O("failure_message"), F("created", "datetime"), O("payment_method_id"), UPDATED,
    ), rules=(f"failed charges: `{CHARGE_FAILED}` in the last {FAILED_CHARGE_WINDOW_DAYS} days, newest first",
              f"last payment: the newest `{CHARGE_PAID}` charge",
              f"total revenue: the sum of `{CHARGE_PAID}` charges, or the `{REVENUE_AGGREGATE}` aggregate "
              "when the mapping declares one")),
    EntitySchema("payment_method", (
        O("id"), F("customer_id"), O("created", "datetime"), O("brand"), O("last4"), UPDATED,
    ), rules=("the one shown: the newest by `created` (any one when `created` is not mapped)",)),
), settings=(("status_map", "subscription status → " + " / ".join(BILLING_STATES)),))

SUPPORT = SourceSchema("support", (
    EntitySchema("organization", (F("id"), O("name"), UPDATED), required=True),
    EntitySchema("org_domain", (F("organization_id"), F("domain")), rules=("identity only",)),
    EntitySchema("user", (O("id"), F("organization_id"), O("email"), O("name"), O("phone"), O("role")),
                 rules=("identity only",)),
    EntitySchema("ticket", (
        F("id"), F("organization_id"),
        O("requester_id", "text", "who asked: a customer support knows only as people is read by it"),
        O("subject"), O("body"),
        F("status", "text", "open when in `settings.open_statuses`"), O("priority"),
        O("type", "text", "issue type: open tickets by type, repeat issues"), F("created_at", "datetime"), UPDATED,
    ), rules=(f"tickets listed: the newest {RECENT_TICKETS} created up to the as-of date",
              "summary: every ticket created up to the as-of date",
              "by `organization_id` for an account; by `requester_id` for a person with no organization")),
    EntitySchema("ticket_comment", (
        O("id"), F("ticket_id"), O("author_id", "text", "who wrote it: the ticket's `requester_id` is the customer"),
        O("text", "text", "the comment (untrusted)"), O("public", "bool"), O("created_at", "datetime"),
    ), rules=(f"the oldest {MAX_TICKET_COMMENTS} per listed ticket, up to the as-of date",)),
    EntitySchema("ticket_history", (F("ticket_id"), F("field"), O("value"), F("updated", "datetime")),
                 rules=("resolution time: created → first change of `status_field` to `solved_status`",
                        "CSAT: the latest numeric `csat_field` value per ticket")),
    EntitySchema("ticket_request", (
        F("id"), O("organization_id"), O("requester_email"), O("requester_name"), O("subject"),
        O("description"), F("status"), O("issue_type"), O("via"), F("created_at", "datetime"), UPDATED,
    ), rules=("triage input: tickets in `settings.triage_statuses`, oldest first",)),
), settings=tuple((k, f"default `{v}`") for k, v in SUPPORT_DEFAULTS.items())
  + (("triage_statuses", "statuses waiting for triage"),))

PRODUCT = SourceSchema("product", (
    EntitySchema("group", (O("id"), F("group_id"), F("user_id"), O("name"), O("domain"), UPDATED),
                 required=True, rules=("users of the account: the group's `user_id`s",)),
    EntitySchema("event", (O("id"), F("user_id"), F("event"), F("timestamp", "datetime"), UPDATED),
                 required=True, rules=(
                     f"active users: distinct users with events in the last {USAGE_DAYS} and "
                     f"{USAGE_RECENT_DAYS} days; trend: events of the last {USAGE_RECENT_DAYS} days "
                     f"against the {USAGE_RECENT_DAYS} before",
                     "features used: `settings.features` seen in the last "
                     f"{USAGE_DAYS} days; last login: the newest `settings.login_event`",
                     "an account's: the events of its group's users; a person's in no group: their own "
                     "`user_id`'s")),
), settings=(("login_event", f"default `{LOGIN_EVENT}`"), ("features", "the feature events adoption counts")))

COMMERCE = SourceSchema("commerce", (
    EntitySchema("customer", (F("id", "text", "the store's customer id"), O("email"), O("first_name"),
                              O("last_name"), O("name"), O("phone"), O("currency"), UPDATED), required=True,
                 rules=("a customer without a commerce record is matched by its email addresses",)),
    EntitySchema("order", (
        F("id"), F("customer_id"), O("number"), O("placed_at", "datetime"), O("cancelled_at", "datetime"),
        O("cancel_reason"), O("financial_status", "text", "paid, partially_refunded, refunded, pending, voided, ..."),
        O("fulfillment_status", "text", "fulfilled, unfulfilled, ..."), O("currency"), O("total", "float"), UPDATED,
    ), required=True, rules=(
        f"the newest {ORDERS_SHOWN} by `placed_at` listed; counts and sums cover every order",
        "status: cancelled (`cancelled_at`, or a `financial_status` of "
        f"{', '.join(CANCELLED_ORDER_STATUSES)}), refunded, fulfilled, else open",
        f"total paid: the `total` of orders whose `financial_status` is {', '.join(PAID_ORDER_STATUSES)}")),
    EntitySchema("order_item", (O("id"), F("order_id"), F("title"), O("sku"), O("quantity", "int"),
                                O("price", "float"), O("fulfillment_status")),
                 rules=("the items of the orders listed, by `id`",)),
    EntitySchema("refund", (F("id"), F("order_id"), O("created", "datetime"), O("amount", "float"), O("note")),
                 rules=(f"the newest {REFUNDS_SHOWN} by `created` listed; sums cover every refund",
                        "amount: the mapped `amount`, else the sum of its successful refund transactions")),
    EntitySchema("transaction", (
        O("id"), O("order_id"), F("customer_id"), F("refund_id"), O("kind"), O("status"), O("amount", "float"),
        O("created", "datetime"), O("card_brand"), O("card_number", "text", "only its last four digits are kept"),
    ), rules=("refund amounts (`settings.refund_kinds`) and, without a `payment_method` entity, the "
              "cards on file: distinct cards of successful payment transactions, newest first",)),
    EntitySchema("payment_method", (O("id"), F("customer_id"), O("kind"), O("brand"), O("last4"),
                                    O("exp_month", "int"), O("exp_year", "int"), O("is_default", "bool")),
                 rules=("every card on file, the default first",)),
    EntitySchema("address", (O("id"), F("customer_id"), O("name"), O("first_name"), O("last_name"), O("company"),
                             O("line1"), O("line2"), O("city"), O("region"), O("postcode"), O("country"),
                             O("phone"), O("is_default", "bool")),
                 rules=("every address, the default first",)),
), settings=tuple((k, f"default `{v}`") for k, v in COMMERCE_DEFAULTS.items()))

EMAIL = SourceSchema("email", (
    EntitySchema("message", (F("id"), F("thread_id"), O("subject"), O("from_address"),
                             F("sent_at", "datetime"), O("direction", "text", "inbound / outbound"), O("body"),
                             UPDATED), required=True,
                 rules=(f"messages of the last `settings.window_days` (default {EMAIL_WINDOW_DAYS}) days",
                        f"the newest {MAX_THREADS} threads")),
    EntitySchema("recipient", (F("message_id"), O("address"), F("domain"), O("kind")), required=True,
                 rules=("matched by the customer's domains",)),
), settings=(("window_days", f"default {EMAIL_WINDOW_DAYS}"),))

CALENDAR = SourceSchema("calendar", (
    EntitySchema("event", (F("id"), O("title"), F("start", "datetime"), O("end", "datetime"),
                           O("organizer", "text", "who invited: our side or theirs (last touch)"),
                           O("agenda", "text", "the event's description (untrusted)"), UPDATED), required=True,
                 rules=(f"meetings from `settings.past_days` (default {CALENDAR_PAST_DAYS}) days back to "
                        f"`settings.window_days` (default {CALENDAR_WINDOW_DAYS}) days ahead",)),
    EntitySchema("attendee", (F("event_id"), O("email"), F("domain")), required=True,
                 rules=("matched by the customer's domains",)),
), settings=(("window_days", f"default {CALENDAR_WINDOW_DAYS}"),
             ("past_days", f"default {CALENDAR_PAST_DAYS}")))

CALLS = SourceSchema("calls", (
    EntitySchema("call", (F("id"), O("title"), F("started_at", "datetime"), O("duration_s", "int"),
                          O("talk_ratio", "float"),
                          O("topics", "text", "topics the call covered, separated by `;` or `,` (untrusted)"),
                          UPDATED), required=True,
                 rules=(f"the newest {MAX_CALLS} of the last `settings.window_days` "
                        f"(default {CALLS_WINDOW_DAYS}) days",)),
    EntitySchema("participant", (F("call_id"), O("email"), F("domain"), O("affiliation")), required=True,
                 rules=("matched by the customer's domains",)),
    EntitySchema("highlight", (O("id"), F("call_id"), O("kind"), O("text"))),
), settings=(("window_days", f"default {CALLS_WINDOW_DAYS}"),))

CHAT = SourceSchema("chat", (
    EntitySchema("message", (F("id"), O("channel"), O("author"), F("text"), F("ts", "datetime"), UPDATED),
                 required=True, rules=(f"the newest {MAX_MENTIONS} naming the customer in the last "
                                       f"`settings.window_days` (default {CHAT_WINDOW_DAYS}) days",)),
), settings=(("window_days", f"default {CHAT_WINDOW_DAYS}"),))

DOCUMENTS = SourceSchema("documents", (
    EntitySchema("document", (F("id"), O("title"), O("kind"), F("domain"), O("owner"), F("updated", "datetime"),
                              O("url"), O("objectives", "text", "a plan's objectives, a document's summary (untrusted)"),
                              UPDATED), required=True,
                 rules=(f"the newest {MAX_DOCUMENTS} by `updated` up to the as-of date",)),
))

RESEARCH = SourceSchema("research", (
    EntitySchema("article", (F("id"), F("domain"), O("company_name"), F("headline"), O("kind"),
                             F("published_at", "datetime"), O("url"), UPDATED), required=True,
                 rules=(f"articles of the last `settings.window_days` (default {NEWS_WINDOW_DAYS}) days",)),
), settings=(("window_days", f"default {NEWS_WINDOW_DAYS}"),))

#: Every source's schema, by source name.
SOURCES: dict[str, SourceSchema] = {s.source: s for s in (
    CRM, BILLING, PRODUCT, SUPPORT, EMAIL, CALENDAR, CALLS, CHAT, DOCUMENTS, RESEARCH, COMMERCE)}
