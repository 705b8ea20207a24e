"""The audit tables on a brand-new state database: several processes (and threads) opening the log at
the same moment all succeed, the schema is created once, and every one of them can append (issue 15:
two processes creating the audit tables at once made the second fail with "table already exists")."""

from __future__ import annotations

import multiprocessing
import threading
from datetime import datetime, timedelta

import pytest
from sqlalchemy import create_engine, func, select, text

from tools.access.audit import AuditLog, AuditRecord, audit_log_table

WORKERS = 6
T0 = datetime(2026, 1, 15, 12, 0, 0)


def _record(i: int) -> AuditRecord:
    return AuditRecord(at=T0 + timedelta(seconds=i), tenant="race", user_name=f"u{i}", role="admin",
                       scope="customers", interface="cli", customer_id="c_1", slice="billing.status",
                       decision="allowed", outcome="source", latency_ms=1.0)


def _open_and_append(url: str, i: int, barrier, errors) -> None:  # noqa: ANN001
    """One opener: its own engine (as another process has), released with the others at once."""
    engine = create_engine(url)
    try:
        barrier.wait(timeout=60)
        AuditLog(engine).append([_record(i)])
    except Exception as exc:  # reported to the test, which names it
        errors.append(f"{i}: {type(exc).__name__}: {exc}")
    finally:
        engine.dispose()


def _process_main(url: str, i: int, barrier, errors) -> None:  # noqa: ANN001
    local: list[str] = []
    _open_and_append(url, i, barrier, local)
    errors.extend(local)


def _schema(url: str) -> tuple[int, int, list[str]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(func.count()).select_from(audit_log_table)).scalar_one()
            seqs = conn.execute(select(func.count(func.distinct(audit_log_table.c.seq)))).scalar_one()
            triggers = [] if engine.dialect.name != "sqlite" else sorted(r[0] for r in conn.execute(text(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_log'")))
        return rows, seqs, triggers
    finally:
        engine.dispose()


def test_processes_creating_the_audit_tables_at_once_all_succeed(tmp_path):
    url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    ctx = multiprocessing.get_context("fork")
    with ctx.Manager() as manager:
        barrier, errors = manager.Barrier(WORKERS), manager.list()
        procs = [ctx.Process(target=_process_main, args=(url, i, barrier, errors)) for i in range(WORKERS)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
        assert [p.exitcode for p in procs] == [0] * WORKERS
        assert list(errors) == []
    assert _schema(url) == (WORKERS, WORKERS, ["audit_log_no_delete", "audit_log_no_update"])


def test_threads_creating_the_audit_tables_at_once_all_succeed(tmp_path):
    url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    barrier, errors = threading.Barrier(WORKERS), []
    threads = [threading.Thread(target=_open_and_append, args=(url, i, barrier, errors)) for i in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert _schema(url)[:2] == (WORKERS, WORKERS)


def test_openers_racing_on_a_new_postgres_database_all_succeed(pg_url):
    pytest.importorskip("psycopg")
    barrier, errors = threading.Barrier(WORKERS), []
    threads = [threading.Thread(target=_open_and_append, args=(pg_url, i, barrier, errors)) for i in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert _schema(pg_url)[:2] == (WORKERS, WORKERS)
