"""Compiled statements run through the driver: a point lookup pays for the query only.

:func:`prepared` / :func:`compiled_for` compile a statement once and give its SQL text and a
function binding ``{name: value}`` to the driver's parameters; :func:`fetch_all` runs it
straight through the DBAPI cursor (SQLAlchemy's error handling kept). Used by
``Entity.lookup_rows`` and the readers' own aggregate statements.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.engine import Connection

__all__ = ["Bind", "compiled_for", "fetch_all", "prepared"]

Bind = Callable[[dict[str, Any]], Any]
#: Compiled statements, by shape (which includes the dialect): a few dozen in all.
_PREPARED: dict[tuple, tuple[str, Bind]] = {}


def prepared(conn: Connection, shape: tuple, build: Callable[[], Any]) -> tuple[str, Bind]:
    """The SQL text of ``build()`` compiled once per ``shape`` and the connection's dialect,
    and a function turning ``{bind name: value}`` into the driver's parameters (the bound
    types' own conversions applied, the statement's own parameters such as LIMIT kept).

    Run with :func:`fetch_all` (``fetch_all(conn, sql, bind(values))``): building and compiling a statement
    costs far more than running a point lookup, so hot reads do it once."""
    key = (conn.dialect.name, *shape)
    hit = _PREPARED.get(key)
    if hit is None:
        hit = _PREPARED[key] = compiled_for(conn, build())
    return hit


def compiled_for(conn: Connection, stmt: Any) -> tuple[str, Bind]:
    """``stmt`` compiled for the connection's dialect: its SQL text and its :data:`Bind`."""
    compiled = stmt.compile(dialect=conn.dialect)
    processors = dict(compiled._bind_processors)  # noqa: SLF001 - the types' own parameter conversions
    positions = compiled.positiontup
    if compiled.escaped_bind_names or any(bp.callable is not None for bp in compiled.binds.values()):
        def bind(values: dict[str, Any]) -> Any:  # names SQLAlchemy rewrites, values it computes: its own way
            params = compiled.construct_params(values)
            params = {k: (processors[k](v) if k in processors and v is not None else v) for k, v in params.items()}
            return tuple(params[k] for k in positions) if positions is not None else params
    else:
        # the statement's own values (LIMIT, a filter's literal), as construct_params fills them in
        fixed = {name: bp.effective_value for bp, name in compiled.bind_names.items() if not bp.required}
        order = list(positions) if positions is not None else list(compiled.bind_names.values())
        steps = [(name, processors.get(name)) for name in order]

        def bind(values: dict[str, Any]) -> Any:
            out = []
            for name, proc in steps:
                v = values[name] if name in values else fixed[name]
                out.append(v if proc is None or v is None else proc(v))
            return tuple(out) if positions is not None else dict(zip(order, out, strict=True))

    return compiled.string, bind


def fetch_all(conn: Connection, sql: str, params: Any) -> Sequence[Sequence[Any]]:
    """The rows of driver-level ``sql`` (from :func:`prepared`) run on ``conn``.

    With no statement listener on the connection, straight through the DBAPI cursor, in
    the connection's transaction (begun as SQLAlchemy begins it, if none is): SQLAlchemy's
    per-statement result set-up (cursor metadata, row processors) costs more than a point
    lookup itself. A driver error is handed to SQLAlchemy's own handling (the same wrapped
    exception, disconnect detection) as :meth:`Connection.exec_driver_sql` raises it.
    Otherwise (someone counting statements, a transaction that failed) through that method."""
    if conn._transaction is None and not conn.closed:  # noqa: SLF001 - as exec_driver_sql begins one
        conn._autobegin()  # noqa: SLF001
    if not conn.in_transaction() or conn._has_events or conn.engine._has_events:  # noqa: SLF001
        return conn.exec_driver_sql(sql, params).all()
    cursor = None
    try:
        dbapi = conn.connection.dbapi_connection
        if dbapi is None:  # invalidated: let SQLAlchemy say so
            return conn.exec_driver_sql(sql, params).all()
        cursor = dbapi.cursor()
        cursor.execute(sql, params)
        rows: Sequence[Sequence[Any]] = cursor.fetchall()
        cursor.close()
        return rows
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy wraps (or re-raises) it
        conn._handle_dbapi_exception(exc, sql, params, cursor, None)  # noqa: SLF001
        raise  # not reached: the handler always raises
