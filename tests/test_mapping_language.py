"""The mapping language on real schemas: expressions, concatenation, aggregates, custom fields,
the parent account, optional fields and entities, checked keys — on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date, datetime

import pytest
import yaml
from sqlalchemy import create_engine, inspect, text

from agent.bootstrap import ready
from agent.brief import render_brief
from tools.context.assembly import assemble_context
from tools.context.scope import ReadScope
from tools.context.view import reference_view
from tools.mapping.conversions import MappingError
from tools.mapping.loader import MAPPINGS_DIR, load_mapping, parse_mapping
from tools.mapping.schema import SOURCES
from tools.settings import SourceConfig
from tools.slices import slices_of
from tools.sources.base import CustomerRef, ReadClock, SliceNotFound
from tools.sources.billing import BillingReader
from tools.sources.crm import CrmReader
from tools.sources.registry import READERS, engine_for

from .conftest import settings_for

AS_OF = datetime(2026, 1, 20, 12, 0)
# A small store's own tables, named unlike any built-in mapping.
STORE_SQL = [
    "create table companies (cid integer, cname text, parent_cid integer, site text, tier_code text, "
    "deleted integer, founded text)",
    "create table people (person_id integer, given text, family text, company_id integer, mail text, "
    "score integer)",
    "create table payments (pid text, payer integer, cents integer, state text, at_epoch integer)",
    "create table old_payments (ref text, payer integer, cents integer, state text, at_epoch integer)",
    "insert into companies values (1, 'globex holdings', null, 'https://www.globex.test/', 'gold', 0, '2001-05-04'),"
    " (2, 'globex retail', 1, 'globex-retail.test', 'silver', 0, null),"
    " (3, 'gone corp', null, 'gone.test', null, 1, null)",
    "insert into people values (10, 'Ada', 'Lovelace', 2, 'ADA@globex-retail.test', 95),"
    " (11, 'Charles', null, 2, 'charles@globex-retail.test', 40),"
    " (12, null, null, 2, 'nameless@globex-retail.test', null)",
    "insert into payments values ('p1', 2, 12000, 'succeeded', 1767225600), ('p2', 2, 3050, 'succeeded', 1767830400),"
    " ('p3', 2, 999, 'failed', 1768089600), ('p4', 1, 500, 'succeeded', 1767225600)",
    "insert into old_payments values ('o1', 2, 1000, 'succeeded', 1735689600)",
]

CRM = """
name: store_crm
source: crm
system: storecrm
identity:
  anchor: account.id
  keys:
    - {entity: account, anchor: id, field: id, kind: crm_id}
    - {entity: account, anchor: id, field: domain, kind: domain}
    - {entity: account, anchor: id, field: name, kind: name}
    - {entity: contact, anchor: account_id, field: email, kind: email}
entities:
  account:
    table: companies
    where: {live: true}
    joins:
      - {table: companies, alias: p, on: {parent_cid: cid}}
    fields:
      id: {column: cid, type: int, convert: id_text, required: true}
      name: {expr: "upper(substr(t.cname, 1, 1)) || substr(t.cname, 2)", required: true}
      domain: {column: site, convert: domain}
      parent_id: {column: parent_cid, type: int, convert: id_text}
      parent_name: p.cname
      live: {expr: "t.deleted = 0", type: bool}
    custom:
      tier: tier_code
      founded: {column: founded, type: date}
  contact:
    table: people
    fields:
      account_id: {column: company_id, type: int, convert: id_text}
      email: {column: mail, convert: lower}
      name: {concat: [given, " ", family]}
      role: {expr: "CASE WHEN score >= 90 THEN 'champion' END"}
    custom:
      score: {column: score, type: int}
"""

BILLING = """
name: store_billing
source: billing
system: storepay
identity:
  anchor: customer.id
  keys:
    - {entity: customer, anchor: id, field: id, kind: billing_id}
    - {entity: customer, anchor: id, field: crm_id, kind: crm_id}
entities:
  customer:
    table: companies
    fields:
      id: {column: cid, type: int, convert: id_text, required: true}
      crm_id: {column: cid, type: int, convert: id_text}
    custom: {tier: tier_code}
  charge:
    parts:
      - table: payments
        fields:
          id: pid
          customer_id: {column: payer, type: int, convert: id_text}
          amount: {column: cents, convert: cents, required: true}
          status: {column: state, convert: lower}
          created: {column: at_epoch, convert: epoch_s}
      - table: old_payments
        fields:
          id: ref
          customer_id: {column: payer, type: int, convert: id_text}
          amount: {column: cents, convert: cents, required: true}
          status: {column: state, convert: lower}
          created: {column: at_epoch, convert: epoch_s}
    aggregates:
      total_revenue: {sum: amount, by: customer_id, where: {status: succeeded}}
      charges: {count: id, by: customer_id}
      first_paid: {min: created, by: customer_id, where: {status: succeeded}}
      last_paid: {max: created, by: customer_id, where: {status: succeeded}}
"""


def _store(url: str) -> str:
    eng = create_engine(url)
    with eng.begin() as c:
        for stmt in STORE_SQL:
            c.execute(text(stmt))
    eng.dispose()
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    """The store's tables on SQLite and on a real PostgreSQL."""
    if request.param == "sqlite":
        return _store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    return _store(request.getfixturevalue("pg_url"))


def _mapping(doc: str, tmp_path, name: str):
    path = tmp_path / f"{name}.yaml"
    path.write_text(doc, encoding="utf-8")
    return load_mapping(str(path))


def _clock(tmp_path) -> ReadClock:
    return ReadClock(as_of=AS_OF, settings=settings_for("sqlite://", tmp_path), now=lambda: AS_OF)


def test_expressions_and_concat_in_select_where_order_and_lookups(store, tmp_path):
    m = _mapping(CRM, tmp_path, "crm_expr")
    eng = create_engine(store)
    with eng.connect() as conn:
        accounts = m.entity("account").rows(conn, order_by="name", descending=False)
        assert [(r["id"], r["name"], r["parent_id"], r["parent_name"]) for r in accounts.rows] == [
            ("1", "Globex holdings", None, None), ("2", "Globex retail", "1", "globex holdings")]  # 3 is deleted
        people = m.entity("contact").rows(conn, where=lambda p: [p.eq("name", "Ada Lovelace")])
        assert [(r["name"], r["role"], r["custom.score"]) for r in people.rows] == [("Ada Lovelace", "champion", 95)]
        # a point lookup compiled once per shape: the expression as the key, the concat as the order
        by_name = m.entity("account").lookup_rows(conn, "name", ["Globex retail"])
        assert [r["id"] for r in by_name.rows] == ["2"]
        ordered = m.entity("contact").lookup_rows(conn, "account_id", ["2"], order_by="name", descending=False)
        # NULL parts are empty, the result trimmed; all-NULL is null (sorted first ascending)
        assert [r["name"] for r in ordered.rows] == [None, "Ada Lovelace", "Charles"]
    eng.dispose()


def test_aggregates_per_customer_over_parts(store, tmp_path):
    m = _mapping(BILLING, tmp_path, "billing_agg")
    charge = m.entity("charge")
    eng = create_engine(store)
    with eng.connect() as conn:
        assert charge.aggregate(conn, "total_revenue", ["2", "1", "9"]) == {"2": 160.5, "1": 5.0, "9": None}
        assert charge.aggregate(conn, "charges", ["2", "9", "not-a-number"]) == {"2": 4, "9": 0, "not-a-number": 0}
        assert charge.aggregate(conn, "first_paid", ["2"]) == {"2": datetime(2025, 1, 1)}
        assert charge.aggregate(conn, "last_paid", ["2"]) == {"2": datetime(2026, 1, 8)}
        with pytest.raises(MappingError, match="no aggregate 'refunds'"):
            charge.aggregate(conn, "refunds", ["2"])
    eng.dispose()


def test_readers_use_aggregates_custom_fields_and_the_parent(store, tmp_path):
    crm, billing = _mapping(CRM, tmp_path, "crm_r"), _mapping(BILLING, tmp_path, "billing_r")
    eng = create_engine(store)
    retail = CustomerRef(customer_id="c2", name="Globex retail", anchors={"crm": "2", "billing": "2"})
    holdings = CustomerRef(customer_id="c1", name="Globex holdings", anchors={"crm": "1"})
    clock = _clock(tmp_path)
    acc = CrmReader(crm, eng).read("crm.account", retail, clock)
    assert (acc.company_name, acc.domain, acc.parent_id, acc.parent_name) == (
        "Globex retail", "globex-retail.test", "1", "globex holdings")
    assert acc.custom == {"tier": "silver", "founded": None}
    assert CrmReader(crm, eng).read("crm.account", holdings, clock).custom == {"tier": "gold", "founded": "2001-05-04"}
    contacts = CrmReader(crm, eng).read("crm.contacts", retail, clock).contacts
    assert [(c.name, c.role, c.custom) for c in contacts] == [
        ("Ada Lovelace", "champion", {"score": 95}), ("Charles", None, {"score": 40}),
        ("nameless@globex-retail.test", None, {"score": None})]
    # no opportunity or activity entity: optional, so empty slices rather than errors
    assert CrmReader(crm, eng).read("crm.opportunities", retail, clock).open == []
    assert CrmReader(crm, eng).read("crm.activities", retail, clock).activities == []
    inv = BillingReader(billing, eng).read("billing.invoices", retail, clock)
    assert inv.total_revenue == 160.5 and inv.invoices == []  # the aggregate; no invoice entity
    assert [f.id for f in inv.failed_charges] == ["p3"]
    status = BillingReader(billing, eng).read("billing.status", retail, clock)
    assert (status.status, status.payment_method, status.last_payment_amount, status.custom) == (
        "none", None, 30.5, {"tier": "silver"})
    # a bulk read (one statement per kind of lookup for many customers) gives the same slices
    for rdr, names in ((CrmReader(crm, eng), ["crm.account", "crm.contacts"]),
                       (BillingReader(billing, eng), ["billing.status", "billing.invoices"])):
        bulk = rdr.read_many({n: [retail] for n in names}, clock)
        for n in names:
            assert _plain(bulk[retail.customer_id, n]) == _plain(rdr.read(n, retail, clock)), n
    eng.dispose()


def test_custom_fields_and_parent_in_the_brief_and_reference_view(tmp_path):
    url = _store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    path = tmp_path / "store_crm.yaml"
    path.write_text(CRM, encoding="utf-8")
    settings = settings_for(url, tmp_path / "state", sources={"crm": SourceConfig(url=url, mapping=str(path))})
    r = ready(settings)
    customer, _ = r.index.resolve("ada@globex-retail.test")
    ctx = assemble_context(ReadScope.build(r.settings, r.clock), customer, ["crm"])
    view = reference_view(ctx)
    assert view["customer"]["name"] == "Globex retail"
    assert view["customer"]["parent_account"] == {"id": "1", "name": "globex holdings"}
    assert view["customer"]["custom"] == {"tier": "silver", "founded": None}
    brief = render_brief(ctx)
    assert "**Parent account**: globex holdings (CRM id 1)" in brief
    assert "**Custom fields**: tier: silver; founded: —" in brief
    assert "| Ada Lovelace | — | champion |" in brief and "score: 95 |" in brief


# ------------------------------------------------------------------ checked at load
def _load_error(tmp_path, doc: dict) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    with pytest.raises(MappingError) as exc:
        load_mapping(str(path))
    return str(exc.value)


def _crm(**account) -> dict:
    fields = {"id": "Id", "name": "Name"}
    return {"source": "crm", "entities": {"account": {"table": "account", "fields": fields, **account}}}


@pytest.mark.parametrize("doc, message", [
    (_crm(where={"is_deleted": False}), "entities.account.where.is_deleted: names no declared field"),
    (_crm(wher={"x": 1}), "entities.account: unknown keys ['wher']"),
    ({**_crm(), "entites": {}}, "unknown keys ['entites']"),
    (_crm(aggregates={"n": {"count": "id"}}), "entities.account.aggregates.n: needs one of"),
    (_crm(aggregates={"n": {"sum": "mrr", "by": "id"}}), "entities.account.aggregates.n.sum: names no declared field"),
    (_crm(custom={"x": {"colum": "x"}}), "entities.account.custom.x: unknown keys ['colum']"),
    ({"source": "crm", "entities": {"account": {"table": "a", "fields": {"id": "Id"}}}},
     "entities.account.fields.name is required by the crm reader"),
    ({"source": "crm", "entities": {"contact": {"table": "c", "fields": {"account_id": "a"}}}},
     "entities.account is required by the crm reader"),
    ({"source": "billing", "entities": {"customer": {"table": "c", "fields": {"id": "id"}}},
      "settings": {"status_map": {"active": "paid_up"}}}, "settings.status_map.active: 'paid_up' is not one of"),
    (_crm(fields={"id": "Id", "name": {"concat": "Name"}}), "concat takes a non-empty list"),
    (_crm(fields={"id": "Id", "name": {"column": "Name", "expr": "x"}}), "needs exactly one of"),
    ({**_crm(), "identity": {"keys": [{"entity": "account", "anchor": "id", "field": "id", "kindd": "crm_id"}]}},
     "identity.keys[0]: got an unexpected keyword argument 'kindd'"),
])
def test_mistakes_are_load_errors_naming_the_file_and_key(tmp_path, doc, message):
    got = _load_error(tmp_path, doc)
    assert message in got and str(tmp_path / "bad.yaml") in got


def test_unreadable_yaml_is_one_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("entities: [unclosed\n", encoding="utf-8")
    with pytest.raises(MappingError, match="broken.yaml cannot be read") as exc:
        load_mapping(str(path))
    assert "\n" not in str(exc.value)


def test_concat_elements_are_columns_or_text():
    m = parse_mapping({"source": "x", "entities": {"e": {"table": "t", "fields": {
        "a": {"concat": ["first", " ", "o.last", {"text": "id"}, "-"]}}}}})
    parts = m.entity("e").spec("a").concat
    assert [(p.text, p.literal) for p in parts] == [
        ("first", False), (" ", True), ("o.last", False), ("id", True), ("-", True)]


def test_dates_in_custom_fields_read_back_the_same_from_memory(tmp_path):
    m = _mapping(CRM, tmp_path, "crm_dates")
    row = {"custom.founded": date(2001, 5, 4), "custom.tier": "gold", "name": "x"}
    assert m.entity("account").custom(row) == {"founded": "2001-05-04", "tier": "gold"}


# ------------------------------------------------ optional means optional, for every reader
def _minimal(doc: dict, drop_entities: bool) -> dict:
    """A built-in mapping cut down to what its reader requires: required fields only (and
    optional entities left out when ``drop_entities``); identity keys on what is left."""
    schema = SOURCES[doc["source"]]
    entities = {}
    for name, espec in doc["entities"].items():
        es = schema.entity(name)
        if es is None:
            entities[name] = espec
            continue
        if drop_entities and not es.required:
            continue
        keep = {f.name for f in es.fields if f.required}
        parts = [{"table": p["table"], "joins": p.get("joins") or [],
                  "fields": {k: v for k, v in p["fields"].items() if k in keep}} for p in espec.get("parts") or [espec]]
        entities[name] = {"parts": parts}
    keys = [k for k in doc.get("identity", {}).get("keys", []) if k["entity"] in entities and all(
        f in p["fields"] for p in entities[k["entity"]].get("parts") or [entities[k["entity"]]]
        for f in (k["anchor"], k["field"]))]
    return {**doc, "entities": entities, "identity": {**doc.get("identity", {}), "keys": keys}}


@pytest.mark.parametrize("drop_entities", [False, True], ids=["required-fields", "required-entities"])
def test_every_reader_reads_with_only_what_it_requires(sqlite_warehouse, sqlite_ready, drop_entities):
    """A mapping with nothing but the reference's required entities and fields still gives every
    slice the full mapping gives: the optional fields null, the optional entities empty."""
    acme, _ = sqlite_ready.index.resolve("acme.com")
    clock, engine = sqlite_ready.clock, engine_for(sqlite_warehouse)
    tables = set(inspect(engine).get_table_names())
    checked = 0
    for path in sorted(MAPPINGS_DIR.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        if doc["source"] not in SOURCES or doc["source"] not in READERS or not {
                p["table"] for e in doc["entities"].values() for p in e.get("parts") or [e]} <= tables:
            continue  # another source, or a flavour the story warehouse does not hold (salesforce)
        full = READERS[doc["source"]](load_mapping(path.stem), engine)
        small = READERS[doc["source"]](parse_mapping(_minimal(doc, drop_entities), path.stem, schema=True), engine)
        for name in slices_of(doc["source"]):
            try:
                expected = full.read(name, acme, clock)
            except SliceNotFound:
                continue
            got = small.read(name, acme, clock)
            assert type(got) is type(expected), (path.stem, name)
            bulk = small.read_many({name: [acme]}, clock)[acme.customer_id, name]
            assert not isinstance(bulk, Exception), (path.stem, name, bulk)
            assert _plain(bulk) == _plain(got), (path.stem, name)
            checked += 1
    assert checked >= 12


def _plain(s):
    data = s.model_dump(mode="json")
    data["provenance"].pop("fetched_at")
    return data
