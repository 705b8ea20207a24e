"""The benchmark's warehouse and settings: seeded once per size, an empty state every run.

On SQLite (the default) both live under ``--out``: ``warehouse.sqlite`` and ``state/``. With
``--url`` (a PostgreSQL server the benchmark may create databases on) it makes two databases of
its own there — ``custctx_bench_warehouse`` (the sources; kept while its sizes match) and
``custctx_bench_state`` (long-term memory, checkpointer, identity index and audit log; dropped
and created again every run) — and touches no other.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from evals.bench.common import Progress
from tools.embedded.common import AS_OF, GENERATOR_VERSION
from tools.embedded.large import LargeCustomer
from tools.settings import EMBEDDED_SOURCES, Settings, SourceConfig
from tools.sources.registry import dispose_engines, fixture_meta

PG_WAREHOUSE = "custctx_bench_warehouse"
PG_STATE = "custctx_bench_state"


def bench_urls(out_dir: Path, url: str | None = None) -> tuple[str, str]:
    """(warehouse URL, state URL) of a run: SQLite files under ``out_dir``, or the benchmark's two
    databases on the PostgreSQL server of ``url``."""
    if url is None:
        return f"sqlite:///{out_dir / 'warehouse.sqlite'}", f"sqlite:///{out_dir / 'state' / 'state.sqlite'}"
    try:
        u = make_url(url)
    except ArgumentError:
        raise ValueError(f"--url {url[:80]!r} is not a database URL: give postgresql+psycopg://user@host:port/db"
                         ) from None
    if u.get_backend_name() != "postgresql":
        raise ValueError(f"--url must be a PostgreSQL URL (postgresql+psycopg://user@host:port/db), not "
                         f"{u.get_backend_name()}")
    u = u.set(drivername="postgresql+psycopg")
    return (u.set(database=PG_WAREHOUSE).render_as_string(hide_password=False),
            u.set(database=PG_STATE).render_as_string(hide_password=False))


def bench_settings(out_dir: Path, url: str | None = None) -> Settings:
    warehouse, state = bench_urls(out_dir, url)
    return Settings(home=out_dir / "state", embedded=False, as_of=AS_OF, tenant="bench", state_url=state,
                    sources={s: SourceConfig(url=warehouse) for s in EMBEDDED_SOURCES})


def bench_env(out_dir: Path, url: str | None = None) -> dict[str, str]:
    """The ``CUSTCTX_*`` variables under which a ``custctx`` process reads as ``bench_settings``."""
    warehouse, state = bench_urls(out_dir, url)
    return {"CUSTCTX_HOME": str(out_dir / "state"), "CUSTCTX_EMBEDDED": "false", "CUSTCTX_AS_OF": AS_OF.isoformat(),
            "CUSTCTX_TENANT": "bench", "CUSTCTX_STATE_URL": state,
            **{f"CUSTCTX_SOURCES__{s.upper()}__URL": warehouse for s in EMBEDDED_SOURCES}}


def _postgres_databases(url: str) -> None:
    """The warehouse database created if missing, the state database dropped and created anew."""
    admin = create_engine(make_url(url).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            if conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": PG_WAREHOUSE}).first() is None:
                conn.execute(text(f'CREATE DATABASE "{PG_WAREHOUSE}"'))
            conn.execute(text(f'DROP DATABASE IF EXISTS "{PG_STATE}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{PG_STATE}"'))
    finally:
        admin.dispose()


def prepare(out_dir: Path, customers: int, progress: Progress | None,
            large: LargeCustomer | None = None, url: str | None = None) -> tuple[Settings, float | None]:
    """The benchmark's warehouse (seeded unless one of these sizes is there) and an empty state."""
    from tools.embedded.generate import seed

    out_dir.mkdir(parents=True, exist_ok=True)
    warehouse, _ = bench_urls(out_dir, url)
    dispose_engines()
    if url is not None:
        _postgres_databases(url)
    seconds = None
    exists = url is not None or (out_dir / "warehouse.sqlite").exists()
    meta = fixture_meta(warehouse) if exists else {}
    wanted = (str(customers), GENERATOR_VERSION, large.key() if large else None)
    if (meta.get("background_customers"), meta.get("generator_version"), meta.get("large_customer")) != wanted:
        seconds = seed(warehouse, customers=customers, progress=progress, large=large).seconds
    dispose_engines()
    shutil.rmtree(out_dir / "state", ignore_errors=True)
    return bench_settings(out_dir, url), seconds
