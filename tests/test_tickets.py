"""Reading tickets to triage: from the support source (SQLite and PostgreSQL) and from JSON files."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import datetime

import pytest
from sqlalchemy import create_engine, text

from tools.settings import SourceConfig
from tools.sources.registry import SourceMisconfigured
from tools.sources.tickets import (
    TRIAGE_STATUSES,
    TicketNotFound,
    TicketSourceUnavailable,
    count_open_tickets,
    get_ticket,
    open_tickets,
    ticket_from_file,
)

from .conftest import settings_for


def test_get_ticket_with_requester_and_organization(backend):
    t = get_ticket(backend.settings, "1001")
    assert (t.id, t.subject, t.status, t.issue_type, t.via) == ("1001", "Card declined", "open", "billing", "email")
    assert t.description.startswith("Hi, we just got an email saying our card was declined.")
    assert (t.requester_email, t.requester_name) == ("rhoda.runner@acme.com", "Rhoda Runner")
    assert t.created_at == datetime(2026, 1, 2, 15, 20)
    acme, _ = backend.index.resolve("acme.com")
    assert t.organization_id == acme.anchors["support"]


def test_get_ticket_keeps_untrusted_text_intact(sqlite_ready):
    t = get_ticket(sqlite_ready.settings, "1013")
    assert t.subject == "Comment exporter nos factures en PDF ?"
    assert "où peut-on télécharger" in t.description
    assert t.requester_email == "rachael+support@tyrell.fr"
    assert get_ticket(sqlite_ready.settings, "1010").issue_type is None


@pytest.mark.parametrize("ref", [" 1001 ", "#1001"])
def test_get_ticket_accepts_spacing_and_a_hash(sqlite_ready, ref):
    assert get_ticket(sqlite_ready.settings, ref).id == "1001"


def test_unknown_ticket_is_one_clear_line(sqlite_ready):
    with pytest.raises(TicketNotFound) as exc:
        get_ticket(sqlite_ready.settings, "9999")
    assert str(exc.value) == "no ticket 9999 in the support source"


@pytest.mark.parametrize("ref", ["abc", "", "12ab", "1e3", "-5", "1001; drop table ticket"])
def test_bad_ticket_ids_are_not_found(sqlite_ready, ref):
    with pytest.raises(TicketNotFound, match="in the support source .*ticket ids are numbers") as exc:
        get_ticket(sqlite_ready.settings, ref)
    assert "\n" not in str(exc.value)


def test_support_not_connected_is_its_own_error(sqlite_warehouse, tmp_path):
    settings = settings_for(sqlite_warehouse, tmp_path)
    settings.sources["support"] = SourceConfig(url=sqlite_warehouse, enabled=False)
    with pytest.raises(TicketSourceUnavailable, match="support source is not connected"):
        get_ticket(settings, "1001")
    with pytest.raises(TicketSourceUnavailable):
        open_tickets(settings)  # at the call, not at the first ticket


def test_support_without_ticket_tables_is_unavailable(tmp_path):
    sqlite3.connect(tmp_path / "empty.sqlite").close()  # a database, but no ticket tables
    empty = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    settings = settings_for(empty, tmp_path)
    with pytest.raises(TicketSourceUnavailable, match="failed reading ticket 1001"):
        get_ticket(settings, "1001")
    with pytest.raises(TicketSourceUnavailable, match="failed listing open tickets"):
        open_tickets(settings)


def test_support_at_a_missing_file_is_a_configuration_error(tmp_path):
    settings = settings_for(f"sqlite:///{tmp_path / 'typo.sqlite'}", tmp_path)
    with pytest.raises(SourceMisconfigured, match="does not exist"):
        get_ticket(settings, "1001")
    assert not (tmp_path / "typo.sqlite").exists()  # read, never created


def test_open_tickets_match_a_direct_count_oldest_first(backend):
    url = backend.settings.source("support").url
    statuses = ", ".join(f"'{s}'" for s in TRIAGE_STATUSES)
    with create_engine(url).connect() as conn:
        expected = conn.execute(text(f"SELECT count(*) FROM ticket WHERE status IN ({statuses})")).scalar_one()
    stream = open_tickets(backend.settings)
    assert isinstance(stream, Iterator)
    tickets = list(stream)
    assert len(tickets) == expected == count_open_tickets(backend.settings) > 40
    assert all(t.status in TRIAGE_STATUSES for t in tickets)
    created = [(t.created_at, int(t.id)) for t in tickets]
    assert created == sorted(created)
    assert len({t.id for t in tickets}) == len(tickets)
    assert "1010" in {t.id for t in tickets} and "1005" not in {t.id for t in tickets}  # 1005 is on hold


def test_open_tickets_limit_and_early_stop(sqlite_ready):
    first = list(open_tickets(sqlite_ready.settings, limit=3))
    assert len(first) == 3
    stream = open_tickets(sqlite_ready.settings)
    assert [next(stream).id for _ in range(3)] == [t.id for t in first]
    stream.close()  # releases the connection mid-stream
    assert list(open_tickets(sqlite_ready.settings, limit=0)) == []


# ---------------------------------------------------------------------------- files
def _write(tmp_path, content: str, name: str = "ticket.json"):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def test_ticket_from_file(tmp_path):
    path = _write(tmp_path, json.dumps({
        "id": 42, "subject": "Card declined", "description": "Our card was declined.",
        "requester_email": "wile.coyote@acme.com", "requester_name": "Wile Coyote",
        "created_at": "2026-01-14T10:00:00+01:00", "issue_type": "billing"}))
    t = ticket_from_file(path)
    assert (t.id, t.subject, t.requester_email, t.issue_type) == ("42", "Card declined", "wile.coyote@acme.com",
                                                                  "billing")
    assert t.created_at == datetime(2026, 1, 14, 9, 0)  # naive UTC


def test_ticket_from_file_needs_only_some_text(tmp_path):
    t = ticket_from_file(_write(tmp_path, '{"description": "Exports fail every night."}'))
    assert (t.subject, t.id, t.requester_email) == ("", None, None)


@pytest.mark.parametrize(("content", "problem"), [
    ('{"subject": "Card declined", ', "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"requester_email": "a@b.co"}', "needs a subject or a description"),
    ('{"subject": "  ", "description": ""}', "needs a subject or a description"),
    ('{"subject": "Hi", "requester_email": "not-an-email"}', "is not an email address"),
    ('{"subject": "Hi", "desription": "typo"}', "unknown key"),
    ('{"subject": 3}', "subject"),
    ('{"subject": "Hi", "created_at": "yesterday"}', "created_at"),
])
def test_malformed_ticket_files_are_one_line_naming_the_file(tmp_path, content, problem):
    path = _write(tmp_path, content)
    with pytest.raises(ValueError, match=problem) as exc:
        ticket_from_file(path)
    message = str(exc.value)
    assert message.startswith(str(path)) and "\n" not in message


def test_missing_ticket_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read the ticket file") as exc:
        ticket_from_file(tmp_path / "nope.json")
    assert "nope.json" in str(exc.value)
