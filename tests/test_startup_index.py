"""Start-up (``agent.bootstrap.ready``) keeps the identity index in proportion to the change.

Every entry point (CLI, HTTP, MCP, LangGraph server, worker) gets ready through ``ready()``:
it builds the index only when there is none (reporting its progress as the CLI shows it),
regroups the touched customers after an identity edit instead of building again, reads no
source row when nothing changed, and keeps the last good index while a source is down;
processes starting together update the index once (SQLite and PostgreSQL).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from agent.bootstrap import ready
from tools import identity_build
from tools.embedded.generate import seed
from tools.identity import IdentityIndex, build_index
from tools.refresh import index as refresh_index
from tools.refresh.index import index_rows
from tools.settings import SourceConfig
from tools.sources.registry import dispose_engines

from .conftest import settings_for, statements_on
from .test_identity_incremental import apply_edit

NEW_DOMAIN = "renamed-at-startup.example"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("pristine") / "warehouse.sqlite"
    seed(f"sqlite:///{path}", customers=100)
    yield path
    dispose_engines()


@pytest.fixture
def world(pristine, tmp_path) -> Iterator[tuple[str, Path]]:
    shutil.copy(pristine, tmp_path / "warehouse.sqlite")
    (tmp_path / "state").mkdir()
    yield f"sqlite:///{tmp_path / 'warehouse.sqlite'}", tmp_path / "state"
    dispose_engines()


@pytest.fixture
def builds(monkeypatch) -> list[int]:
    """How many whole builds start-up ran (by the incremental path or a full ``ensure_index``)."""
    done: list[int] = []
    real = identity_build.build_index

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        done.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(refresh_index, "build_index", counted)
    monkeypatch.setattr(identity_build, "build_index", counted)
    return done


def _new_domain_on_one_active_account(url: str) -> int:
    """1% of the ~100 accounts: one active CRM account gets a new domain, as a sync lands it."""
    eng = create_engine(url)
    try:
        with eng.begin() as conn:
            one = conn.execute(text("SELECT id FROM company WHERE NOT is_deleted AND "
                                    "property_customer_status = 'active' ORDER BY id LIMIT 1")).scalar_one()
            newest = conn.execute(text("SELECT max(_fivetran_synced) FROM company")).scalar()
            conn.execute(text("UPDATE company SET property_domain = :d, _fivetran_synced = "
                              "datetime(:t, '+1 minute') WHERE id = :i"), {"d": NEW_DOMAIN, "t": newest, "i": one})
            return int(one)
    finally:
        eng.dispose()


def test_the_first_start_builds_the_index_once_and_reports_its_progress(world, builds):
    url, state = world
    heard: list[tuple[str, int, int]] = []
    r = ready(settings_for(url, state), progress=lambda *p: heard.append(p))
    assert builds == [1]
    assert heard and {p[0] for p in heard} == {"identity"} and heard[-1][1] == heard[-1][2] > 0
    assert r.index.resolve("acme.com")[0]  # the story customer resolves


def test_a_start_after_a_one_percent_identity_edit_regroups_instead_of_building(world, builds, tmp_path):
    url, state = world
    ready(settings_for(url, state))
    account = _new_domain_on_one_active_account(url)
    r = ready(settings_for(url, state))
    assert builds == [1]  # the first start only: the second regrouped the touched customers
    found = r.index.resolve(NEW_DOMAIN)[0]
    assert found is not None and str(account) in found.anchors.get("crm", ())
    fresh = settings_for(url, tmp_path / "fresh")
    (tmp_path / "fresh").mkdir()
    build_index(fresh)
    assert index_rows(r.settings) == index_rows(fresh)  # what a build from scratch gives
    assert IdentityIndex.for_settings(fresh).resolve(NEW_DOMAIN)[0] == found


def test_a_start_with_nothing_changed_reads_no_source_row(world, builds):
    url, state = world
    ready(settings_for(url, state))
    with statements_on(url) as seen:
        ready(settings_for(url, state))
    assert builds == [1]
    assert seen and all("count(*)" in q for q in seen)  # each identity table's watermark check, nothing more


def test_a_start_with_a_source_down_keeps_the_last_good_index(world, builds):
    url, state = world
    before = index_rows(ready(settings_for(url, state)).settings)
    _new_domain_on_one_active_account(url)
    s = settings_for(url, state)
    refused = SourceConfig(url="postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")  # nothing listens
    r = ready(s.model_copy(update={"sources": {**s.sources, "crm": refused}}))
    assert builds == [1]
    assert index_rows(r.settings) == before
    assert r.index.resolve("acme.com")[0]


def test_two_starts_at_once_update_the_index_once(world, builds, monkeypatch):
    """API workers and the worker start together: the second to reach the write finds the index
    brought up to date by the first (it used to fail on the unique keys the first had written)."""
    url, state = world
    s = ready(settings_for(url, state)).settings
    _new_domain_on_one_active_account(url)
    real, started, other = refresh_index._left_behind, [], []

    def meanwhile(*args):  # noqa: ANN002, ANN202
        found = real(*args)
        if not started:  # the other process does the whole update while this one is between read and write
            started.append(1)
            other.append(refresh_index.maintain_index(s))
        return found

    monkeypatch.setattr(refresh_index, "_left_behind", meanwhile)
    update = refresh_index.maintain_index(s)
    assert other[0].mode == "incremental" and other[0].customers == 1, other
    assert update.mode == "unchanged" and builds == [1]
    assert ready(s).index.resolve(NEW_DOMAIN)[0] is not None


def test_starts_on_postgresql_regroup_and_update_the_index_once(pg_server, tmp_path, builds, monkeypatch):
    url, state = pg_server.create_database(), pg_server.create_database()
    seed(url, customers=3)
    s = ready(settings_for(url, tmp_path, state_url=state)).settings
    apply_edit(url, ("company_domain", 0, "new-a.example"), 0)
    real, started, other = refresh_index._left_behind, [], []

    def meanwhile(*args):  # noqa: ANN002, ANN202
        if not started:  # another start does the whole update (under the advisory lock) meanwhile
            started.append(1)
            other.append(ready(s))
        return real(*args)

    monkeypatch.setattr(refresh_index, "_left_behind", meanwhile)
    r = ready(s)
    assert builds == [1] and r.index.resolve("new-a.example")[0] is not None
    fresh = settings_for(url, tmp_path / "fresh", state_url=pg_server.create_database())
    build_index(fresh)
    assert index_rows(s) == index_rows(fresh)
