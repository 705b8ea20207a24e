"""Refresh: full materialisation of the active book, incremental refresh driven by
per-source watermarks (only changed customers are read), event refresh, at-least-once
watermarks when a source fails — on a private warehouse whose rows the tests change."""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import datetime, timedelta

import pytest
from sqlalchemy import column as col
from sqlalchemy import create_engine, func, insert, select, table, text, update

from agent.bootstrap import ready
from tools.access.audit import audit_log
from tools.book import count_accounts, list_accounts
from tools.context.assembly import assemble_context
from tools.context.scope import ReadScope
from tools.embedded.generate import seed
from tools.guard import SourceGuard
from tools.identity import source_fingerprint
from tools.memory import ContextMemory, open_store
from tools.refresh.jobs import (
    EVENTS,
    WATCHES,
    event_slices,
    refresh_customer,
    refresh_event,
    refresh_full,
    refresh_incremental,
    table_watermarks,
    watermarks,
)
from tools.settings import EMBEDDED_SOURCES, GuardSettings
from tools.slices import SLICE_MODELS
from tools.sources.registry import dispose_engines, engine_for

from .conftest import settings_for, statements_on
from .test_cli import custctx

#: every slice of the fixture warehouse (no commerce source: an optional one, not connected)
NO_STORE = [n for n, m in SLICE_MODELS.items() if m.source in EMBEDDED_SOURCES]

QUICK_GUARD = GuardSettings(backoff_initial_s=0.001, backoff_max_s=0.002, breaker_failures=1000)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> str:
    """A private fixture warehouse: these tests change its rows."""
    url = f"sqlite:///{tmp_path_factory.mktemp('refresh-warehouse') / 'warehouse.sqlite'}"
    seed(url, customers=40)
    yield url
    dispose_engines()


@pytest.fixture
def world(warehouse, tmp_path):
    """A fresh state database (identity index, memory, watermarks) over the shared warehouse."""
    r = ready(settings_for(warehouse, tmp_path, guard=QUICK_GUARD))
    with open_store(r.settings.state_db_url) as store:
        yield r, store, ContextMemory.of(store, r.settings)


def ids(r, *refs: str) -> set[str]:
    return {r.index.resolve(ref)[0].customer_id for ref in refs}


def stored(store, tenant: str) -> dict[str, set[str]]:
    """customer id → slice names held in long-term memory."""
    out = {}
    for ns in store.list_namespaces(prefix=("customers", tenant), limit=100_000):
        out[ns[2]] = {item.key for item in store.search(ns, limit=100)}
    return out


@contextmanager
def writing(url: str):
    """A connection of its own (not the product's engine, whose statements some tests count)."""
    eng = create_engine(url)
    try:
        with eng.begin() as conn:
            yield conn
    finally:
        eng.dispose()


def later(url: str, tbl: str, column: str = "_fivetran_synced") -> datetime:
    """A timestamp newer than every row of ``tbl``: what a sync stamps a changed row with."""
    with writing(url) as conn:
        newest = conn.execute(select(func.max(col(column))).select_from(table(tbl))).scalar()
    return datetime.fromisoformat(str(newest)) + timedelta(minutes=1)


def change(url: str, tbl: str, key: str, value, **values) -> None:
    values.setdefault("_fivetran_synced", later(url, tbl))
    t = table(tbl, col(key), *(col(c) for c in values))
    with writing(url) as conn:
        assert conn.execute(update(t).where(t.c[key] == value).values(**values)).rowcount == 1


def add(url: str, tbl: str, **values) -> None:
    values.setdefault("_fivetran_synced", later(url, tbl))
    with writing(url) as conn:
        conn.execute(insert(table(tbl, *(col(c) for c in values))).values(**values))


@pytest.fixture
def statements(warehouse):
    """SQL statements run against the warehouse."""
    with statements_on(warehouse) as seen:
        yield seen


# ------------------------------------------------------------------ full
def test_full_refresh_materialises_every_active_customer(world):
    r, store, memory = world
    active = {a.customer_id for a in list_accounts(r.settings)}
    report = refresh_full(r.settings, memory, guard=SourceGuard(r.settings.guard))
    assert report.failures == 0 and report.failed_sources == {}
    assert report.customers == len(active) == count_accounts(r.settings)
    held = stored(store, r.settings.tenant)
    assert set(held) == active
    assert ids(r, "soylent.com").isdisjoint(held)  # churned: left out
    assert held[r.index.resolve("acme.com")[0].customer_id] == set(NO_STORE)
    assert report.slices_written == sum(len(v) for v in held.values())
    assert report.slices_written + report.gaps == len(active) * len(NO_STORE)
    # every source's watermark is the newest update timestamp of its tables
    assert all(report.watermarks[s] for s in EMBEDDED_SOURCES)
    assert report.watermarks["support"].startswith("2026-01-15")
    cached = memory.get(r.index.resolve("acme.com")[0].customer_id, "billing.status")
    assert cached.fresh and cached.slice.status == "past_due" and cached.slice.provenance.source_updated_at


def test_worker_processes_write_what_one_process_writes(warehouse, tmp_path):
    """The book spread over two worker processes: the same memory, report and audit trail."""

    def run(workers: int, where):
        r = ready(settings_for(warehouse, where, guard=QUICK_GUARD))
        with open_store(r.settings.state_db_url) as store:
            report = refresh_full(r.settings, ContextMemory(store, r.settings.tenant, r.settings.ttls),
                                  workers=workers)
            held = {(ns[2], item.key): {k: v for k, v in item.value["slice"].items() if k != "provenance"}
                    for ns in store.list_namespaces(prefix=("customers", r.settings.tenant), limit=100_000)
                    for item in store.search(ns, limit=100)}
        audited = len(audit_log(r.settings.state_db_url).query(r.settings.tenant, limit=None))
        return report, held, audited

    one, one_held, one_audited = run(1, tmp_path / "one")
    two, two_held, two_audited = run(2, tmp_path / "two")
    assert (two.customers, two.slices_written, two.gaps, two.failures) == \
        (one.customers, one.slices_written, one.gaps, 0)
    assert two_held == one_held and len(one_held) == one.slices_written
    assert two_audited == one_audited >= one.slices_written + one.gaps
    assert two.watermarks == one.watermarks


def test_first_incremental_without_watermarks_is_a_full_refresh(world):
    r, store, memory = world
    assert set(watermarks(r.settings).values()) == {None}
    report = refresh_incremental(r.settings, memory, guard=SourceGuard(r.settings.guard))
    assert report.mode == "incremental" and sorted(report.full_sources) == sorted(EMBEDDED_SOURCES)
    assert report.customers == count_accounts(r.settings) == len(stored(store, r.settings.tenant))
    assert all(v for s, v in watermarks(r.settings).items() if s in EMBEDDED_SOURCES)


# ------------------------------------------------------------------ incremental
def test_incremental_refresh_reads_only_the_changed_customers(world, warehouse, statements):
    r, store, memory = world
    guard = SourceGuard(r.settings.guard)
    full = refresh_full(r.settings, memory, guard=guard)
    statements.clear()
    nothing = refresh_incremental(r.settings, memory, guard=guard)
    assert nothing.customers == 0 and nothing.slices_written == 0 and nothing.changed_by_source == {}
    scan = len(statements)  # a fixed number of queries, whatever the size of the book:
    statements.clear()
    source_fingerprint(r.settings)  # the identity index's up-to-date check (count, max per table)
    fingerprint = len(statements)
    # per source one statement: every watched table's newest stamp above its watermark (none moved: no range scan)
    detection = len([s for s in WATCHES if s in EMBEDDED_SOURCES])
    assert scan == fingerprint + detection

    globex = r.index.resolve("globex.com")[0].customer_id
    old = memory.get(globex, "support.summary").slice
    change(warehouse, "ticket", "id", 10019, status="open")  # Globex: a closed ticket reopened
    change(warehouse, "ticket", "id", 10021, priority="high")  # Initech
    change(warehouse, "charge", "id", "ch_00000022", status="failed", failure_code="card_declined")  # Umbrella
    add(warehouse, "chat_message", id="chat_9000001", channel="#cs-team", user_name="fox.mulder",
        text="Globex wants to talk about the Growth plan renewal.", ts=later(warehouse, "chat_message", "ts"))
    change(warehouse, "email_message", "id", "msg_00000007", body="Any update on the SSO outage?")  # Umbrella
    statements.clear()
    report = refresh_incremental(r.settings, memory, guard=guard)

    assert set(report.refreshed) == ids(r, "globex.com", "initech.io", "umbrella-health.com")
    assert report.customers == 3 and report.failures == 0
    assert report.changed_by_source == {"billing": 1, "support": 2, "chat": 1, "email": 1}
    # only the slices the changed tables feed: 2 support x2, 2 billing, 1 chat, 1 email
    assert report.slices_written == 8
    # cost: the same detection scan + the reads of 8 slices, nowhere near a book-sized refresh
    assert scan < len(statements) <= scan + 8 * 6
    assert report.slices_written * 10 < full.slices_written
    new = memory.get(globex, "support.summary").slice
    assert new.open_tickets == old.open_tickets + 1 and new.provenance.fetched_at >= old.provenance.fetched_at
    assert [m.text for m in memory.get(globex, "chat.mentions").slice.mentions][0].startswith("Globex wants")
    assert report.watermarks["support"] > full.watermarks["support"]
    assert report.watermarks["crm"] == full.watermarks["crm"]

    again = refresh_incremental(r.settings, memory, guard=guard)
    assert again.customers == 0 and again.slices_written == 0


def test_a_failing_source_keeps_its_watermark_until_it_is_refreshed(world, warehouse):
    r, store, memory = world
    refresh_full(r.settings, memory, guard=SourceGuard(r.settings.guard))
    before = table_watermarks(r.settings)
    umbrella = r.index.resolve("umbrella-health.com")[0].customer_id
    snapshot = memory.get(umbrella, "billing.invoices").slice
    change(warehouse, "charge", "id", "ch_00000024", status="failed", failure_code="expired_card")
    change(warehouse, "ticket", "id", 10018, priority="low")  # Globex, support stays healthy

    down = r.settings.model_copy(update={"faults": "billing=down"})
    report = refresh_incremental(down, memory, guard=SourceGuard(down.guard))
    assert set(report.failed) == {(umbrella, "billing.status"), (umbrella, "billing.invoices")}
    assert "billing" in report.failed_sources and "support" not in report.failed_sources
    after = table_watermarks(r.settings)
    assert after["billing.charge/charge"] == before["billing.charge/charge"]  # kept: retried next time
    assert after["support.ticket/ticket"] > before["support.ticket/ticket"]
    assert memory.get(umbrella, "billing.invoices").slice == snapshot  # the good snapshot stays

    retry = refresh_incremental(r.settings, memory, guard=SourceGuard(r.settings.guard))
    assert set(retry.refreshed) == {umbrella} and retry.changed_by_source == {"billing": 1}
    assert retry.failures == 0
    assert table_watermarks(r.settings)["billing.charge/charge"] > before["billing.charge/charge"]
    failed = memory.get(umbrella, "billing.invoices").slice.failed_charges
    assert any(c.failure_code == "expired_card" for c in failed)


def test_watermarks_survive_a_new_process(world, warehouse, tmp_path):
    r, store, memory = world
    refresh_full(r.settings, memory, guard=SourceGuard(r.settings.guard))
    change(warehouse, "company", "id", 1002, property_plan_name="Growth Plus")  # Globex in the CRM
    env = {"CUSTCTX_WAREHOUSE_URL": warehouse}
    proc = custctx(tmp_path, "refresh", "--incremental", "--format", "json", env_extra=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["refreshed"] == sorted(ids(r, "globex.com")) and report["changed_by_source"] == {"crm": 1}
    assert report["full_sources"] == [] and report["slices_written"] == 1
    assert memory.get(r.index.resolve("globex.com")[0].customer_id, "crm.account").slice.plan == "Growth Plus"


# ------------------------------------------------------------------ events
def test_event_refresh_makes_a_new_ticket_visible_at_once(world, warehouse, tmp_path):
    r, store, memory = world
    cached = {**r.settings.ttls, "support.summary": 3600, "support.tickets": 3600}
    settings = r.settings.model_copy(update={"ttls": cached})
    memory = ContextMemory(store, settings.tenant, cached)
    acme = r.index.resolve("acme.com")[0]
    refresh_full(settings, memory, customers=[acme.customer_id], guard=SourceGuard(settings.guard))
    add(warehouse, "ticket", id=99001, organization_id=360001, requester_id=500004,
        subject="Invoice PDF shows the wrong VAT number", description="Please fix the VAT number.",
        status="new", priority="normal", type="problem", custom_issue_type="billing", via_channel="email",
        created_at=r.clock.as_of - timedelta(minutes=30), updated_at=r.clock.as_of - timedelta(minutes=30))
    stale = assemble_context(ReadScope.build(settings, r.clock, memory=memory), acme, ["support"])  # served from memory
    assert stale.get("support.summary").open_tickets == 3
    assert stale.get("support.tickets").provenance.served_from == "memory"

    env = {"CUSTCTX_WAREHOUSE_URL": warehouse, "CUSTCTX_TTLS": json.dumps(cached)}
    proc = custctx(tmp_path, "event", "ticket.created", "--customer", "acme.com", "-f", "json", env_extra=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["mode"] == "event" and report["event"] == "ticket.created"
    assert report["refreshed"] == [acme.customer_id]
    assert {w["slice"] for w in report["written"]} == {"support.summary", "support.tickets"}
    assert all(w["fetched_at"] and w["source_updated_at"] for w in report["written"])

    view = json.loads(custctx(tmp_path, "context", "acme.com", "-f", "json", env_extra=env).stdout)
    assert view["support"]["open_tickets"] == 4
    assert view["slices"]["support.tickets"]["tickets"][0]["subject"] == "Invoice PDF shows the wrong VAT number"
    assert view["provenance"]["support.tickets"]["served_from"] == "memory"  # no source read: the event did it
    assert view["context_updated"]
    assert all(p["fetched_at"] and "source_updated_at" in p for p in view["provenance"].values())


def test_event_and_customer_refresh_in_process(world):
    r, store, memory = world
    report = refresh_event(r.settings, memory, "invoice.paid", "globex.com", guard=SourceGuard(r.settings.guard))
    assert report.slices_written == 2 and {w.slice for w in report.written} == {"billing.status", "billing.invoices"}
    assert set(stored(store, r.settings.tenant)) == ids(r, "globex.com")
    report = refresh_customer(r.settings, memory, r.index.resolve("cyberdyne.ai")[0].customer_id)
    assert report.customers == 1 and report.gaps >= 1  # a prospect has no billing record
    assert report.slices_written + report.gaps == len(NO_STORE)


def test_unknown_event_kind_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown event kind 'ticket.exploded'; known kinds: .*ticket.created"):
        event_slices("ticket.exploded")
    assert event_slices("deal.updated") == ["crm.opportunities", "crm.account"]
    assert set(EVENTS["charge.failed"]) == {"billing.status", "billing.invoices"}


def test_cli_errors_are_one_line(world, warehouse, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from agent.interfaces.cli.app import app

    monkeypatch.setenv("CUSTCTX_HOME", str(tmp_path))
    monkeypatch.setenv("CUSTCTX_WAREHOUSE_URL", warehouse)
    runner = CliRunner()
    bad_kind = runner.invoke(app, ["event", "ticket.exploded", "--customer", "acme.com"])
    assert bad_kind.exit_code == 2 and len(bad_kind.stderr.strip().splitlines()) == 1
    assert "known kinds:" in bad_kind.stderr
    unknown = runner.invoke(app, ["event", "ticket.created", "--customer", "nobody@nowhere.test"])
    assert unknown.exit_code == 1 and unknown.stderr.strip() == "error: No customer matches 'nobody@nowhere.test'."
    no_mode = runner.invoke(app, ["refresh"])
    assert no_mode.exit_code == 2 and "exactly one of" in no_mode.stderr
    two_modes = runner.invoke(app, ["refresh", "--full", "--customer", "acme.com"])
    assert two_modes.exit_code == 2


# ------------------------------------------------------------------ PostgreSQL
def test_a_new_ticket_comment_alone_refreshes_its_customers_tickets(world, warehouse):
    r, store, memory = world
    guard = SourceGuard(r.settings.guard)
    refresh_full(r.settings, memory, guard=guard)
    add(warehouse, "ticket_comment", id=9_000_001, ticket_id=10019, user_id=1, public=True,
        body="Following up: the export still fails.", created=later(warehouse, "ticket_comment", "created"))
    report = refresh_incremental(r.settings, memory, guard=guard)
    globex = r.index.resolve("globex.com")[0].customer_id
    assert set(report.refreshed) == {globex} and report.changed_by_source == {"support": 1}
    tickets = memory.get(globex, "support.tickets").slice
    assert any("the export still fails" in (c.text or "") for t in tickets.tickets for c in (t.comments or []))


def test_incremental_refresh_on_postgresql(pg_server, tmp_path):
    url, state = pg_server.create_database(), pg_server.create_database()
    seed(url, customers=0)
    r = ready(settings_for(url, tmp_path, state_url=state, guard=QUICK_GUARD))
    with open_store(state) as store:
        memory = ContextMemory(store, r.settings.tenant, r.settings.ttls)
        first = refresh_incremental(r.settings, memory, guard=SourceGuard(r.settings.guard))
        assert first.failures == 0 and first.customers == count_accounts(r.settings)
        with engine_for(url).begin() as conn:
            conn.execute(text("UPDATE ticket SET status = 'open', _fivetran_synced = "
                              "(SELECT max(_fivetran_synced) FROM ticket) + interval '1 minute' WHERE id = 10019"))
        report = refresh_incremental(r.settings, memory, guard=SourceGuard(r.settings.guard))
        assert set(report.refreshed) == ids(r, "globex.com") and report.changed_by_source == {"support": 1}
        assert refresh_incremental(r.settings, memory, guard=SourceGuard(r.settings.guard)).customers == 0


def test_refresh_reads_are_audited_as_the_refresh_job(world):
    from tools.access.audit import audit_log

    r, store, memory = world
    cid = r.index.resolve("globex.com")[0].customer_id
    refresh_event(r.settings, memory, "invoice.paid", "globex.com", guard=SourceGuard(r.settings.guard))
    recs = audit_log(r.settings.state_db_url).query(r.settings.tenant, cid, limit=None)
    assert sorted(x.slice for x in recs) == ["billing.invoices", "billing.status"]
    assert {(x.user_name, x.role, x.interface, x.decision) for x in recs} == {("refresh", "admin", "refresh", "allowed")}
