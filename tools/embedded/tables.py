"""ELT-style source tables, as Fivetran/Airbyte connectors land them in a warehouse.

These definitions describe *the source systems*, not the product: the product reads
them only through the declarative mappings in ``tools/mapping/``. They exist so the
fixture generator can create the same tables on SQLite and PostgreSQL.

Conventions, as in real connector output:

* every table has ``_fivetran_synced`` (UTC, naive): when the row last changed in
  the warehouse; mappings use it as the row's *source updated at*;
* Stripe times are epoch seconds and money is integer cents;
* HubSpot ``engagement.timestamp`` is epoch milliseconds;
* Zendesk, Segment and the communication tables use timestamps (UTC, naive);
* custom fields are flattened into ``property_*`` (HubSpot) or ``custom_*``
  (Zendesk) columns.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
)

from tools.embedded.comms_tables import (  # noqa: F401 - the communication and research tables: importable here
    _synced,
    calendar_attendee,
    calendar_event,
    call,
    call_highlight,
    call_participant,
    chat_message,
    comms,
    document,
    email_message,
    email_recipient,
    news_article,
)

# --------------------------------------------------------------------------- CRM
hubspot = MetaData()

hs_owner = Table(
    "owner", hubspot,
    Column("owner_id", BigInteger, primary_key=True),
    Column("email", String(255)),  # dana.scully@example-vendor.test
    Column("first_name", String(100)),
    Column("last_name", String(100)),
    _synced(),
)
hs_company = Table(
    "company", hubspot,
    Column("id", BigInteger, primary_key=True),
    Column("property_name", String(255)),
    Column("property_domain", String(255), index=True),
    Column("property_industry", String(100)),
    Column("property_numberofemployees", Integer),
    Column("property_annualrevenue", Numeric(18, 2)),
    Column("property_lifecyclestage", String(50)),  # customer | opportunity | lead | other
    Column("property_hubspot_owner_id", BigInteger),
    Column("property_plan_name", String(100)),  # custom
    Column("property_mrr", Numeric(14, 2)),  # custom, currency units
    Column("property_contract_value", Numeric(14, 2)),  # custom, annual
    Column("property_renewal_date", Date),  # custom
    Column("property_segment", String(50)),  # custom: enterprise | mid_market | self_serve
    Column("property_customer_status", String(50)),  # custom: active | churned | prospect
    Column("property_churn_date", Date),  # custom
    Column("property_region", String(50)),  # custom: NA | EU | APAC
    Column("property_country", String(100)),
    Column("is_deleted", Boolean, nullable=False, default=False),
    _synced(),
)
hs_contact = Table(
    "contact", hubspot,
    Column("id", BigInteger, primary_key=True),
    Column("property_associatedcompanyid", BigInteger, index=True),
    Column("property_email", String(255), index=True),
    Column("property_firstname", String(100)),
    Column("property_lastname", String(100)),
    Column("property_jobtitle", String(150)),
    Column("property_phone", String(50)),
    Column("property_hs_buying_role", String(50)),  # CHAMPION | EXECUTIVE_SPONSOR | DECISION_MAKER | INFLUENCER | END_USER
    Column("property_notes_last_contacted", DateTime),
    Column("is_deleted", Boolean, nullable=False, default=False),
    _synced(),
)
hs_deal_pipeline_stage = Table(
    "deal_pipeline_stage", hubspot,
    Column("stage_id", String(50), primary_key=True),
    Column("label", String(100)),  # e.g. "Proposal", "Contract Sent", "Closed Won"
    Column("probability", Float),
    Column("is_closed", Boolean),
    _synced(),
)
hs_deal = Table(
    "deal", hubspot,
    Column("deal_id", BigInteger, primary_key=True),
    Column("property_associatedcompanyid", BigInteger, index=True),
    Column("property_dealname", String(255)),
    Column("deal_pipeline_stage_id", String(50)),
    Column("property_amount", Numeric(14, 2)),
    Column("property_closedate", DateTime),
    Column("property_closed_lost_reason", String(255)),
    Column("property_hs_next_step", String(255)),
    Column("property_createdate", DateTime),
    Column("is_deleted", Boolean, nullable=False, default=False),
    _synced(),
)
hs_engagement = Table(
    "engagement", hubspot,
    Column("id", BigInteger, primary_key=True),
    Column("company_id", BigInteger, index=True),
    Column("type", String(20)),  # EMAIL | CALL | MEETING | NOTE
    Column("timestamp", BigInteger),  # epoch milliseconds
    Column("owner_id", BigInteger),
    _synced(),
)
hs_engagement_email = Table(
    "engagement_email", hubspot,
    Column("engagement_id", BigInteger, primary_key=True),
    Column("subject", String(255)),
    _synced(),
)
hs_engagement_call = Table(
    "engagement_call", hubspot,
    Column("engagement_id", BigInteger, primary_key=True),
    Column("title", String(255)),
    Column("body", Text),
    _synced(),
)
hs_engagement_meeting = Table(
    "engagement_meeting", hubspot,
    Column("engagement_id", BigInteger, primary_key=True),
    Column("title", String(255)),
    _synced(),
)
hs_engagement_note = Table(
    "engagement_note", hubspot,
    Column("engagement_id", BigInteger, primary_key=True),
    Column("body", Text),
    _synced(),
)

# Salesforce flavour of the CRM (only used by its own small fixture).
salesforce = MetaData()

sf_user = Table(
    "user", salesforce,
    Column("Id", String(18), primary_key=True),
    Column("Username", String(255)),  # dana.scully@example-vendor.test
    Column("Name", String(255)),
    Column("SystemModstamp", DateTime, nullable=False),
)
sf_account = Table(
    "account", salesforce,
    Column("Id", String(18), primary_key=True),
    Column("Name", String(255)),
    Column("Website", String(255), index=True),  # "https://www.acme.com"
    Column("Industry", String(100)),
    Column("NumberOfEmployees", Integer),
    Column("Type", String(50)),  # Customer | Prospect | Former Customer
    Column("OwnerId", String(18)),
    Column("Plan__c", String(100)),
    Column("MRR__c", Numeric(14, 2)),
    Column("Contract_Value__c", Numeric(14, 2)),
    Column("Renewal_Date__c", Date),
    Column("Segment__c", String(50)),
    Column("Region__c", String(50)),
    Column("BillingCountry", String(100)),
    Column("Churn_Date__c", Date),
    Column("IsDeleted", Boolean, nullable=False, default=False),
    Column("SystemModstamp", DateTime, nullable=False),
)
sf_contact = Table(
    "contact", salesforce,
    Column("Id", String(18), primary_key=True),
    Column("AccountId", String(18), index=True),
    Column("Email", String(255), index=True),
    Column("FirstName", String(100)),
    Column("LastName", String(100)),
    Column("Title", String(150)),
    Column("Phone", String(50)),
    Column("Role__c", String(50)),  # Champion | Executive Sponsor | Decision Maker | ...
    Column("LastActivityDate", Date),
    Column("IsDeleted", Boolean, nullable=False, default=False),
    Column("SystemModstamp", DateTime, nullable=False),
)
sf_opportunity = Table(
    "opportunity", salesforce,
    Column("Id", String(18), primary_key=True),
    Column("AccountId", String(18), index=True),
    Column("Name", String(255)),
    Column("StageName", String(100)),  # "Proposal/Price Quote", "Closed Won", ...
    Column("Amount", Numeric(14, 2)),
    Column("CloseDate", Date),
    Column("IsClosed", Boolean),
    Column("IsWon", Boolean),
    Column("Loss_Reason__c", String(255)),
    Column("NextStep", String(255)),
    Column("IsDeleted", Boolean, nullable=False, default=False),
    Column("SystemModstamp", DateTime, nullable=False),
)
sf_task = Table(
    "task", salesforce,
    Column("Id", String(18), primary_key=True),
    Column("AccountId", String(18), index=True),
    Column("Subject", String(255)),
    Column("TaskSubtype", String(50)),  # Call | Email | Task
    Column("ActivityDate", Date),
    Column("Description", Text),
    Column("IsDeleted", Boolean, nullable=False, default=False),
    Column("SystemModstamp", DateTime, nullable=False),
)
sf_event = Table(
    "event", salesforce,
    Column("Id", String(18), primary_key=True),
    Column("AccountId", String(18), index=True),
    Column("Subject", String(255)),
    Column("ActivityDateTime", DateTime),
    Column("Description", Text),
    Column("IsDeleted", Boolean, nullable=False, default=False),
    Column("SystemModstamp", DateTime, nullable=False),
)

# ------------------------------------------------------------------------ Billing
stripe = MetaData()

st_customer = Table(
    "customer", stripe,
    Column("id", String(40), primary_key=True),  # cus_...
    Column("email", String(255), index=True),
    Column("name", String(255)),
    Column("metadata", Text),  # JSON text, e.g. {"crm_company_id": "1006"}
    Column("delinquent", Boolean),
    Column("balance", BigInteger),  # cents
    Column("currency", String(3)),
    Column("created", BigInteger),  # epoch seconds
    _synced(),
)
st_subscription = Table(
    "subscription", stripe,
    Column("id", String(40), primary_key=True),
    Column("customer_id", String(40), index=True),
    Column("status", String(20)),  # active | past_due | unpaid | canceled | trialing
    Column("plan_nickname", String(100)),
    Column("plan_amount", BigInteger),  # cents per interval
    Column("plan_interval", String(10)),  # month | year
    Column("current_period_start", BigInteger),
    Column("current_period_end", BigInteger),
    Column("trial_end", BigInteger),
    Column("cancel_at", BigInteger),
    Column("canceled_at", BigInteger),
    Column("created", BigInteger),
    _synced(),
)
st_invoice = Table(
    "invoice", stripe,
    Column("id", String(40), primary_key=True),
    Column("customer_id", String(40), index=True),
    Column("subscription_id", String(40)),
    Column("number", String(40)),
    Column("status", String(20)),  # draft | open | paid | uncollectible | void
    Column("amount_due", BigInteger),
    Column("amount_paid", BigInteger),
    Column("amount_remaining", BigInteger),
    Column("currency", String(3)),
    Column("created", BigInteger),
    Column("due_date", BigInteger),
    Column("status_transitions_paid_at", BigInteger),
    _synced(),
)
st_charge = Table(
    "charge", stripe,
    Column("id", String(40), primary_key=True),
    Column("customer_id", String(40), index=True),
    Column("invoice_id", String(40)),
    Column("payment_method_id", String(40)),
    Column("amount", BigInteger),
    Column("currency", String(3)),
    Column("status", String(20)),  # succeeded | failed | pending
    Column("failure_code", String(50)),
    Column("failure_message", String(255)),
    Column("created", BigInteger),
    _synced(),
)
st_payment_method = Table(
    "payment_method", stripe,
    Column("id", String(40), primary_key=True),
    Column("customer_id", String(40), index=True),
    Column("type", String(20)),  # card
    Column("created", BigInteger),
    _synced(),
)
st_payment_method_card = Table(
    "payment_method_card", stripe,
    Column("payment_method_id", String(40), primary_key=True),
    Column("brand", String(20)),
    Column("last4", String(4)),
    Column("exp_month", Integer),
    Column("exp_year", Integer),
    Column("fingerprint", String(40)),
    _synced(),
)

# ---------------------------------------------------------------------- Product
segment = MetaData()

sg_identifies = Table(
    "identifies", segment,
    Column("id", String(64), primary_key=True),
    Column("user_id", String(64), index=True),
    Column("anonymous_id", String(64)),
    Column("email", String(255), index=True),
    Column("name", String(255)),
    Column("timestamp", DateTime),
    Column("received_at", DateTime, nullable=False),
)
sg_aliases = Table(  # alias(): previous_id (an anonymous id before sign-up) is user_id
    "aliases", segment,
    Column("id", String(64), primary_key=True),
    Column("previous_id", String(64), index=True),
    Column("user_id", String(64), index=True),
    Column("timestamp", DateTime),
    Column("received_at", DateTime, nullable=False),
)
sg_groups = Table(
    "groups", segment,
    Column("id", String(64), primary_key=True),
    Column("user_id", String(64), index=True),
    Column("group_id", String(64), index=True),
    Column("name", String(255)),  # group trait
    Column("website", String(255), index=True),  # group trait: bare domain
    Column("timestamp", DateTime),
    Column("received_at", DateTime, nullable=False, index=True),  # what change detection scans
)
sg_tracks = Table(
    "tracks", segment,
    Column("id", String(64), primary_key=True),
    Column("user_id", String(64)),
    Column("anonymous_id", String(64)),
    Column("event", String(100)),  # logged_in | report_created | dashboard_viewed | export_run | integration_connected | ...
    Column("timestamp", DateTime),
    Column("received_at", DateTime, nullable=False, index=True),  # what change detection scans
    Index("ix_tracks_user_ts", "user_id", "timestamp"),
)

# ---------------------------------------------------------------------- Support
zendesk = MetaData()

zd_organization = Table(
    "organization", zendesk,
    Column("id", BigInteger, primary_key=True),
    Column("name", String(255), index=True),
    Column("created_at", DateTime),
    Column("updated_at", DateTime),
    _synced(),
)
zd_domain_name = Table(
    "domain_name", zendesk,
    Column("organization_id", BigInteger, primary_key=True),
    Column("index", Integer, primary_key=True),
    Column("domain_name", String(255), index=True),
    _synced(),
)
zd_user = Table(
    "user", zendesk,
    Column("id", BigInteger, primary_key=True),
    Column("organization_id", BigInteger, index=True),
    Column("email", String(255), index=True),
    Column("name", String(255)),
    Column("phone", String(50)),
    Column("role", String(20)),  # end-user | agent | admin
    _synced(),
)
zd_ticket = Table(
    "ticket", zendesk,
    Column("id", BigInteger, primary_key=True),
    Column("organization_id", BigInteger, index=True),
    Column("requester_id", BigInteger, index=True),
    Column("subject", String(255)),
    Column("description", Text),  # untrusted customer text
    Column("status", String(20)),  # new | open | pending | hold | solved | closed
    Column("priority", String(20)),  # urgent | high | normal | low
    Column("type", String(20)),  # problem | incident | question | task
    Column("custom_issue_type", String(50)),  # billing | bug | how_to | account_access | sso | feature_request | security | cancellation | ...
    Column("via_channel", String(20)),  # email | web | chat | api
    Column("created_at", DateTime),
    Column("updated_at", DateTime),
    _synced(),
)
zd_ticket_comment = Table(
    "ticket_comment", zendesk,
    Column("id", BigInteger, primary_key=True),
    Column("ticket_id", BigInteger, index=True),
    Column("user_id", BigInteger),
    Column("body", Text),
    Column("public", Boolean),
    Column("created", DateTime),
    _synced(),
)
zd_ticket_field_history = Table(
    "ticket_field_history", zendesk,
    Column("ticket_id", BigInteger, primary_key=True),
    Column("field_name", String(50), primary_key=True),  # status | satisfaction_score
    Column("updated", DateTime, primary_key=True),
    Column("value", String(255)),  # status value, or CSAT "1".."5"
    Column("user_id", BigInteger),
    _synced(),
)

#: Metadata of every table the embedded default warehouse holds (HubSpot CRM flavour).
#: The Salesforce tables live in their own metadata because their names
#: (``contact``, ``user``) collide with the HubSpot and Zendesk ones.
DEFAULT_SOURCES: tuple[MetaData, ...] = (hubspot, stripe, segment, zendesk, comms)

meta = MetaData()
custctx_meta = Table(
    "_custctx_meta", meta,
    Column("key", String(50), primary_key=True),
    Column("value", Text),
)
