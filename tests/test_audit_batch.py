"""What the access gate's audit records cost, and that nothing cheaper changes a record: a batch (one
request) reads the clock once and its records share that time; the gate's rows are the records
``AuditLog.append`` writes, hash for hash, on the driver path and the SQLAlchemy path; a group commit
of requests made at different times links each with its own time; a user-facts read asks the store
once (the old list's key and the items in one batch) and still moves an old list."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine

from tools.access.audit import AuditLog, AuditRecord, audit_row
from tools.access.gate import Access
from tools.access.policy import load_policy
from tools.access.principal import Principal
from tools.context.scope import ReadScope
from tools.facts import USER_FACTS_KEY, UserFact, record_fact, user_facts
from tools.memory import ContextMemory, open_store

T0 = datetime(2026, 1, 15, 12, 0, 0)


class Clock:
    """A fixed clock that moves one second per reading and counts them."""

    def __init__(self) -> None:
        self.reads = 0

    def __call__(self) -> datetime:
        self.reads += 1
        return (T0 + timedelta(seconds=self.reads)).replace(tzinfo=UTC)


def _log(tmp_path, driver: bool = True) -> AuditLog:
    # a URL with an option is opened by SQLAlchemy: the other append path (as PostgreSQL's)
    url = f"sqlite:///{tmp_path}/state.sqlite" + ("" if driver else "?timeout=5")
    log = AuditLog(create_engine(url), tmp_path)
    assert (log._driver is not None) is driver
    return log


def _stored(log: AuditLog, tenant: str) -> list[tuple[Any, ...]]:
    return [(r.seq, r.at, r.customer_id, r.slice, r.decision, r.outcome, r.latency_ms, r.detail, r.hash)
            for r in sorted(log.query(tenant, limit=None), key=lambda r: r.seq or 0)]


@pytest.mark.parametrize("driver", [True, False], ids=["driver", "sqlalchemy"])
def test_a_batch_reads_the_clock_once_and_its_records_share_that_time(tmp_path, driver):
    log, clock = _log(tmp_path, driver), Clock()
    access = Access(Principal("t1", "sam", "support_agent"), load_policy(None).role("support_agent"), log, clock)
    with access.batch():
        access.record("c_1", "crm.account", "allowed", "memory", 0.123, "row check: sees")
        with access.batch():  # a nested batch belongs to the outer one
            access.record("c_1", "billing.status", "masked", "memory", 0.5, "masked: payment_method")
        access.forbidden("c_1", "support.tickets")
        assert log.query("t1") == []  # nothing appended before the batch ends
    assert clock.reads == 1
    access.record("c_2", "crm.account", "allowed", "source", 1.0)  # outside a batch: a reading of its own
    with access.batch():
        access.record("c_3", "crm.account", "allowed", "memory", 0.2)
    assert clock.reads == 3
    got = _stored(log, "t1")
    first, second, third = (T0 + timedelta(seconds=n) for n in (1, 2, 3))
    assert [(seq, at, cid, sl, dec, lat) for seq, at, cid, sl, dec, _, lat, _, _ in got] == [
        (1, first, "c_1", "crm.account", "allowed", 0.12), (2, first, "c_1", "billing.status", "masked", 0.5),
        (3, first, "c_1", "support.tickets", "denied", 0.0), (4, second, "c_2", "crm.account", "allowed", 1.0),
        (5, third, "c_3", "crm.account", "allowed", 0.2)]
    report = log.verify("t1")[0]
    assert report.intact and report.records == 5 and report.anchor is not None and report.anchor.seq == 5


@pytest.mark.parametrize("driver", [True, False], ids=["driver", "sqlalchemy"])
def test_the_gates_rows_are_the_records_append_writes(tmp_path, driver):
    values = [dict(at=T0 + timedelta(microseconds=i * 7), tenant="t1", user_name="sam", role="support_agent",
                   scope="customers", interface="http", customer_id=f"c_{i}", slice="billing.status",
                   decision="allowed", outcome="memory", latency_ms=0.25 * i, detail=None if i % 2 else f"read {i}")
              for i in range(4)]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    by_records, by_rows = _log(tmp_path / "a", driver), _log(tmp_path / "b", driver)
    by_records.append([AuditRecord(**v) for v in values])
    by_rows.append_rows([audit_row(v["at"].replace(tzinfo=UTC), v["tenant"], v["user_name"], v["role"], v["scope"],
                                   v["interface"], v["customer_id"], v["slice"], v["decision"], v["outcome"],
                                   v["latency_ms"], v["detail"]) for v in values])
    assert _stored(by_records, "t1") == _stored(by_rows, "t1") and len(_stored(by_rows, "t1")) == 4
    assert by_rows.verify("t1")[0].intact


@pytest.mark.parametrize("driver", [True, False], ids=["driver", "sqlalchemy"])
def test_requests_of_different_times_in_one_commit_keep_their_own_times(tmp_path, driver):
    """A group commit links the rows of several requests: each batch's time is shared within it, not
    across (the time's ISO form is made once per run of one time)."""
    log = _log(tmp_path, driver)
    a, b = T0, T0 + timedelta(milliseconds=3)
    rows = [audit_row(at, "t1", "sam", "support_agent", "customers", "http", f"c_{i}", "crm.account", "allowed",
                      "memory", 0.1, None) for i, at in enumerate((a, a, b, a, b, b))]
    log.append_rows(rows)
    assert [r[1] for r in _stored(log, "t1")] == [a, a, b, a, b, b]
    assert log.verify("t1")[0].intact


# ------------------------------------------------------------------ user facts: one store call
def _lead(r, store, tenant: str) -> ReadScope:
    access = Access(Principal(tenant, "sam", "support_lead"), load_policy(None).role("support_lead"), None,
                    clock=lambda: T0.replace(tzinfo=UTC))
    return ReadScope.build(r.settings, r.clock, access=access, memory=ContextMemory(store, tenant, r.settings.ttls))


def _count_calls(monkeypatch, store) -> dict[str, int]:  # noqa: ANN001 - any LangGraph store
    calls = {"batch": 0, "get": 0, "search": 0}
    for name in calls:
        original = getattr(store, name)

        def counted(*a, _name=name, _original=original, **kw):  # noqa: ANN002, ANN003, ANN202
            calls[_name] += 1
            return _original(*a, **kw)

        monkeypatch.setattr(store, name, counted)
    return calls


def _facts_read_asks_once(r, store, monkeypatch) -> None:  # noqa: ANN001
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    acme, _ = r.index.resolve("acme.com")
    scope = _lead(r, store, tenant)
    mem = scope.memory
    assert mem is not None
    assert user_facts(scope, acme.customer_id) == []
    record_fact(scope, acme.customer_id, "their onboarding finished last week")
    calls = _count_calls(monkeypatch, store)
    assert [f.text for f in user_facts(scope, acme.customer_id)] == ["their onboarding finished last week"]
    assert calls == {"batch": 1, "get": 0, "search": 0}  # the old list's key and the items: one store call
    # an old single-key list is still found by that call and moved to items of their own
    old = UserFact(text="told long ago", by="dana.scully", role="account_exec", at=T0 - timedelta(days=3))
    store.put(mem.namespace(acme.customer_id), USER_FACTS_KEY, {"facts": [old.model_dump(mode="json")]}, index=False)
    assert [f.text for f in user_facts(scope, acme.customer_id)] == [
        "told long ago", "their onboarding finished last week"]
    assert store.get(mem.namespace(acme.customer_id), USER_FACTS_KEY) is None


def test_a_user_facts_read_asks_the_store_once_on_sqlite(sqlite_ready, tmp_path, monkeypatch):
    with open_store(f"sqlite:///{tmp_path}/facts.sqlite") as store:
        _facts_read_asks_once(sqlite_ready, store, monkeypatch)


def test_a_user_facts_read_asks_the_store_once_on_postgresql(sqlite_ready, pg_url, monkeypatch):
    with open_store(pg_url) as store:
        _facts_read_asks_once(sqlite_ready, store, monkeypatch)

