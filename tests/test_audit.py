"""The audit log: append-only on SQLite and PostgreSQL, one record per read, `custctx audit`."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta

import pytest
from langgraph.store.memory import InMemoryStore
from sqlalchemy import create_engine, delete, text, update
from sqlalchemy.exc import DBAPIError

from tools.access.audit import (
    AuditLog,
    AuditRecord,
    audit_log,
    audit_log_table,
    audit_url,
    parse_since,
)
from tools.access.gate import Access
from tools.access.principal import Principal
from tools.context.assembly import assemble_context
from tools.context.read import resolve
from tools.context.scope import ReadScope
from tools.memory import ContextMemory
from tools.settings import Settings
from tools.slices import SLICE_NAMES
from tools.sources.registry import default_slices

from .test_cli import custctx

T0 = datetime(2026, 1, 15, 12, 0, 0)


def rec(i: int, tenant: str = "t1", customer: str = "c_1", **kw) -> AuditRecord:
    values = dict(at=T0 + timedelta(minutes=i), tenant=tenant, user_name="u", role="admin", scope="customers",
                  interface="cli", customer_id=customer, slice="billing.status", decision="allowed",
                  outcome="source", latency_ms=1.5)
    return AuditRecord(**{**values, **kw})


def _refuses_changes(log: AuditLog, statements: list) -> None:
    log.append([rec(0), rec(1, customer="c_2")])
    for stmt in statements:
        with pytest.raises(DBAPIError, match="append-only"), log.engine.begin() as conn:
            conn.execute(stmt)
    assert len(log.query("t1", limit=None)) == 2


def test_the_audit_log_is_append_only_on_sqlite(tmp_path):
    log = AuditLog(create_engine(f"sqlite:///{tmp_path / 'state.sqlite'}"))
    AuditLog(log.engine)  # setting up twice is harmless
    _refuses_changes(log, [update(audit_log_table).values(decision="allowed"),
                           delete(audit_log_table), delete(audit_log_table).where(audit_log_table.c.id == 1)])


def test_the_audit_log_is_append_only_on_postgres(pg_url):
    log = AuditLog(create_engine(pg_url))
    AuditLog(log.engine)
    _refuses_changes(log, [update(audit_log_table).values(decision="allowed"), delete(audit_log_table),
                           text("TRUNCATE audit_log")])
    log.engine.dispose()


def test_query_by_tenant_customer_and_time_newest_first(tmp_path):
    log = AuditLog(create_engine(f"sqlite:///{tmp_path / 'state.sqlite'}"))
    log.append([rec(i, customer=f"c_{i % 2}") for i in range(6)] + [rec(9, tenant="t2")])
    assert [r.at.minute for r in log.query("t1")] == [5, 4, 3, 2, 1, 0]
    assert [r.at.minute for r in log.query("t1", customer_id="c_1")] == [5, 3, 1]
    assert [r.at.minute for r in log.query("t1", since=T0 + timedelta(minutes=4))] == [5, 4]
    assert len(log.query("t1", limit=2)) == 2 and [r.tenant for r in log.query("t2")] == ["t2"]


def test_since_takes_ages_and_iso_times():
    now = datetime(2026, 1, 15, 12, 0)
    assert parse_since("1h", now) == datetime(2026, 1, 15, 11, 0)
    assert parse_since("2d", now) == datetime(2026, 1, 13, 12, 0)
    assert parse_since("30m", now) == datetime(2026, 1, 15, 11, 30)
    assert parse_since("2026-01-14") == datetime(2026, 1, 14)
    assert parse_since("2026-01-14T10:00:00+02:00") == datetime(2026, 1, 14, 8, 0)
    with pytest.raises(ValueError, match="30m, 1h, 2d"):
        parse_since("yesterday")


def test_every_read_has_its_record(sqlite_ready):
    r = sqlite_ready
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    principal = Principal(tenant, "dana.scully", "account_exec", interface="mcp")
    access = Access.for_principal(r.settings, principal)
    acme, _ = resolve(ReadScope.build(r.settings, r.clock, access=access, index=r.index), "acme.com")
    memory = ContextMemory(InMemoryStore(), tenant, r.settings.ttls)
    assemble_context(ReadScope.build(r.settings, r.clock, memory=memory, access=access), acme, None)  # from the sources
    assemble_context(ReadScope.build(r.settings, r.clock, memory=memory, access=access), acme, None)  # from memory
    recs = audit_log(r.settings.state_db_url).query(tenant, limit=None)
    # "every slice": the connected sources' (no commerce here) and every slice the role may not
    # read, which is answered forbidden (and audited) whatever is connected
    every = default_slices(r.settings, SLICE_NAMES, lambda n: not access.allows(n))
    assert "commerce.payment_methods" in every and "commerce.orders" not in every
    assert len(recs) == 1 + 2 * len(every)  # one row check (judged once per gate) + every slice, twice
    assert {(x.tenant, x.user_name, x.role, x.scope, x.interface) for x in recs} == {
        (tenant, "dana.scully", "account_exec", "customers", "mcp")}
    assert {x.customer_id for x in recs} == {acme.customer_id}
    by = {(x.slice, x.outcome): x.decision for x in recs}
    assert by[("billing.invoices", "forbidden")] == "denied"
    assert by[("billing.status", "source")] == by[("billing.status", "memory")] == "masked"
    assert by[("crm.opportunities", "memory")] == "allowed"
    assert all(x.latency_ms >= 0 for x in recs)


def test_the_audit_log_has_its_own_url(sqlite_ready, tmp_path, monkeypatch):
    """CUSTCTX_AUDIT_URL moves the log out of the state database (default: the state database)."""
    assert audit_url(Settings(home=tmp_path)) == f"sqlite:///{tmp_path / 'state.sqlite'}"
    url = f"sqlite:///{tmp_path / 'audit.sqlite'}"
    monkeypatch.setenv("CUSTCTX_AUDIT_URL", url)
    assert audit_url(Settings(home=tmp_path)) == url
    r = sqlite_ready
    settings = r.settings.model_copy(update={"audit_url": url, "home": tmp_path})
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    access = Access.for_principal(settings, Principal(tenant, "sam", "support_agent"))
    acme, _ = resolve(ReadScope.build(settings, r.clock, access=access, index=r.index), "acme.com")
    assemble_context(ReadScope.build(settings, r.clock, access=access), acme, ["billing.status"])
    assert [(x.seq, x.slice) for x in audit_log(url).query(tenant)] == [(2, "billing.status"), (1, "crm.account")]
    assert audit_log(r.settings.state_db_url).query(tenant) == []
    (report,) = audit_log(url, tmp_path).verify(tenant)
    assert report.intact and report.anchor is not None and report.anchor.seq == 2


# ------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("audit-home")


def test_custctx_audit_reads_the_log(home):
    custctx(home, "context", "acme.com", "--as", "account_exec:dana.scully", check=True)
    hidden = custctx(home, "context", "massivedynamic.com", "--as", "account_exec:dana.scully")
    assert hidden.returncode == 1
    proc = custctx(home, "audit", "--customer", "acme.com", "--format", "json", "--limit", "100", check=True)
    recs = json.loads(proc.stdout)
    # the row check and every slice of the context: the embedded sources' and the optional
    # source's slice the role may not read (commerce.payment_methods: answered forbidden)
    assert len(recs) == 1 + len([n for n in SLICE_NAMES if not n.startswith("commerce.")]) + 1
    assert {(x["role"], x["user_name"], x["interface"], x["tenant"]) for x in recs} == {
        ("account_exec", "dana.scully", "cli", "default")}
    assert {x["decision"] for x in recs} == {"allowed", "masked", "denied"}
    assert all(x["seq"] >= 1 and len(x["hash"]) == 64 for x in recs)  # each record's place in the chain
    massive = json.loads(custctx(home, "audit", "--customer", "massivedynamic.com", "--since", "1h", "--format",
                                 "json", check=True).stdout)
    assert [(x["slice"], x["decision"], x["detail"]) for x in massive] == [
        ("crm.account", "denied", "row check: owner is not dana.scully")]
    table = custctx(home, "audit", "--limit", "3", check=True).stdout
    assert "account_exec" in table and "3 records" in table
    refused = custctx(home, "audit", "--as", "support_agent:sam")
    assert refused.returncode == 1 and "may not read the audit log" in refused.stderr
    assert custctx(home, "audit", "--since", "yesterday").returncode == 2
    assert custctx(home, "audit", "--as", "intern").returncode == 2
