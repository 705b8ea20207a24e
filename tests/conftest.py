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


# --------------------------------------------------------------------------
# Fixture warehouses and settings for the product's own tests.
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402

import pytest  # noqa: E402
from sqlalchemy import event  # noqa: E402

from agent.bootstrap import Ready, ready  # noqa: E402
from tools.embedded.generate import AS_OF, seed  # noqa: E402
from tools.settings import EMBEDDED_SOURCES, Settings, SourceConfig  # noqa: E402
from tools.sources.registry import dispose_engines, engine_for  # noqa: E402

TEST_BACKGROUND_CUSTOMERS = 40


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """Settings come from each test, never from the developer's shell."""
    for key in list(os.environ):
        if key.startswith("CUSTCTX_") or key in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
            monkeypatch.delenv(key)


@contextmanager
def statements_on(url: str) -> Iterator[list[str]]:
    """Every SQL statement sent to the database at ``url`` while the block runs."""
    seen: list[str] = []

    def count(conn, cursor, statement, *args):  # noqa: ANN001
        seen.append(statement)

    eng = engine_for(url)
    event.listen(eng, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(eng, "before_cursor_execute", count)


def settings_for(url: str, state_dir, **overrides) -> Settings:
    """Settings with every source on ``url`` and the clock pinned to the fixtures' as-of."""
    values = dict(
        home=state_dir, embedded=False, as_of=AS_OF,
        state_url=f"sqlite:///{state_dir}/state.sqlite",
        sources={s: SourceConfig(url=url) for s in EMBEDDED_SOURCES},
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def sqlite_warehouse(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("warehouse") / "warehouse.sqlite"
    url = f"sqlite:///{path}"
    seed(url, customers=TEST_BACKGROUND_CUSTOMERS)
    return url


@pytest.fixture(scope="session")
def postgres_warehouse(pg_server) -> str:
    url = pg_server.create_database("story_warehouse")
    seed(url, customers=TEST_BACKGROUND_CUSTOMERS)
    return url


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def backend(request, tmp_path_factory) -> Ready:
    """A ready runtime over the story warehouse, on SQLite and on a real PostgreSQL."""
    url = request.getfixturevalue(f"{request.param}_warehouse")
    r = ready(settings_for(url, tmp_path_factory.mktemp(f"state-{request.param}")))
    yield r
    dispose_engines()


@pytest.fixture(scope="session")
def sqlite_ready(sqlite_warehouse, tmp_path_factory) -> Ready:
    return ready(settings_for(sqlite_warehouse, tmp_path_factory.mktemp("state-sqlite-only")))
