"""The served read: resolutions cached per process and dropped when the identity index changes;
audit appends group committed, every caller back only once its records are committed — and a
process killed mid-stream leaves no acknowledged read without its record."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from datetime import datetime

import pytest
from sqlalchemy import create_engine, text

from agent.bootstrap import ready
from tests.conftest import settings_for
from tools.access.audit import AuditLog, AuditRecord
from tools.access.gate import Access
from tools.access.group_commit import GroupCommit
from tools.access.principal import Principal
from tools.context import resolution
from tools.context.read import resolve
from tools.context.scope import ReadScope
from tools.identity import CustomerNotFound, IdentityIndex


@pytest.fixture
def own_index(sqlite_warehouse, tmp_path):
    """A ready runtime with an identity index of its own (the test changes it)."""
    return ready(settings_for(sqlite_warehouse, tmp_path / "state"))


def _scope(r, principal: Principal | None = None) -> ReadScope:
    return ReadScope.build(r.settings, r.clock, principal=principal, index=r.index)


def _counting(monkeypatch) -> list[str]:
    calls: list[str] = []
    original = IdentityIndex.resolve

    def counted(self, query):  # noqa: ANN001
        calls.append(query)
        return original(self, query)

    monkeypatch.setattr(IdentityIndex, "resolve", counted)
    return calls


# ------------------------------------------------------------------ resolution cache
def test_a_resolution_is_cached_across_requests_until_the_index_changes(own_index, monkeypatch):
    r = own_index
    calls = _counting(monkeypatch)
    acme, how = resolve(_scope(r), "acme.com")
    again, how_again = resolve(_scope(r), "acme.com")  # another request: from the cache
    assert (again, how_again) == (acme, how) and calls == ["acme.com"]

    # Any change of the index tables, by any connection (here a plain sqlite3 one, as another
    # process would), moves the generation: acme.com now names Globex.
    globex, _ = resolve(_scope(r), "globex.com")
    before = resolution.generation(r.index.engine)
    with create_engine(r.settings.state_db_url).begin() as conn:
        conn.execute(text("DELETE FROM identity_key WHERE kind = 'domain' AND value = 'acme.com'"))
        conn.execute(text("INSERT INTO identity_key (kind, value, customer_id) VALUES ('domain', 'acme.com', :c)"),
                     {"c": globex.customer_id})
    assert resolution.generation(r.index.engine) > before
    moved, _ = resolve(_scope(r), "acme.com")
    assert moved.customer_id == globex.customer_id != acme.customer_id
    assert calls.count("acme.com") == 2


def test_a_rebuilt_index_is_seen_by_the_next_request(own_index, monkeypatch):
    from tools.identity import build_index

    r = own_index
    calls = _counting(monkeypatch)
    resolve(_scope(r), "acme.com")
    build_index(r.settings)  # a refresh rebuilding the index (same content, new generation)
    resolve(_scope(r), "acme.com")
    assert calls == ["acme.com", "acme.com"]


def test_not_found_is_cached_and_raised_afresh_each_time(own_index, monkeypatch):
    r = own_index
    calls = _counting(monkeypatch)
    errors = []
    for _ in range(2):
        with pytest.raises(CustomerNotFound) as exc:
            resolve(_scope(r), "no-such-customer.example")
        errors.append(exc.value)
    assert calls == ["no-such-customer.example"]  # the second answer came from the cache ...
    assert errors[0] is not errors[1] and str(errors[0]) == str(errors[1])  # ... as a new exception


def test_a_row_filtered_principal_never_gets_another_users_cached_answer(own_index, monkeypatch):
    """A hidden customer must cost what a missing one does: an admin's request must not warm
    the account executive's answer for a customer it may not see."""
    r = own_index
    calls = _counting(monkeypatch)
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    admin = Principal(tenant, "root", "admin", interface="http")
    fox = Principal(tenant, "fox.mulder", "account_exec", interface="http")
    resolve(_scope(r, admin), "acme.com")  # Acme is dana.scully's
    with pytest.raises(CustomerNotFound):
        resolve(_scope(r, fox), "acme.com")
    assert calls.count("acme.com") == 2  # fox's lookup was not served from admin's entry
    seen = len(calls)
    with pytest.raises(CustomerNotFound):
        resolve(_scope(r, fox), "acme.com")  # fox's own answers are cached (suggestions too)
    assert len(calls) == seen


@pytest.mark.parametrize("where", ["sqlite", "postgres"])
def test_every_change_of_the_index_tables_moves_the_generation(where, tmp_path, request):
    url = request.getfixturevalue("pg_url") if where == "postgres" else f"sqlite:///{tmp_path / 'state.sqlite'}"
    engine = create_engine(url)
    first = resolution.generation(engine)
    seen = [first]
    for stmt in ("INSERT INTO identity_key (kind, value, customer_id) VALUES ('domain', 'a.example', 'c_1')",
                 "UPDATE identity_key SET customer_id = 'c_2'",
                 "INSERT INTO identity_meta (key, value) VALUES ('fingerprint', 'x')",
                 "DELETE FROM identity_key"):
        with engine.begin() as conn:
            conn.execute(text(stmt))
        seen.append(resolution.generation(engine))
    assert seen == sorted(set(seen)) and len(seen) == 5  # every change moved it forward
    resolution.install_generation(engine)  # set up again (another process): harmless, keeps the count
    assert resolution.generation(engine) == seen[-1]
    engine.dispose()


# ------------------------------------------------------------------ group commit
def _wait_queued(gc: GroupCommit, n: int) -> None:
    with gc._cond:
        assert gc._cond.wait_for(lambda: len(gc._queue) >= n, timeout=30), "callers did not queue up"


def test_concurrent_callers_share_one_commit_and_return_only_after_it():
    written: list[list[int]] = []
    hold = threading.Event()
    first = threading.Event()

    def write(items: list[int]) -> None:
        if not written:
            first.set()
            assert hold.wait(30)
        written.append(items)

    gc: GroupCommit[int] = GroupCommit(write)
    returned: list[int] = []
    threads = [threading.Thread(target=lambda i=i: (gc.submit([i]), returned.append(i))) for i in range(11)]
    threads[0].start()
    assert first.wait(30)  # caller 0 is writing its batch ...
    for t in threads[1:]:
        t.start()
    _wait_queued(gc, 10)  # ... while ten more queue up behind it
    assert returned == []  # nobody is back before its batch is committed
    hold.set()
    for t in threads:
        t.join(30)
    assert written == [[0], list(range(1, 11))] or sorted(written[1]) == list(range(1, 11))
    assert len(written) == 2 and gc.batches == 2 and gc.items == 11 and sorted(returned) == list(range(11))


def test_a_failed_commit_fails_every_caller_of_its_batch_only():
    hold, first = threading.Event(), threading.Event()
    calls = {"n": 0}

    def write(items: list[str]) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            first.set()
            assert hold.wait(30)
        elif calls["n"] == 2:
            raise OSError("disk full")

    gc: GroupCommit[str] = GroupCommit(write)
    outcome: dict[str, str] = {}

    def call(name: str) -> None:
        try:
            gc.submit([name])
            outcome[name] = "ok"
        except OSError as exc:
            outcome[name] = str(exc)

    a = threading.Thread(target=call, args=("a",))
    a.start()
    assert first.wait(30)
    others = [threading.Thread(target=call, args=(n,)) for n in ("b", "c")]
    for t in others:
        t.start()
    _wait_queued(gc, 2)
    hold.set()
    for t in (a, *others):
        t.join(30)
    call("d")  # the next batch commits again
    assert outcome == {"a": "ok", "b": "disk full", "c": "disk full", "d": "ok"} and gc.batches == 2


def _rec(i: int, tenant: str = "t1") -> AuditRecord:
    return AuditRecord(at=datetime(2026, 1, 15, 12, 0, 0), tenant=tenant, user_name="u", role="admin",
                       scope="customers", interface="http", customer_id="c_1", slice="billing.status",
                       decision="allowed", outcome="memory", latency_ms=0.1, detail=f"read {i}")


def test_concurrent_audit_appends_are_group_committed_into_one_intact_chain(tmp_path):
    log = AuditLog(create_engine(f"sqlite:///{tmp_path / 'state.sqlite'}"), tmp_path)
    gc = log.group("t1")
    hold, first = threading.Event(), threading.Event()
    write = gc._write

    def held(rows):  # noqa: ANN001, ANN202
        if not first.is_set():
            first.set()
            assert hold.wait(30)
        return write(rows)

    gc._write = held
    threads = [threading.Thread(target=log.append, args=([_rec(i), _rec(i)],)) for i in range(20)]
    threads[0].start()
    assert first.wait(30)
    for t in threads[1:]:
        t.start()
    _wait_queued(gc, 19)
    hold.set()
    for t in threads:
        t.join(30)
    (report,) = log.verify("t1")
    assert report.intact and report.records == 40 and gc.batches == 2
    assert sorted(r.detail for r in log.query("t1", limit=None)) == sorted(f"read {i}" for i in range(20) for _ in "ab")


# ------------------------------------------------------------------ crash
CHILD = """
import sys, threading
from pathlib import Path
from agent.runs import Runner
from tests.conftest import settings_for
from tools.access.principal import Principal

settings = settings_for(sys.argv[1], Path(sys.argv[2]))
who = Principal(sys.argv[3], "crash.test", "support_agent", interface="http")
refs = ["acme.com", "globex.com", "initech.io", "hooli.xyz"]
lock = threading.Lock()
with Runner(settings) as runner:
    def serve(worker):
        for i in range(10**6):
            ctx = runner.customer_context(refs[(worker + i) % len(refs)], ["billing.status", "crm.account"],
                                          principal=who)
            with lock:  # the read is acknowledged: its response would go out now
                print(f"ack {ctx.customer_id}", flush=True)
    threads = [threading.Thread(target=serve, args=(w,), daemon=True) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
"""


@pytest.mark.slow  # a second process starting up: ~12 s on the 2-core CI machine
def test_a_killed_server_leaves_no_acknowledged_read_without_its_record(sqlite_warehouse, tmp_path):
    state = tmp_path / "state"
    ready(settings_for(sqlite_warehouse, state))  # index built before the child starts
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child = subprocess.Popen([sys.executable, "-c", CHILD, sqlite_warehouse, str(state), tenant],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root,
                             env={**os.environ, "PYTHONPATH": root})
    acked: list[str] = []
    assert child.stdout is not None
    for line in child.stdout:
        acked.append(line.split()[1])
        if len(acked) == 120:
            child.send_signal(signal.SIGKILL)  # no shutdown, no flush: whatever is committed is there
            break
    child.wait(30)
    assert len(acked) == 120, child.stderr.read() if child.stderr else ""
    log = AuditLog(create_engine(f"sqlite:///{state / 'state.sqlite'}"), state)
    records = log.query(tenant, limit=None)
    (report,) = log.verify(tenant)
    assert report.intact
    # every acknowledged read has its records: a row check and one per slice
    per_customer: dict[str, int] = {}
    for rec in records:
        if rec.slice == "billing.status":
            per_customer[rec.customer_id] = per_customer.get(rec.customer_id, 0) + 1
    for cid in set(acked):
        assert per_customer.get(cid, 0) >= acked.count(cid), cid


def test_the_gate_appends_through_the_group_commit(sqlite_ready):
    r = sqlite_ready
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    access = Access.for_principal(r.settings, Principal(tenant, "root", "admin", interface="http"))
    assert access.audit is not None
    before = access.audit.group(tenant).batches
    with access.batch():
        access.record("c_1", "billing.status", "allowed", "memory", 0.1)
        access.record("c_1", "crm.account", "allowed", "memory", 0.1)
    assert access.audit.group(tenant).batches == before + 1 and len(access.audit.query(tenant)) == 2


# ------------------------------------------------------------------ the runner's served read
def test_a_served_read_is_one_audit_transaction_with_every_record(sqlite_ready, tmp_path):
    """``Runner.customer_context`` resolves and assembles inside one batch: the row check made
    while resolving and every slice's record are committed together, before the context is
    returned — and a reference that fails still has its row check committed."""
    from agent.runs import Runner
    from tools.access.audit import audit_log_for

    r = sqlite_ready
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    who = Principal(tenant, "dana.scully", "account_exec", interface="http")  # a row-filtering role
    names = ["crm.account", "crm.contacts", "billing.status", "product.usage"]
    log = audit_log_for(r.settings)
    with Runner(r.settings) as runner:
        assert runner.memory() is runner.memory()  # kept for the runner's life, not built per request
        group = log.group(tenant)
        batches = group.batches
        c = runner.customer_context("acme.com", names, principal=who)
        assert set(c.slices) == set(names)
        assert group.batches == batches + 1  # one transaction: row check + 4 slices
        recs = log.query(tenant, limit=None)
        assert len(recs) == 1 + len(names) and sum((x.detail or "").startswith("row check") for x in recs) == 1
        with pytest.raises(CustomerNotFound):
            runner.customer_context("no-such-customer.example", names, principal=who)
        assert group.batches == batches + 2  # the failed read's record, committed on the way out
        recs = log.query(tenant, limit=None)
        assert len(recs) == 2 + len(names) and recs[0].customer_id == "-"  # newest first: the unmatched check
