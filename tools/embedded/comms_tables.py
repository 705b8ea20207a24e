"""The communication and research sources' tables of the embedded warehouse (email, calendar,
chat, documents, calls, news), as connectors land them: re-exported by ``tools.embedded.tables``,
which describes the conventions (``_fivetran_synced`` on every table, naive UTC times).
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)


def _synced() -> Column:  # every table's (tools.embedded.tables uses it for the other sources' too)
    return Column("_fivetran_synced", DateTime, nullable=False, index=True)


# ------------------------------------------------ Communication and research sources
comms = MetaData()

email_message = Table(
    "email_message", comms,
    Column("id", String(64), primary_key=True),
    Column("thread_id", String(64), index=True),
    Column("subject", String(255)),
    Column("from_address", String(255)),
    Column("sent_at", DateTime, index=True),
    Column("direction", String(10)),  # inbound | outbound
    Column("body", Text),  # untrusted
    _synced(),
)
email_recipient = Table(
    "email_recipient", comms,
    Column("message_id", String(64), primary_key=True),
    Column("address", String(255), primary_key=True),
    Column("domain", String(255), index=True),  # lower-case domain of address (from and to/cc)
    Column("kind", String(5)),  # from | to | cc
    _synced(),
)
calendar_event = Table(
    "calendar_event", comms,
    Column("id", String(64), primary_key=True),
    Column("summary", String(255)),
    Column("start_at", DateTime, index=True),
    Column("end_at", DateTime),
    Column("organizer_email", String(255)),
    Column("description", Text),
    _synced(),
)
calendar_attendee = Table(
    "calendar_attendee", comms,
    Column("event_id", String(64), primary_key=True),
    Column("email", String(255), primary_key=True),
    Column("domain", String(255), index=True),
    Column("response_status", String(20)),
    _synced(),
)
chat_message = Table(
    "chat_message", comms,
    Column("id", String(64), primary_key=True),
    Column("channel", String(100)),
    Column("user_name", String(100)),
    Column("text", Text),  # internal text that may mention customers by name
    Column("ts", DateTime, index=True),
    _synced(),
)
document = Table(
    "document", comms,
    Column("id", String(64), primary_key=True),
    Column("title", String(255)),
    Column("kind", String(30)),  # proposal | contract | notes | plan | sow
    Column("account_domain", String(255), index=True),
    Column("owner_email", String(255)),
    Column("modified_time", DateTime),
    Column("url", String(500)),
    Column("description", Text),  # a plan's objectives, a document's summary (untrusted)
    _synced(),
)
call = Table(
    "call", comms,
    Column("id", String(64), primary_key=True),
    Column("title", String(255)),
    Column("started_at", DateTime, index=True),
    Column("duration_s", Integer),
    Column("talk_ratio", Float),  # share of time our side talked, 0..1
    Column("topics", Text),  # topics the recorder detected, "; "-separated (untrusted)
    _synced(),
)
call_participant = Table(
    "call_participant", comms,
    Column("call_id", String(64), primary_key=True),
    Column("email", String(255), primary_key=True),
    Column("domain", String(255), index=True),
    Column("affiliation", String(10)),  # internal | external
    _synced(),
)
call_highlight = Table(
    "call_highlight", comms,
    Column("id", String(64), primary_key=True),
    Column("call_id", String(64), index=True),
    Column("kind", String(30)),  # objection | competitor | pricing | next_step
    Column("text", Text),
    _synced(),
)
news_article = Table(
    "news_article", comms,
    Column("id", String(64), primary_key=True),
    Column("domain", String(255), index=True),
    Column("company_name", String(255)),
    Column("headline", String(500)),
    Column("kind", String(30)),  # funding | leadership | launch | acquisition | other
    Column("published_at", DateTime, index=True),
    Column("url", String(500)),
    _synced(),
)
