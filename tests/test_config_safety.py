"""Never another configuration's data: a changed URL or mapping never serves the old
snapshots, a typo'd SQLite URL creates no file and says so, a mapping error is read once
(never retried as if transient) and reported as a misconfiguration, and the embedded demo
customers are not mixed into a real warehouse unless asked for.

Real SQLite files (and a real PostgreSQL for the error classes), the real CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.exc import DBAPIError

from agent.bootstrap import ready
from tools.context.assembly import assemble_context
from tools.context.scope import ReadScope
from tools.guard import SourceGuard, misconfiguration
from tools.mapping.loader import load_mapping
from tools.memory import ContextMemory
from tools.settings import GuardSettings, Settings, SourceConfig
from tools.sources.registry import config_fingerprint, dispose_engines, engine_for

from .test_mappings_check import AS_OF, cli, edit, store_env, write_store


@pytest.fixture
def shop(tmp_path, monkeypatch):
    store = write_store(tmp_path)
    for k, v in store_env(tmp_path, store).items():
        monkeypatch.setenv(k, v)
    load_mapping.cache_clear()
    yield tmp_path, store
    load_mapping.cache_clear()
    dispose_engines()


def context(ref: str) -> dict:
    code, out = cli("context", ref, "-f", "json")
    assert code == 0, out
    return json.loads(out)


def crm_gaps(view: dict) -> list[dict]:
    return [g for g in view["gaps"] if g["source"] == "crm"]


# ------------------------------------------------------------------ URL and mapping changes
def test_a_changed_url_or_mapping_never_serves_the_old_snapshots(shop, monkeypatch):
    folder, store = shop
    first = context("acme.test")
    assert first["provenance"]["crm.account"]["served_from"] == "source"
    again = context("acme.test")  # within the TTL: memory answers
    assert again["provenance"]["crm.account"]["served_from"] == "memory"

    other = write_store(folder / "other", firm_name="Acme Anvils (new CRM)")
    monkeypatch.setenv("CUSTCTX_SOURCES__CRM__URL", other["crm_url"])
    view = context("acme.test")
    assert view["provenance"]["crm.account"]["served_from"] == "source"
    assert view["slices"]["crm.account"]["company_name"] == "Acme Anvils (new CRM)"

    # the same URL, its mapping changed: a miss as well
    edit(store["crm_mapping"], "industry: sector", "industry: {expr: \"upper(sector)\"}")
    view = context("acme.test")
    assert view["provenance"]["crm.account"]["served_from"] == "source"
    assert view["slices"]["crm.account"]["industry"] == "MANUFACTURING"
    assert context("acme.test")["provenance"]["crm.account"]["served_from"] == "memory"


def test_a_snapshot_of_another_configuration_is_a_miss_not_stale(tmp_path):
    from langgraph.store.memory import InMemoryStore

    store = write_store(tmp_path)
    other = write_store(tmp_path / "other")
    base = dict(home=tmp_path / "home", as_of=AS_OF, state_url=f"sqlite:///{tmp_path / 'state.sqlite'}")
    a = Settings(**base, sources={"crm": SourceConfig(url=store["crm_url"], mapping=store["crm_mapping"])})
    b = Settings(**base, sources={"crm": SourceConfig(url=other["crm_url"], mapping=store["crm_mapping"])})
    assert config_fingerprint(a, "crm") != config_fingerprint(b, "crm")
    r = ready(a)
    acme, _ = r.index.resolve("acme.test")
    shared = InMemoryStore()
    mem_a = ContextMemory.of(shared, a)
    assemble_context(ReadScope.build(a, r.clock, memory=mem_a), acme, ["crm.account"])
    assert mem_a.get(acme.customer_id, "crm.account") is not None
    mem_b = ContextMemory.of(shared, b)
    assert mem_b.get(acme.customer_id, "crm.account") is None and mem_b.other_config == 1
    # a source that fails under the new configuration gets a gap, not the old one's snapshot
    down = b.model_copy(update={"faults": "crm=down"})
    c = assemble_context(ReadScope.build(down, r.clock, memory=ContextMemory.of(shared, down),
                                         guard=SourceGuard(GuardSettings(attempts=1))), acme, ["crm.account"])
    assert "crm.account" not in c.slices and [g.kind for g in c.gaps] == ["unavailable"]
    dispose_engines()


# ------------------------------------------------------------------ a typo'd URL
def test_a_typoed_sqlite_url_creates_no_file_and_is_a_clear_gap(shop, monkeypatch):
    folder, store = shop
    assert context("acme.test")["slices"]["crm.account"]["company_name"] == "Acme Anvils"  # memory now holds it
    typo = folder / "crm2.sqlite"
    monkeypatch.setenv("CUSTCTX_SOURCES__CRM__URL", f"sqlite:///{typo}")
    view = context("acme.test")
    assert not typo.exists()
    assert "crm.account" not in view["provenance"] and "crm.account" not in view["slices"]
    gaps = crm_gaps(view)
    assert gaps and all(g["kind"] == "unavailable" and f"names the SQLite file {typo}, which does not exist"
                        in g["message"] for g in gaps)
    assert view["slices"]["billing.status"]  # the other sources still answer

    code, out = cli("sources", "-f", "json")
    crm = {r["source"]: r for r in json.loads(out)}["crm"]
    assert code == 0 and crm["status"] == "misconfigured"
    assert crm["detail"].startswith(f"CUSTCTX_SOURCES__CRM__URL names the SQLite file {typo}")
    code, out = cli("mappings", "check", "-s", "crm")
    assert code == 1 and f"CUSTCTX_SOURCES__CRM__URL names the SQLite file {typo}" in out
    assert not typo.exists()


# ------------------------------------------------------------------ a bad column
def test_a_bad_column_is_read_once_and_reported_as_misconfigured(shop):
    folder, store = shop
    edit(store["crm_mapping"], "industry: sector", "industry: sectr")
    settings = Settings()
    r = ready(settings)
    acme, _ = r.index.resolve("acme.test")  # identity reads no industry: it still resolves
    guard = SourceGuard(settings.guard)
    executed: list[str] = []
    eng = engine_for(store["crm_url"])
    count = lambda *args: executed.append(args[2])  # noqa: E731
    event.listen(eng, "before_cursor_execute", count)
    try:
        for _ in range(4):
            c = assemble_context(ReadScope.build(settings, r.clock, guard=guard), acme, ["crm.account"])
    finally:
        event.remove(eng, "before_cursor_execute", count)
    assert len(executed) == 4  # one statement per read: never retried
    (gap,) = c.gaps
    assert gap.kind == "unavailable" and "\n" not in gap.message
    assert gap.message == "crm source failed after 1 attempt(s): misconfigured: no such column: t.sectr"
    assert guard.breaker("crm").state == "closed"  # the database answered every time

    view = context("acme.test")
    assert [g["message"] for g in crm_gaps(view) if g["slice"] == "crm.account"] == [gap.message]
    code, out = cli("sources", "-f", "json")
    crm = {x["source"]: x for x in json.loads(out)}["crm"]
    assert crm["status"] == "misconfigured" and crm["detail"] == (
        f'{store["crm_mapping"]}: entities.account.fields.industry: column "sectr" not in table firms '
        "(did you mean sector?)")


def test_sql_errors_of_a_configuration_are_told_from_transient_ones(tmp_path):
    eng = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE t (a INTEGER)"))

    def error(sql: str) -> DBAPIError:
        with eng.connect() as conn, pytest.raises(DBAPIError) as caught:
            conn.execute(text(sql))
        return caught.value

    assert misconfiguration(error("SELECT nme FROM t")) == "no such column: nme"
    assert misconfiguration(error("SELECT a FROM nothere")) == "no such table: nothere"
    assert misconfiguration(error("SELEC a FROM t")) == 'near "SELEC": syntax error'
    assert misconfiguration(error("SELECT nosuchfn(a) FROM t")) == "no such function: nosuchfn"
    from sqlalchemy.exc import OperationalError
    assert misconfiguration(OperationalError("SELECT 1", {}, Exception("database is locked"))) is None
    eng.dispose()


def test_postgresql_refusals_are_misconfigurations_and_an_unreachable_server_is_not(pg_url):
    eng = create_engine(pg_url)
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE t (a INTEGER)"))

    def error(url: str, sql: str) -> DBAPIError:
        e = create_engine(url)
        try:
            with pytest.raises(DBAPIError) as caught, e.connect() as conn:
                conn.execute(text(sql))
            return caught.value
        finally:
            e.dispose()

    assert 'column "nme" does not exist' in (misconfiguration(error(pg_url, "SELECT nme FROM t")) or "")
    assert 'relation "nothere" does not exist' in (misconfiguration(error(pg_url, "SELECT a FROM nothere")) or "")
    missing_db = pg_url.rsplit("/", 1)[0] + "/no_such_database"
    assert "does not exist" in (misconfiguration(error(missing_db, "SELECT 1")) or "")
    assert misconfiguration(error("postgresql+psycopg://nobody@127.0.0.1:1/none", "SELECT 1")) is None
    eng.dispose()


# ------------------------------------------------------------------ the embedded fixtures
def test_embedded_fixtures_are_not_mixed_into_a_real_warehouse_unless_asked(shop, sqlite_warehouse, monkeypatch):
    monkeypatch.setenv("CUSTCTX_WAREHOUSE_URL", sqlite_warehouse)
    monkeypatch.delenv("CUSTCTX_SOURCES__BILLING__URL")
    monkeypatch.delenv("CUSTCTX_SOURCES__BILLING__MAPPING")
    code, out = cli("sources", "-f", "json")
    status = {r["source"]: r["status"] for r in json.loads(out)}
    assert status["crm"] == "ok" and {s for s, v in status.items() if v != "not_connected"} == {"crm"}
    code, _ = cli("context", "acme.com")  # a story customer of the embedded fixtures
    assert code == 1

    monkeypatch.setenv("CUSTCTX_EMBEDDED", "true")  # mixed in, explicitly
    code, out = cli("sources", "-f", "json")
    status = {r["source"]: r["status"] for r in json.loads(out)}
    assert status["crm"] == "ok" and status["billing"] == "ok"
    view = context("acme.com")
    assert view["billing"]["status"] == "past_due"


def test_embedded_auto_is_on_only_without_an_own_url(tmp_path):
    own = {"crm": SourceConfig(url=f"sqlite:///{tmp_path / 'crm.sqlite'}")}
    Path(tmp_path / "crm.sqlite").touch()
    assert Settings(home=tmp_path).source("billing").url == f"sqlite:///{tmp_path / 'warehouse.sqlite'}"
    assert Settings(home=tmp_path, sources=own).source("billing").url is None
    assert Settings(home=tmp_path, sources=own, embedded=True).source("billing").url is not None
    disabled = {"crm": SourceConfig(url=own["crm"].url, enabled=False)}
    assert Settings(home=tmp_path, sources=disabled).embedded_on


def test_identity_keys_the_database_refuses_are_said_not_passed_over(shop, caplog):
    folder, store = shop
    edit(store["crm_mapping"], "name: {column: NAME,", "name: {column: nme,")  # an identity key's column
    with caplog.at_level("WARNING", logger="tools.identity"):
        ready(Settings())
    (line,) = [r.getMessage() for r in caplog.records if r.name == "tools.identity"]
    assert "crm source's identity keys were left out" in line and "nme" in line
    assert "custctx mappings check" in line


def test_the_fingerprint_is_the_url_and_the_mappings_content_not_its_location(tmp_path):
    from tools.mapping.check import mapping_file

    url = f"sqlite:///{tmp_path / 'crm.sqlite'}"
    (tmp_path / "crm.sqlite").touch()
    builtin = mapping_file("hubspot").read_text(encoding="utf-8")
    for folder in ("a", "b"):  # the same mapping in two places (two installs of the package)
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "crm.yaml").write_text(builtin, encoding="utf-8")
    (tmp_path / "c.yaml").write_text(builtin + "# another mapping\n", encoding="utf-8")

    def fp(mapping: Path, at: str = url) -> str | None:
        return config_fingerprint(Settings(home=tmp_path, sources={"crm": SourceConfig(url=at, mapping=str(mapping))}), "crm")

    assert fp(tmp_path / "a" / "crm.yaml") == fp(tmp_path / "b" / "crm.yaml")
    assert fp(tmp_path / "c.yaml") != fp(tmp_path / "a" / "crm.yaml")
    (tmp_path / "other.sqlite").touch()
    assert fp(tmp_path / "a" / "crm.yaml", f"sqlite:///{tmp_path / 'other.sqlite'}") != fp(tmp_path / "a" / "crm.yaml")
