"""The declarative mapping engine: conversions, joins, unions, malformed rows, errors."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

import pytest
import yaml
from sqlalchemy import create_engine, text

from tools.embedded.generate import seed_salesforce
from tools.mapping import docs, schema
from tools.mapping.conversions import MappingError, RowError
from tools.mapping.loader import load_mapping, parse_mapping
from tools.mapping.schema import (
    CLOSED_DEALS_DAYS,
    FAILED_CHARGE_WINDOW_DAYS,
    INVOICES_SHOWN,
    RECENT_TICKETS,
)
from tools.sources.base import CustomerRef
from tools.sources.billing import BillingReader
from tools.sources.crm import CrmReader
from tools.sources.registry import engine_for

DOC = {
    "name": "toy", "source": "billing", "system": "toy",
    "entities": {
        "charge": {
            "table": "charges",
            "where": {"livemode": True},
            "joins": [{"table": "cards", "alias": "k", True: {"card_id": "id"}}],
            "fields": {
                "id": {"column": "id", "required": True},
                "amount": {"column": "amount_cents", "convert": "cents", "required": True},
                "created": {"column": "created", "convert": "epoch_s"},
                "brand": {"column": "k.brand", "convert": "lower"},
                "crm": {"column": "meta", "type": "json", "path": "crm.id"},
                "livemode": {"column": "livemode", "type": "bool"},
            },
        },
        "activity": {"parts": [
            {"table": "calls", "fields": {"id": "id", "date": {"column": "at", "type": "datetime"},
                                          "kind": {"constant": "call"}}},
            {"table": "notes", "fields": {"id": "id", "date": {"column": "at", "type": "datetime"},
                                          "kind": {"constant": "note"}}},
        ]},
    },
}


@pytest.fixture
def conn(tmp_path):
    eng = create_engine(f"sqlite:///{tmp_path / 'toy.sqlite'}")
    with eng.begin() as c:
        c.execute(text("create table cards (id integer primary key, brand text)"))
        c.execute(text("create table charges (id text primary key, amount_cents integer, created integer, "
                       "card_id integer, meta text, livemode boolean)"))
        c.execute(text("insert into cards values (1, 'VISA')"))
        c.execute(text("""insert into charges values
            ('ch_1', 150000, 1767225600, 1, '{"crm": {"id": "1001"}}', 1),
            ('ch_2', 'garbage', 1767225600, 1, null, 1),
            ('ch_3', null, 1767225600, null, null, 1),
            ('ch_4', 500, 1767225600, null, null, 0)"""))
        c.execute(text("create table calls (id text, at timestamp)"))
        c.execute(text("create table notes (id text, at timestamp)"))
        c.execute(text("insert into calls values ('c1', '2026-01-02 10:00:00')"))
        c.execute(text("insert into notes values ('n1', '2026-01-03 10:00:00')"))
    with eng.connect() as c:
        yield c


def test_conversions_joins_and_filters(conn):
    m = parse_mapping(DOC)
    fetched = m.entity("charge").rows(conn, where=lambda p: [p.eq("id", "ch_1")])
    assert fetched.rows == [{"id": "ch_1", "amount": 1500.0, "created": datetime(2026, 1, 1),
                             "brand": "visa", "crm": "1001", "livemode": True}]


def test_malformed_rows_are_skipped_and_counted(conn):
    fetched = parse_mapping(DOC).entity("charge").rows(conn)
    assert [r["id"] for r in fetched.rows] == ["ch_1"]  # ch_4 is filtered out by `where`
    assert fetched.skipped == 2 and len(fetched.errors) == 2


def test_union_parts_are_merged_in_order(conn):
    fetched = parse_mapping(DOC).entity("activity").rows(conn, order_by="date")
    assert [(r["id"], r["kind"]) for r in fetched.rows] == [("n1", "note"), ("c1", "call")]


def test_to_source_round_trips():
    spec = parse_mapping(DOC).entity("charge").spec("created")
    when = datetime(2026, 1, 15, 12, 0)
    assert spec.to_python(spec.to_source(when)) == when
    assert spec.to_source(datetime(2026, 1, 1, tzinfo=UTC).replace(tzinfo=None)) == 1767225600
    with pytest.raises(RowError):
        parse_mapping(DOC).entity("charge").spec("amount").to_python(None)


def test_integer_ids_never_match_garbage(conn):
    m = parse_mapping({"source": "crm", "entities": {"card": {"table": "cards", "fields": {
        "id": {"column": "id", "type": "int", "convert": "id_text"}, "brand": "brand"}}}})
    assert m.entity("card").rows(conn, where=lambda p: [p.eq("id", "1")]).rows == [{"id": "1", "brand": "VISA"}]
    assert m.entity("card").rows(conn, where=lambda p: [p.eq("id", "not-a-number")]).rows == []


@pytest.mark.parametrize("bad, message", [
    ({"source": "crm", "entities": {"a": {"fields": {}}}}, "'table' is required"),
    ({"source": "crm", "entities": {"a": {"table": "t", "fields": {"x": {"convert": "nope"}}}}}, "unknown conversion"),
    ({"source": "crm", "entities": {"a": {"table": "t", "fields": {"x": {"colum": "x"}}}}}, "unknown keys"),
    ({"entities": {}}, "malformed"),
])
def test_bad_mappings_say_what_is_wrong(bad, message):
    with pytest.raises(MappingError, match=message):
        parse_mapping(bad)


def test_unknown_mapping_names_the_built_in_ones():
    with pytest.raises(MappingError, match="hubspot, .*salesforce"):
        load_mapping("pipedrive")


def test_every_builtin_mapping_loads():
    for name in ("hubspot", "salesforce", "stripe", "segment", "zendesk", "email", "calendar", "chat",
                 "documents", "calls", "news"):
        assert load_mapping(name).entities


def test_dates_from_strings_and_datetimes():
    spec = parse_mapping({"source": "crm", "entities": {"a": {"table": "t", "fields": {
        "d": {"column": "d", "type": "date"}}}}}).entity("a").spec("d")
    assert spec.to_python("2026-02-28") == date(2026, 2, 28)
    assert spec.to_python(datetime(2026, 2, 28, 9)) == date(2026, 2, 28)


# ------------------------------------------------------------------ docs/MAPPINGS.md and the code
def test_the_reference_in_the_docs_is_the_code():
    """docs/MAPPINGS.md's reference section is rendered from the schema the loader checks and the
    readers' constants; editing either without `python -m tools.mapping.docs --write` fails here."""
    text = docs.DOC.read_text(encoding="utf-8")
    assert docs.BEGIN in text and docs.END in text
    assert docs.replace_section(text, docs.render()) == text
    assert docs.main(["--check"]) == 0
    for constant in (FAILED_CHARGE_WINDOW_DAYS, INVOICES_SHOWN, CLOSED_DEALS_DAYS, RECENT_TICKETS):
        assert f" {constant} " in docs.render()


def test_readers_take_their_rules_from_the_schema():
    from tools.sources import chat, commerce

    # the readers whose rules still live beside them: the schema (and so the docs) says the same
    assert chat.MAX_MENTIONS == schema.MAX_MENTIONS
    assert (commerce.ORDERS_SHOWN, commerce.REFUNDS_SHOWN) == (schema.ORDERS_SHOWN, schema.REFUNDS_SHOWN)
    assert commerce.PAID_STATUSES == set(schema.PAID_ORDER_STATUSES)
    assert commerce.CANCELLED_STATUSES == set(schema.CANCELLED_ORDER_STATUSES)
    stripe = load_mapping("stripe")
    assert set(stripe.settings["status_map"].values()) <= set(schema.BILLING_STATES)


def _examples() -> list[dict]:
    blocks = re.findall(r"```yaml\n(.*?)```", docs.DOC.read_text(encoding="utf-8"), re.S)
    return [d for d in map(yaml.safe_load, blocks) if isinstance(d, dict) and "source" in d]


def test_every_example_mapping_in_the_docs_loads_and_reads_rows(tmp_path, sqlite_warehouse, sqlite_ready):
    examples = _examples()
    assert {d["source"] for d in examples} == {"crm", "billing"}
    clock = sqlite_ready.clock
    for doc in examples:
        m = parse_mapping(doc, doc["name"], schema=True)
        if doc["source"] == "crm":  # written for the Salesforce fixture
            url = f"sqlite:///{tmp_path / 'sf.sqlite'}"
            seed_salesforce(url)
            eng = create_engine(url)
            with eng.connect() as conn:
                sf_id = conn.execute(text("select Id from account where Name = 'Acme Corp'")).scalar_one()
            acme = CustomerRef(customer_id="acme", name="Acme Corp", anchors={"crm": sf_id})
            rdr = CrmReader(m, eng)
            account = rdr.read("crm.account", acme, clock)
            assert (account.company_name, account.domain, account.custom) == (
                "Acme Corp", "acme.com", {"industry_code": "MAN"})
            names = [c.name for c in rdr.read("crm.contacts", acme, clock).contacts]
            assert "Wile Coyote" in names
            assert rdr.read("crm.activities", acme, clock).activities
            assert rdr.read("crm.opportunities", acme, clock).open == []  # no opportunity entity
            eng.dispose()
        else:  # written for the story warehouse's Stripe tables
            acme, _ = sqlite_ready.index.resolve("acme.com")
            eng = engine_for(sqlite_warehouse)
            ours = BillingReader(m, eng).read("billing.invoices", acme, clock)
            builtin = BillingReader(load_mapping("stripe"), eng).read("billing.invoices", acme, clock)
            assert ours.total_revenue == builtin.total_revenue > 0
            status = BillingReader(m, eng).read("billing.status", acme, clock)
            assert status.custom == {"crm_company": acme.anchors["crm"]}


def test_the_undeclared_filter_of_the_old_example_is_a_load_error():
    old = {"source": "crm", "entities": {"account": {
        "table": "account", "where": {"is_deleted": False}, "fields": {"id": "Id", "name": "Name"}}}}
    with pytest.raises(MappingError, match=r"my_crm.yaml: entities.account.where.is_deleted: names no declared"):
        parse_mapping(old, "my_crm", origin="my_crm.yaml")


def test_custctx_mappings_docs_prints_and_checks_the_reference():
    from typer.testing import CliRunner

    from agent.interfaces.cli.app import app

    shown = CliRunner().invoke(app, ["mappings", "docs"])
    assert shown.exit_code == 0 and shown.output == docs.render()
    assert CliRunner().invoke(app, ["mappings", "docs", "--check"]).exit_code == 0
