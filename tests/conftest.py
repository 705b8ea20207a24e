import os

import pytest

from .postgres import PostgresBinariesNotFound, PostgresServer, find_pg_bindir


@pytest.fixture(scope="session")
def pg_server():
    """A throw-away PostgreSQL server shared by the whole test session."""
    try:
        bindir, missing = find_pg_bindir(), None
    except PostgresBinariesNotFound as exc:
        bindir, missing = None, str(exc)
    if bindir is None:
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{missing} (CI is set: this is a failure, not a skip)", pytrace=False)
        pytest.skip("PostgreSQL server binaries not found; install the Debian 'postgresql' package")
    server = PostgresServer(bindir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server):
    """SQLAlchemy URL of a fresh, empty database created for this test."""
    return pg_server.create_database()
