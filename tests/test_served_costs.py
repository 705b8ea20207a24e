"""What a served read no longer pays for, and that nothing it skips changes an answer: the audit
append at the driver writes what SQLAlchemy writes; a served read of a cached customer reads memory
once (the row check's query carries the slices, a hidden customer's query looks like a missing
one's); a snapshot is verified and parsed once per stored value; masking copies along the path and
matches a full re-validation; a cold view reads each warehouse over one connection; a source's
configuration is made once per configuration and still notices a deleted SQLite file."""

from __future__ import annotations

import sqlite3
import uuid
from contextlib import closing
from datetime import datetime, timedelta

import pytest
from sqlalchemy import create_engine, event
from sqlalchemy.exc import DBAPIError

from agent.runs import Runner
from tests.conftest import settings_for
from tools.access.audit import AuditLog, AuditRecord
from tools.access.policy import load_policy, mask_slice
from tools.access.principal import Principal
from tools.context.assembly import assemble_context
from tools.context.scope import ReadScope
from tools.identity import CustomerNotFound
from tools.memory import ContextMemory
from tools.settings import SourceConfig
from tools.slices import SLICE_MODELS
from tools.sources.registry import engine_for

T0 = datetime(2026, 1, 15, 12, 0, 0)


def _rec(i: int, tenant: str = "t1", **kw) -> AuditRecord:
    values = dict(at=T0 + timedelta(seconds=i), tenant=tenant, user_name="sam", role="support_agent",
                  scope="customers", interface="http", customer_id="c_1", slice="billing.status",
                  decision="allowed", outcome="memory", latency_ms=0.25 * i, detail=None if i % 2 else f"read {i}")
    return AuditRecord(**{**values, **kw})


# ------------------------------------------------------------------ the audit append at the driver
def test_the_driver_append_and_the_sqlalchemy_path_write_one_chain(tmp_path):
    db = tmp_path / "state.sqlite"
    log = AuditLog(create_engine(f"sqlite:///{db}"), tmp_path)
    assert log._driver is not None  # a plain SQLite file: appended at the driver
    log.append([_rec(0), _rec(1), _rec(2, "t2")])
    log.restart_chain("t1", "a restart goes through SQLAlchemy", _rec(3))  # the other path, same chain
    log.append([_rec(4), _rec(5)])
    other = AuditLog(create_engine(f"sqlite:///{db}"), tmp_path)  # another process's log on the same file
    other.append([_rec(6)])
    log.append([_rec(7, at=T0.replace(microsecond=0))])  # whole seconds: stored with six decimals all the same
    reports = {r.tenant: r for r in log.verify()}
    assert reports["t1"].intact and reports["t1"].records == 7 and reports["t1"].anchor.seq == 7
    assert reports["t2"].intact and reports["t2"].records == 1
    got = sorted(log.query("t1", limit=None), key=lambda r: r.seq or 0)
    assert [(r.seq, r.at, r.latency_ms, r.detail) for r in got if r.outcome != "chain_restart"] == [
        (n, _rec(i).at if i != 7 else T0, _rec(i).latency_ms, _rec(i).detail)
        for n, i in ((1, 0), (2, 1), (4, 4), (5, 5), (6, 6), (7, 7))]
    with closing(sqlite3.connect(db)) as conn:  # stored as SQLAlchemy stores a DateTime
        assert {len(at) for (at,) in conn.execute("SELECT at FROM audit_log")} == {len("2026-01-15 12:00:00.000000")}


def test_a_driver_error_is_raised_as_a_database_error(tmp_path):
    db = tmp_path / "state.sqlite"
    log = AuditLog(create_engine(f"sqlite:///{db}"), tmp_path)
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TRIGGER no_insert BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'refused'); END")
        conn.commit()
    with pytest.raises(DBAPIError, match="refused"):  # what the interfaces report as a database error
        log.append([_rec(0)])
    assert log.query("t1") == []


# ------------------------------------------------------------------ the served read
def _memory_queries(monkeypatch) -> list[tuple[str, list[str]]]:
    calls: list[tuple[str, list[str]]] = []
    original = ContextMemory.rows

    def rows(self, customer_id, names):  # noqa: ANN001, ANN202
        names = list(names)
        calls.append((customer_id, names))
        return original(self, customer_id, names)

    monkeypatch.setattr(ContextMemory, "rows", rows)
    return calls


def test_a_served_read_of_a_cached_customer_queries_memory_once(sqlite_ready, monkeypatch):
    names = ["crm.account", "crm.contacts", "billing.status", "product.usage"]
    who = Principal(f"t-{uuid.uuid4().hex[:8]}", "sam", "support_agent", interface="http")  # a row filter
    with Runner(sqlite_ready.settings) as runner:
        runner.customer_context("acme.com", names, principal=who)  # cached now
        calls = _memory_queries(monkeypatch)
        ctx = runner.customer_context("acme.com", names, principal=who)
        assert {s.provenance.served_from for s in ctx.slices.values()} == {"memory"} and set(ctx.slices) == set(names)
        assert calls == [(ctx.customer_id, names)]  # the row check's query, carrying every slice
        # a hidden customer (churned: support agents do not see it) and a missing one: the same query
        calls.clear()
        for ref in ("soylent.com", "no-such-customer.example"):
            with pytest.raises(CustomerNotFound):
                runner.customer_context(ref, names, principal=who)
        assert [n for _, n in calls] == [names, names] and calls[1][0] == "c_unmatched"


def test_a_snapshot_is_verified_once_per_stored_value(sqlite_ready, tmp_path, monkeypatch):
    from tools import memory as memory_module

    r = sqlite_ready
    acme = r.index.resolve("acme.com")[0]
    checked: list[str] = []
    original = memory_module.slice_checksum
    monkeypatch.setattr(memory_module, "slice_checksum", lambda *a: checked.append(a[3]) or original(*a))
    path = tmp_path / "memory.sqlite"
    from tools.memory import open_store

    with open_store(f"sqlite:///{path}") as store:
        memory = ContextMemory.of(store, r.settings)
        account = assemble_context(ReadScope.build(r.settings, r.clock, memory=memory), acme, ["crm.account"])
        checked.clear()
        first, second = (memory.get(acme.customer_id, "crm.account") for _ in range(2))
        assert checked == ["crm.account"]  # the second read found the same stored text: not checked again
        assert first.slice == second.slice == account.get("crm.account") and first.slice is not second.slice
        first.slice.provenance.served_from = "memory"  # a reader stamps its copy, never the one kept
        assert memory.get(acme.customer_id, "crm.account").slice.provenance.served_from == "source"
        with closing(sqlite3.connect(path)) as conn:  # changed in the store: checked again, and refused
            conn.execute("UPDATE store SET value = json_set(value, '$.slice.mrr', 1) WHERE key = 'crm.account'")
            conn.commit()
        assert memory.get(acme.customer_id, "crm.account") is None and memory.rejected == 1


def _mask_by_validation(s, paths, role):  # noqa: ANN001, ANN202 - masking as it was done before
    data, masked = s.model_dump(), []

    def walk(node, parts, prefix):  # noqa: ANN001, ANN202
        key, rest = parts[0], parts[1:]
        if not isinstance(node, dict) or key not in node:
            return
        here = f"{prefix}.{key}" if prefix else key
        if not rest:
            if node[key] is not None:
                node[key] = None
                masked.append(here)
        elif isinstance(node[key], list):
            for i, item in enumerate(node[key]):
                walk(item, rest, f"{here}[{i}]")
        else:
            walk(node[key], rest, here)

    for path in paths:
        walk(data, path.split("."), "")
    if not masked:
        return s
    data["provenance"].update(masked_fields=masked, masked_for=role)
    return type(s).model_validate(data)


def test_masking_copies_along_the_path_and_matches_a_full_revalidation(sqlite_ready):
    r = sqlite_ready
    policy = load_policy(None)
    scope = ReadScope.build(r.settings, r.clock, index=r.index)
    compared = 0
    for ref in ("acme.com", "globex.com", "initech.io", "hooli.xyz"):
        ctx = assemble_context(scope, r.index.resolve(ref)[0], list(SLICE_MODELS))
        for role in policy.roles.values():
            for name, paths in role.mask.items():
                if (s := ctx.get(name)) is None:
                    continue
                before = s.model_dump()
                got, want = mask_slice(s, paths, role.name), _mask_by_validation(s, paths, role.name)
                assert got.model_dump() == want.model_dump() and s.model_dump() == before  # never in place
                compared += got is not s
    assert compared >= 4  # contract values, payment methods, phones were masked


# ------------------------------------------------------------------ the cold view
def test_a_cold_view_reads_each_warehouse_over_one_connection(sqlite_ready):
    r = sqlite_ready
    checkouts: list[object] = []
    engine = engine_for(r.settings.source("crm").url)  # every source lives in this one warehouse

    def count(*a: object) -> None:
        checkouts.append(a)

    event.listen(engine, "checkout", count)
    try:
        scope = ReadScope.build(r.settings, r.clock)  # no memory: every slice read from its source
        ctx = assemble_context(scope, r.index.resolve("acme.com")[0],
                               ["crm.account", "crm.contacts", "billing.status", "product.usage", "support.summary"])
    finally:
        event.remove(engine, "checkout", count)
    assert len(ctx.slices) == 5 and not ctx.gaps
    assert len(checkouts) == 1  # not one per slice


# ------------------------------------------------------------------ settings
def test_a_source_configuration_is_made_once_and_follows_changes(sqlite_warehouse, tmp_path):
    settings = settings_for(sqlite_warehouse, tmp_path)
    assert settings.source("crm") is settings.source("crm")
    settings.sources["crm"] = SourceConfig(url=sqlite_warehouse, mapping="salesforce")
    assert settings.source("crm").mapping == "salesforce"
    gone = tmp_path / "gone.sqlite"
    settings.sources["billing"] = SourceConfig(url=f"sqlite:///{gone}")
    assert settings.source("billing").url is None and "does not exist" in (settings.source("billing").problem or "")
    gone.write_bytes(b"")  # created: usable from the next call on ...
    assert settings.source("billing").url == f"sqlite:///{gone}"
    gone.unlink()  # ... and deleted again: noticed on the next call, though the rest is kept
    assert settings.source("billing").url is None
