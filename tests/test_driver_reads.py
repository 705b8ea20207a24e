"""Point lookups straight through the DBAPI cursor (``tools.mapping.engine.fetch_all``), and
the guard's plain retry loop: the same rows and the same errors as SQLAlchemy's own path,
on SQLite and on a real PostgreSQL."""

from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    Table,
    Text,
    bindparam,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError

from tools.guard import SourceGuard, is_transient, misconfiguration
from tools.mapping.engine import fetch_all, prepared
from tools.settings import GuardSettings

ROWS = [(1, "acme", 12.5, None), (2, "globex", None, "2024-01-02"), (3, "initech", 0.0, "x")]


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request, tmp_path):
    url = (f"sqlite:///{tmp_path / 'reads.sqlite'}" if request.param == "sqlite"
           else request.getfixturevalue("pg_url"))
    eng = create_engine(url)
    with eng.begin() as conn:
        conn.execute(text("create table t (id integer primary key, name text, amount real, note text)"))
        for row in ROWS:
            conn.execute(text("insert into t values (:i, :n, :a, :o)"), dict(zip("inao", row, strict=True)))
    yield eng
    eng.dispose()


def _lookup(conn: Connection) -> tuple[str, object]:
    """A two-key lookup in the connection's own paramstyle (as ``prepared`` compiles it)."""
    if conn.dialect.paramstyle == "qmark":
        return "select id, name, amount, note from t where id in (?, ?) order by id", (1, 2)
    return "select id, name, amount, note from t where id in (%(k0)s, %(k1)s) order by id", {"k0": 1, "k1": 2}


def _no_result_machinery(*_args, **_kwargs):  # noqa: ANN202
    raise AssertionError("a lookup goes through the DBAPI cursor")


def test_the_cursor_path_returns_what_sqlalchemy_returns(engine, monkeypatch):
    with engine.connect() as conn:
        sql, params = _lookup(conn)
        expected = [tuple(r) for r in conn.exec_driver_sql(sql, params)]
        monkeypatch.setattr(Connection, "exec_driver_sql", _no_result_machinery)
        got = fetch_all(conn, sql, params)
        assert [tuple(r) for r in got] == expected == [r for r in ROWS if r[0] in (1, 2)]


def test_outside_a_transaction_it_begins_one_as_sqlalchemy_does(engine, monkeypatch):
    monkeypatch.setattr(Connection, "exec_driver_sql", _no_result_machinery)
    with engine.connect() as conn:
        assert not conn.in_transaction()
        sql, params = _lookup(conn)
        assert [r[0] for r in fetch_all(conn, sql, params)] == [1, 2]
        assert conn.in_transaction()  # ended (rolled back) with the connection, as an autobegun one is


def test_a_statement_listener_still_sees_every_lookup(engine):
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda _c, _cur, statement, *_a: seen.append(statement))
    with engine.connect() as conn:
        sql, params = _lookup(conn)
        for _ in range(3):
            assert [r[0] for r in fetch_all(conn, sql, params)] == [1, 2]
    assert seen == [sql] * 3


def test_a_refused_statement_is_sqlalchemys_error_and_a_misconfiguration(engine, monkeypatch):
    monkeypatch.setattr(Connection, "exec_driver_sql", _no_result_machinery)
    with engine.connect() as conn:
        with pytest.raises(DBAPIError) as caught:
            fetch_all(conn, "select nope from t", ())
        assert misconfiguration(caught.value) is not None and "nope" in str(caught.value.orig)
        assert not is_transient(caught.value)


def test_the_guard_reports_a_refused_lookup_once_without_retrying(engine, monkeypatch):
    monkeypatch.setattr(Connection, "exec_driver_sql", _no_result_machinery)

    def read() -> object:
        with engine.connect() as conn:
            return fetch_all(conn, "select nope from t", ())

    _, outcome, exc = SourceGuard(GuardSettings()).call("crm", "crm.account", read)
    assert (outcome.status, outcome.attempts, outcome.misconfigured) == ("unavailable", 1, True)
    assert isinstance(exc, DBAPIError)


def test_postgresql_statement_timeout_interrupts_a_cursor_path_lookup(pg_url):
    eng = create_engine(pg_url)
    try:
        with eng.connect() as conn:
            conn.exec_driver_sql("SET LOCAL statement_timeout = 50")
            with pytest.raises(OperationalError) as caught:
                fetch_all(conn, "select pg_sleep(5)", {})
            assert is_transient(caught.value) and misconfiguration(caught.value) is None
    finally:
        eng.dispose()


def test_a_call_that_succeeds_builds_no_retry_machine_and_a_failing_one_still_retries(monkeypatch):
    """The happy path is one call; tenacity's retries start only after a transient failure."""
    import tools.guard as guard_module

    built = []
    real = guard_module.Retrying

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        built.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(guard_module, "Retrying", counting)
    guard = SourceGuard(GuardSettings(backoff_initial_s=0.0, backoff_max_s=0.0, attempts=3))
    result, outcome, _ = guard.call("crm", "crm.account", lambda: 42)
    assert (result, outcome.status, outcome.attempts, built) == (42, "ok", 1, [])
    calls = []

    def flaky():  # noqa: ANN202
        calls.append(1)
        if len(calls) < 3:
            raise guard_module.TransientSourceError("down for a moment")
        return "up"

    result, outcome, _ = guard.call("crm", "crm.account", flaky)
    assert (result, outcome.status, outcome.attempts, len(calls), built) == ("up", "ok", 3, 3, [1])


def test_prepared_binds_what_sqlalchemy_binds(engine):
    """The compiled statement's parameters, as SQLAlchemy's own construct_params and the
    types' bind processors give them: required keys, a filter's literal, LIMIT, a DateTime."""
    t = Table("t", MetaData(), Column("id", Integer), Column("name", Text), Column("at", DateTime))
    stmt = (select(t.c.id).where(t.c.id.in_([bindparam("k0"), bindparam("k1")]), t.c.name != "zed",
                                 t.c.at <= bindparam("until", type_=DateTime))
            .order_by(t.c.id).limit(7))
    values = {"k0": 1, "k1": 2, "until": datetime(2024, 5, 6, 7, 8, 9)}
    with engine.connect() as conn:
        sql, bind = prepared(conn, ("test bind", id(stmt)), lambda: stmt)
        compiled = stmt.compile(dialect=conn.dialect)
        procs = compiled._bind_processors  # noqa: SLF001
        params = {k: procs[k](v) if k in procs and v is not None else v
                  for k, v in compiled.construct_params(values).items()}
        expected = (tuple(params[k] for k in compiled.positiontup) if compiled.positiontup is not None
                    else params)
        assert sql == compiled.string and bind(values) == expected
        assert bind({**values, "until": None}) != expected  # a value asked for is a value bound
