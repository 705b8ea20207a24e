"""Tamper evidence: the audit log's hash chains, their anchor and `custctx audit verify`, an
insert-only PostgreSQL role, and long-term memory snapshots that carry a checksum.

Every attack is made the way an attacker would: `sqlite3` on the real file (or SQL as a
PostgreSQL role), after dropping the triggers that refuse plain UPDATE and DELETE."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import uuid
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, make_url, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from tools.access.audit import (
    ANCHOR_FILE,
    GENESIS,
    AuditChainBroken,
    AuditLog,
    AuditRecord,
    ChainProblem,
    record_hash,
)
from tools.context.assembly import assemble_context
from tools.context.scope import ReadScope
from tools.guard import SourceGuard
from tools.memory import KEY_FILE, ContextMemory, installation_key, open_store
from tools.sources.base import ReadClock

from .test_cli import custctx
from .test_guard import FakeClock

T0 = datetime(2026, 1, 15, 12, 0, 0)
FIELDS = ("at", "tenant", "user_name", "role", "scope", "interface", "customer_id", "slice", "decision", "outcome",
          "latency_ms", "detail", "seq", "prev_hash", "hash")


def rec(i: int, tenant: str = "t1", **kw) -> AuditRecord:
    values = dict(at=T0 + timedelta(minutes=i), tenant=tenant, user_name="sam", role="support_agent",
                  scope="customers", interface="cli", customer_id="c_acd03fa532b9", slice="billing.status",
                  decision="masked", outcome="memory", latency_ms=0.5 + i, detail="masked: payment_method")
    return AuditRecord(**{**values, **kw})


def seeded(tmp_path: Path, n: int = 10, tenants: tuple[str, ...] = ("t1", "t2")) -> tuple[AuditLog, Path]:
    """A log of ``n`` records per tenant, appended in batches of two, anchored in ``tmp_path``."""
    db = tmp_path / "state.sqlite"
    log = AuditLog(create_engine(f"sqlite:///{db}"), tmp_path)
    for i in range(0, n, 2):
        log.append([rec(j, t) for j in (i, i + 1) for t in tenants])
    return log, db


def run_sql(db: Path, *statements: str, params: tuple = ()) -> None:
    with closing(sqlite3.connect(db)) as conn:
        for stmt in statements:
            conn.execute(stmt, params if "?" in stmt else ())
        conn.commit()


def rows(db: Path, tenant: str = "t1") -> list[dict]:
    with closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        got = conn.execute(f"SELECT {', '.join(FIELDS)} FROM audit_log WHERE tenant = ? ORDER BY seq", (tenant,))
        return [{**r, "at": datetime.fromisoformat(r["at"])} for r in map(dict, got)]


def problems(log: AuditLog, tenant: str = "t1") -> list[ChainProblem]:
    (report,) = log.verify(tenant)
    return report.problems


# ------------------------------------------------------------------ SQLite, by hand
def test_an_intact_log_verifies_and_matches_its_anchor(tmp_path):
    log, _ = seeded(tmp_path)
    reports = log.verify()
    assert [(r.tenant, r.intact, r.records) for r in reports] == [("t1", True, 10), ("t2", True, 10)]
    for r in reports:
        assert r.head is not None and r.anchor is not None
        assert (r.head.seq, r.head.hash) == (r.anchor.seq, r.anchor.hash) == (10, r.head.hash)
    newest = log.query("t1", limit=1)[0]
    assert newest.seq == 10 and newest.hash == reports[0].head.hash
    assert (tmp_path / ANCHOR_FILE).stat().st_mode & 0o777 == 0o600


def test_delete_after_drop_trigger_names_the_first_missing_record(tmp_path):
    log, db = seeded(tmp_path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        run_sql(db, "DELETE FROM audit_log WHERE seq = 4")
    run_sql(db, "DROP TRIGGER audit_log_no_delete", "DELETE FROM audit_log WHERE tenant = 't1' AND seq BETWEEN 4 AND 6")
    first, *rest = problems(log)
    assert (first.seq, first.kind, first.at) == (4, "missing", T0 + timedelta(minutes=2))
    assert first.message == ("records 4–6 missing (after seq 3 at 2026-01-15 12:02:00, before seq 7 at "
                             "2026-01-15 12:06:00)")
    assert rest == [] and problems(log, "t2") == []


def test_update_after_drop_trigger_names_the_changed_record(tmp_path):
    log, db = seeded(tmp_path)
    run_sql(db, "DROP TRIGGER audit_log_no_update",
            "UPDATE audit_log SET decision = 'allowed', detail = NULL WHERE tenant = 't1' AND seq = 5")
    assert [(p.seq, p.kind, p.at) for p in problems(log)] == [(5, "altered", T0 + timedelta(minutes=4))]
    assert "record 5 at 2026-01-15 12:04:00 does not match its hash" in problems(log)[0].message


def test_a_rehashed_record_breaks_the_next_link(tmp_path):
    log, db = seeded(tmp_path)
    row = rows(db)[4] | {"outcome": "source"}
    run_sql(db, "DROP TRIGGER audit_log_no_update",
            "UPDATE audit_log SET outcome = 'source', hash = ? WHERE tenant = 't1' AND seq = 5",
            params=(record_hash(row),))
    assert [(p.seq, p.kind) for p in problems(log)] == [(6, "broken_link")]


def test_a_recomputed_chain_is_caught_by_the_anchor(tmp_path):
    """Whoever rewrites a record and re-hashes every record after it leaves a chain that is
    consistent in itself: only the anchor, outside the table, tells."""
    log, db = seeded(tmp_path)
    chain, prev = rows(db), None
    run_sql(db, "DROP TRIGGER audit_log_no_update")
    for row in chain[4:]:
        if row["seq"] == 5:
            row["decision"] = "allowed"
        row["prev_hash"] = prev or row["prev_hash"]
        row["hash"] = prev = record_hash(row)
        run_sql(db, "UPDATE audit_log SET decision = ?, prev_hash = ?, hash = ? WHERE tenant = 't1' AND seq = ?",
                params=(row["decision"], row["prev_hash"], row["hash"], row["seq"]))
    assert [(p.seq, p.kind) for p in problems(log)] == [(10, "anchor_mismatch")]
    with pytest.raises(AuditChainBroken, match="records seq 10"):
        AuditLog(create_engine(f"sqlite:///{db}"), tmp_path).append([rec(11)])


def test_forged_inserts_are_caught(tmp_path):
    log, db = seeded(tmp_path)
    head = rows(db)[-1]
    values = {f: getattr(rec(11), f) for f in FIELDS[:12]}
    cols = ", ".join([*values, "seq", "prev_hash", "hash"])
    insert = f"INSERT INTO audit_log ({cols}) VALUES ({', '.join('?' * (len(values) + 3))})"
    plain = tuple(str(v) if isinstance(v, datetime) else v for v in values.values())
    # one with a made-up hash, one hashed right but not linked to the chain
    run_sql(db, insert, params=(*plain, 11, head["hash"], "f" * 64))
    linked_wrong = {**values, "seq": 12, "prev_hash": GENESIS}
    run_sql(db, insert, params=(*plain, 12, GENESIS, record_hash(linked_wrong)))
    assert [(p.seq, p.kind) for p in problems(log)] == [(11, "altered"), (12, "broken_link")]
    # a record slipped in between: the unique (tenant, seq) index refuses it; without the index, it shows
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        run_sql(db, insert, params=(*plain, 3, head["hash"], "e" * 64))
    run_sql(db, "DROP INDEX ux_audit_log_tenant_seq")
    run_sql(db, insert, params=(*plain, 3, head["hash"], "e" * 64))
    assert [(p.seq, p.kind) for p in problems(log)][:2] == [(3, "duplicate"), (3, "altered")]


def test_a_dropped_table_fails_verify_and_is_not_silently_restarted(tmp_path):
    log, db = seeded(tmp_path)
    run_sql(db, "DROP TABLE audit_log")
    next_run = AuditLog(create_engine(f"sqlite:///{db}"), tmp_path)
    first = problems(next_run)[0]
    assert (first.seq, first.kind) == (1, "missing")
    assert first.message.startswith("records 1–10 missing: the audit_log table is missing, but the anchor records "
                                    "seq 10")
    with pytest.raises(AuditChainBroken, match="has no audit_log table.*Refusing to append.*restart-chain"):
        next_run.append([rec(11)])
    assert not inspect(next_run.engine).has_table("audit_log")  # not recreated empty, triggers and all
    # Starting over is an explicit act, and it stays on record
    restart = next_run.restart_chain("t1", "table dropped; no backup", rec(20, detail=None))
    assert restart.seq == 11
    next_run.append([rec(21)])
    (report,) = next_run.verify("t1")
    assert (report.records, report.head.seq) == (2, 12)
    assert [(p.seq, p.kind) for p in report.problems] == [(1, "missing")]
    assert "records 1–10 missing (before seq 11" in report.problems[0].message
    assert [(r.seq, r.outcome, r.detail) for r in next_run.query("t1")] == [
        (12, "memory", "masked: payment_method"), (11, "chain_restart", "chain restarted on purpose: table dropped; "
                                                                         "no backup")]
    with pytest.raises(AuditChainBroken):  # t2 lost its records too, and has not been restarted
        next_run.append([rec(21, "t2")])


def test_an_emptied_or_cut_log_refuses_appends(tmp_path):
    log, db = seeded(tmp_path)
    run_sql(db, "DROP TRIGGER audit_log_no_delete", "DELETE FROM audit_log WHERE tenant = 't1' AND seq > 8")
    assert [(p.seq, p.kind) for p in problems(log)] == [(9, "missing")]
    assert "the log ends at seq 8 (2026-01-15 12:07:00), but the anchor records seq 10" in problems(log)[0].message
    with pytest.raises(AuditChainBroken, match="has head seq 8"):
        log.append([rec(11)])
    run_sql(db, "DELETE FROM audit_log")
    with pytest.raises(AuditChainBroken, match="has no records"):
        AuditLog(create_engine(f"sqlite:///{db}"), tmp_path).append([rec(11, "t2")])
    assert [p.kind for p in problems(log, "t2")] == ["missing"]


def test_a_log_from_before_the_chain_is_extended(tmp_path):
    db = tmp_path / "state.sqlite"
    run_sql(db, "CREATE TABLE audit_log (id INTEGER PRIMARY KEY, at DATETIME NOT NULL, tenant VARCHAR(100) NOT NULL, "
                "user_name VARCHAR(100) NOT NULL, role VARCHAR(50) NOT NULL, scope VARCHAR(50) NOT NULL, "
                "interface VARCHAR(20) NOT NULL, customer_id VARCHAR(40) NOT NULL, slice VARCHAR(40) NOT NULL, "
                "decision VARCHAR(10) NOT NULL, outcome VARCHAR(20) NOT NULL, latency_ms FLOAT NOT NULL, detail TEXT)",
            "INSERT INTO audit_log (at, tenant, user_name, role, scope, interface, customer_id, slice, decision, "
            "outcome, latency_ms) VALUES ('2026-01-01 00:00:00', 't1', 'u', 'admin', 'customers', 'cli', 'c_1', "
            "'crm.account', 'allowed', 'source', 1.0)")
    log = AuditLog(create_engine(f"sqlite:///{db}"), tmp_path)
    log.append([rec(1), rec(2)])
    (report,) = log.verify("t1")
    assert (report.intact, report.records, report.unchained) == (True, 2, 1)


CONCURRENT_APPENDER = """
import sys
from datetime import datetime
from pathlib import Path
from sqlalchemy import create_engine
from tools.access.audit import AuditLog, AuditRecord
db, home, who = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
log = AuditLog(create_engine(f"sqlite:///{db}"), home)
for batch in range(20):
    log.append([AuditRecord(at=datetime.now(), tenant="t1", user_name=who, role="admin", scope="customers",
                            interface="cli", customer_id="c_1", slice="crm.account", decision="allowed",
                            outcome="source", latency_ms=float(i)) for i in range(5)])
"""


def test_concurrent_processes_never_fork_the_chain(tmp_path):
    db = tmp_path / "state.sqlite"
    AuditLog(create_engine(f"sqlite:///{db}"), tmp_path)
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT_APPENDER, str(db), str(tmp_path), f"p{n}"],
                              stderr=subprocess.PIPE, text=True) for n in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in procs), [p.stderr.read() for p in procs if p.stderr]
    (report,) = AuditLog(create_engine(f"sqlite:///{db}"), tmp_path).verify("t1")
    assert (report.intact, report.records, report.head.seq, report.anchor.seq) == (True, 400, 400, 400)
    assert {r["user_name"] for r in rows(db)} == {"p0", "p1", "p2", "p3"}


# ------------------------------------------------------------------ PostgreSQL
def test_postgres_insert_only_role_and_concurrent_appenders(pg_url, tmp_path):
    owner = create_engine(pg_url)
    AuditLog(owner)  # the owner creates the table and its trigger
    role = f"audit_writer_{uuid.uuid4().hex[:8]}"
    with owner.begin() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN"))
        conn.execute(text(f"GRANT SELECT, INSERT ON audit_log TO {role}"))
        conn.execute(text(f"GRANT USAGE ON SEQUENCE audit_log_id_seq TO {role}"))
    writer = create_engine(make_url(pg_url).set(username=role))
    log = AuditLog(writer, tmp_path)

    def appender(n: int) -> None:
        for b in range(10):
            log.append([rec(b, user_name=f"w{n}"), rec(b, "t2", user_name=f"w{n}")])

    threads = [threading.Thread(target=appender, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reports = log.verify()
    assert [(r.tenant, r.intact, r.records, r.anchor.seq) for r in reports] == [("t1", True, 60, 60),
                                                                             ("t2", True, 60, 60)]
    refused = ["UPDATE audit_log SET decision = 'allowed'", "DELETE FROM audit_log WHERE seq = 1",
               "TRUNCATE audit_log", "DROP TABLE audit_log", "DROP TRIGGER audit_log_append_only ON audit_log"]
    for stmt in refused:
        with pytest.raises(DBAPIError, match="permission denied|must be owner"), writer.begin() as conn:
            conn.execute(text(stmt))
    with owner.begin() as conn:  # even without the trigger, the role may not delete
        conn.execute(text("DROP TRIGGER audit_log_append_only ON audit_log"))
    with pytest.raises(DBAPIError, match="permission denied"), writer.begin() as conn:
        conn.execute(text("DELETE FROM audit_log"))
    with owner.begin() as conn:  # the owner can: the chain and the anchor show it
        conn.execute(text("DELETE FROM audit_log WHERE tenant = 't1' AND seq IN (7, 8)"))
    assert [(p.seq, p.kind) for p in problems(log)] == [(7, "missing")]
    with pytest.raises(IntegrityError), owner.begin() as conn:  # and no fork: one record per (tenant, seq)
        conn.execute(text("INSERT INTO audit_log (seq, at, tenant, user_name, role, scope, interface, customer_id, "
                          "slice, decision, outcome, latency_ms) SELECT seq, at, tenant, user_name, role, scope, "
                          "interface, customer_id, slice, decision, outcome, latency_ms FROM audit_log "
                          "WHERE tenant = 't2' AND seq = 3"))
    writer.dispose()
    owner.dispose()


# ------------------------------------------------------------------ the command
def test_custctx_audit_verify_and_restart_chain(tmp_path):
    home = tmp_path / "home"
    custctx(home, "context", "acme.com", "--as", "support_agent:sam", check=True)
    ok = custctx(home, "audit", "verify", check=True)
    assert "tenant default: intact" in ok.stdout and "anchor seq" in ok.stdout
    report = json.loads(custctx(home, "audit", "verify", "--format", "json", check=True).stdout)
    (tenant,) = report["tenants"]
    assert report["intact"] and tenant["records"] == tenant["head"]["seq"] == tenant["anchor"]["seq"] > 10
    refused = custctx(home, "audit", "verify", "--as", "support_agent:sam")
    assert refused.returncode == 1 and "may not read the audit log" in refused.stderr

    db = home / "state.sqlite"
    run_sql(db, "DROP TRIGGER audit_log_no_update", "UPDATE audit_log SET decision = 'allowed' WHERE seq = 3")
    broken = custctx(home, "audit", "verify")
    assert broken.returncode == 5 and "tenant default: BROKEN — record 3 at " in broken.stdout

    run_sql(db, "DROP TABLE audit_log")
    stopped = custctx(home, "context", "acme.com")
    assert stopped.returncode == 1 and "Refusing to append" in stopped.stderr and "Traceback" not in stopped.stderr
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'audit_log'").fetchone() == (0,)
    assert custctx(home, "audit", "restart-chain", "--tenant", "default", "--reason", "drill").returncode == 0
    custctx(home, "context", "acme.com", check=True)
    after = custctx(home, "audit", "verify", "--tenant", "default", "--format", "json")
    (tenant_after,) = json.loads(after.stdout)["tenants"]
    assert after.returncode == 5 and tenant_after["first_problem"]["seq"] == 1
    assert tenant_after["first_problem"]["kind"] == "missing"
    assert tenant_after["head"]["seq"] > tenant["head"]["seq"] + 1


# ------------------------------------------------------------------ memory checksums
class WallClock:
    def __init__(self):
        self.now = datetime(2026, 11, 21, 9, 0, 0)

    def __call__(self):
        return self.now


def test_the_memory_key_is_private_and_stable(tmp_path):
    key = installation_key(tmp_path)
    assert len(key) == 32 and installation_key(tmp_path) == key
    assert (tmp_path / KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert installation_key(tmp_path / "other") != key


def test_an_edited_memory_snapshot_is_never_served(sqlite_ready, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CUSTCTX_HOME", str(tmp_path))  # the key file goes to this data home
    settings, wall = sqlite_ready.settings, WallClock()
    acme, globex = (sqlite_ready.index.resolve(d)[0] for d in ("acme.com", "globex.com"))
    path = tmp_path / "memory.sqlite"

    def read(memory: ContextMemory, who=acme, faults: str | None = None):
        s = settings.model_copy(update={"faults": faults})
        clock = ReadClock(as_of=sqlite_ready.clock.as_of, settings=s, now=wall)
        return assemble_context(ReadScope.build(s, clock, guard=SourceGuard(s.guard, FakeClock()), memory=memory),
                                who, ["billing.status"])

    with open_store(f"sqlite:///{path}") as store:
        memory = ContextMemory(store, "t1", settings.ttls, clock=wall)
        assert read(memory).get("billing.status").status == "past_due"
        assert read(memory).get("billing.status").provenance.served_from == "memory"
        assert (tmp_path / KEY_FILE).exists()
        acme_ns = ".".join(memory.namespace(acme.customer_id))
        edit = ("UPDATE store SET value = json_set(value, '$.slice.status', 'current') "
                "WHERE prefix = ? AND key = 'billing.status'")
        run_sql(path, edit, params=(acme_ns,))
        assert memory.get(acme.customer_id, "billing.status") is None and memory.rejected == 1
        assert "failed its checksum" in caplog.text
        again = read(memory).get("billing.status")  # read from the source again, never the edited copy
        assert (again.status, again.provenance.served_from) == ("past_due", "source")

        run_sql(path, edit, params=(acme_ns,))
        wall.now += timedelta(days=2)  # past the TTL, and billing is down: the edited copy is no fallback
        down = read(memory, faults="billing=down")
        assert down.get("billing.status") is None
        assert [(g.slice, g.kind) for g in down.gaps] == [("billing.status", "unavailable")]

        # a valid snapshot copied to another customer is not that customer's
        read(memory)  # a fresh, signed Acme snapshot
        run_sql(path, "INSERT OR REPLACE INTO store (prefix, key, value) SELECT ?, key, value FROM store "
                      "WHERE prefix = ? AND key = 'billing.status'",
                params=(".".join(memory.namespace(globex.customer_id)), acme_ns))
        assert memory.get(globex.customer_id, "billing.status") is None
        assert memory.get(acme.customer_id, "billing.status") is not None
