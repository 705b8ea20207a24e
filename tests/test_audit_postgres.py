"""PostgreSQL at the driver: the audit append (``tools.access.audit_postgres``) writes the records,
hashes and chain the SQLAlchemy path writes, serialises with it across processes' logs, raises a
failed commit (nothing acknowledged unwritten) and connects again; memory's psycopg read
(``tools.memory._postgres_rows``) answers exactly what the store's API answers."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

import tools.memory as memory_module
from tools.access.audit import AuditLog, audit_row
from tools.access.audit_postgres import PostgresAppender
from tools.memory import ContextMemory, open_store

T0 = datetime(2026, 1, 15, 12, 0, 0)


def _rows(n: int, start: int = 0, tenant: str = "t1") -> list[dict[str, Any]]:
    return [audit_row((T0 + timedelta(milliseconds=i)).replace(tzinfo=UTC), tenant, "sam", "support_agent",
                      "customers", "http", f"c_{i}", "crm.account", "allowed", "memory", 0.25 * i,
                      None if i % 2 else f"read {i}") for i in range(start, start + n)]


def _stored(log: AuditLog, tenant: str) -> list[tuple[Any, ...]]:
    return [(r.seq, r.at, r.customer_id, r.slice, r.latency_ms, r.detail, r.hash)
            for r in sorted(log.query(tenant, limit=None), key=lambda r: r.seq or 0)]


def test_the_driver_path_writes_what_the_sqlalchemy_path_writes(pg_server, tmp_path):
    a, b = (AuditLog(create_engine(pg_server.create_database()), tmp_path / d) for d in ("a", "b"))
    assert isinstance(a._driver, PostgresAppender)
    b._driver = None  # the SQLAlchemy path
    for log in (a, b):
        log.append_rows(_rows(3))
        log.append_rows(_rows(2, 3) + _rows(1, 0, tenant="t2"))  # a mixed batch: both tenants' locks
    assert _stored(a, "t1") == _stored(b, "t1") and [r[0] for r in _stored(a, "t1")] == [1, 2, 3, 4, 5]
    assert _stored(a, "t2") == _stored(b, "t2") and len(_stored(a, "t2")) == 1
    assert all(rep.intact for rep in a.verify()) and a.anchor is not None and a.anchor.heads()["t1"].seq == 5


def test_driver_and_sqlalchemy_appenders_of_one_database_keep_one_chain(pg_url, tmp_path):
    """Two logs on one database (two processes), one at the driver and one through SQLAlchemy,
    appending from many threads at once: the advisory lock serialises them, no fork, no loss."""
    driver, other = AuditLog(create_engine(pg_url)), AuditLog(create_engine(pg_url))
    other._driver = None
    errors: list[BaseException] = []

    def work(log: AuditLog, k: int) -> None:
        try:
            for j in range(10):
                log.append_rows(_rows(2, (k * 10 + j) * 2))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(log, k)) for k, log in enumerate((driver, other) * 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    stored = _stored(driver, "t1")
    assert [r[0] for r in stored] == list(range(1, 121)) and len({r[2] for r in stored}) == 120
    assert driver.verify("t1")[0].intact


def test_a_failed_commit_raises_and_the_next_append_connects_again(pg_url):
    log = AuditLog(create_engine(pg_url))
    log.append_rows(_rows(1))
    appender = log._driver
    assert isinstance(appender, PostgresAppender) and appender._con is not None
    pid = appender._con.info.backend_pid
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:  # the server ends the appender's session
        conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    with pytest.raises(DBAPIError):
        log.append_rows(_rows(1, 1))  # never acknowledged as written
    log.append_rows(_rows(1, 2))
    assert [(r[0], r[2]) for r in _stored(log, "t1")] == [(1, "c_0"), (2, "c_2")]
    assert log.verify("t1")[0].intact
    admin.dispose()


def test_memory_reads_postgres_at_the_driver_and_answers_as_the_store_does(sqlite_ready, pg_url, monkeypatch):
    acme, globex = (sqlite_ready.index.resolve(d)[0] for d in ("acme.com", "globex.com"))
    from tools.context.assembly import assemble_context
    from tools.context.scope import ReadScope

    with open_store(pg_url) as store:
        mem = ContextMemory(store, "t1", sqlite_ready.settings.ttls, key=b"k" * 32)
        for who in (acme, globex):
            assemble_context(ReadScope.build(sqlite_ready.settings, sqlite_ready.clock, memory=mem), who)
        other = ContextMemory(store, "t2", mem.ttls, key=mem.key)
        other.put(acme.customer_id, mem.get(globex.customer_id, "crm.account").slice)  # another tenant's
        names = ["crm.account", "billing.status", "crm.contacts", "nope.x"]
        taken = []
        real = memory_module._postgres_rows

        def spy(*a: Any) -> Any:
            taken.append(got := real(*a))
            return got

        monkeypatch.setattr(memory_module, "_postgres_rows", spy)
        direct = mem.get_many(acme.customer_id, names)
        assert taken and taken[0] is not None  # the driver answered
        monkeypatch.setattr(memory_module, "_postgres_rows", lambda *a: None)
        generic = ContextMemory(store, "t1", mem.ttls, key=mem.key).get_many(acme.customer_id, names)
        assert set(direct) == set(generic) == {"crm.account", "billing.status", "crm.contacts"}
        for n in direct:
            assert direct[n].slice == generic[n].slice and direct[n].fresh == generic[n].fresh
        assert direct["crm.account"].slice.company_name == "Acme Corp"
        monkeypatch.setattr(memory_module, "_postgres_rows", real)
        with store.conn.cursor() as cur:  # a snapshot changed in the table: refused on this path too
            cur.execute("UPDATE store SET value = jsonb_set(value, '{slice,company_name}', '\"Evil\"') "
                        "WHERE prefix = %s AND key = 'crm.account'", (f"customers.t1.{acme.customer_id}",))
        assert "crm.account" not in mem.get_many(acme.customer_id, names) and mem.rejected == 1
