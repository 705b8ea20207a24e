"""The identity index maintained from the changed rows gives exactly what a fresh build gives.

Random sequences of identity edits — a new, moved or shared domain, a renamed, new,
soft- or hard-deleted account, a contact moved to another company or given another email,
a billing customer's email or CRM link changed, a support organization's domain added or
removed (a table without an update timestamp), a product user seen with new keys — on the
fixture warehouse (the 13 story customers and a few background ones); after each sequence
``maintain_index`` must never have rebuilt, and the index must equal a fresh build's, row
for row. The resolution cache's generation moves exactly when the index's rows changed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

from tools.context import resolution
from tools.embedded.generate import seed
from tools.identity import IdentityIndex, build_index
from tools.refresh.index import index_rows, maintain_index
from tools.settings import Settings
from tools.sources.registry import dispose_engines, engine_for

from .conftest import settings_for, statements_on

DOMAINS = ["acme.com", "globex.com", "shared.example", "new-a.example", "new-b.example", "initech.io", "gmail.com"]
EMAILS = ["x@shared.example", "wile.coyote@acme.com", "someone@globex.com", "ops@new-a.example", "p@gmail.com",
          "ap@acme.com", "y@shared.example"]
BASE = datetime(2026, 2, 1)
IDX = st.integers(0, 60)

EDITS = st.one_of(
    st.tuples(st.just("company_domain"), IDX, st.sampled_from(DOMAINS)),
    st.tuples(st.just("company_name"), IDX, st.sampled_from(["Acme", "Globex Two", "Shared Co"])),
    st.tuples(st.just("company_deleted"), IDX, st.booleans()),
    st.tuples(st.just("company_new"), st.sampled_from(DOMAINS), st.sampled_from(["Newco", "Acme"])),
    st.tuples(st.just("company_gone"), IDX),
    st.tuples(st.just("company_mrr"), IDX),
    st.tuples(st.just("contact_move"), IDX, IDX),
    st.tuples(st.just("contact_email"), IDX, st.sampled_from(EMAILS)),
    st.tuples(st.just("billing_email"), IDX, st.sampled_from(EMAILS)),
    st.tuples(st.just("billing_link"), IDX, IDX),
    st.tuples(st.just("org_domain_add"), IDX, st.sampled_from(DOMAINS)),
    st.tuples(st.just("org_domain_gone"), IDX),
    st.tuples(st.just("person_seen"), st.integers(0, 40), st.sampled_from(EMAILS), st.sampled_from(["a1", "a2"])),
    st.tuples(st.just("person_group"), st.integers(0, 40), IDX),
)


def _pick(conn, sql: str, i: int):  # noqa: ANN001, ANN202
    rows = [r[0] for r in conn.execute(text(sql))]
    return rows[i % len(rows)] if rows else None


def apply_edit(url: str, edit: tuple, n: int) -> None:
    """One identity edit, as a sync lands it (a newer sync stamp where the table has one)."""
    at = BASE + timedelta(minutes=n)
    kind, *args = edit
    eng = create_engine(url)
    try:
        with eng.begin() as c:
            company = lambda i: _pick(c, "SELECT id FROM company ORDER BY id", i)  # noqa: E731
            if kind == "company_domain":
                c.execute(text("UPDATE company SET property_domain = :d, _fivetran_synced = :t WHERE id = :i"),
                          {"d": args[1], "t": at, "i": company(args[0])})
            elif kind == "company_name":
                c.execute(text("UPDATE company SET property_name = :d, _fivetran_synced = :t WHERE id = :i"),
                          {"d": args[1], "t": at, "i": company(args[0])})
            elif kind == "company_deleted":
                c.execute(text("UPDATE company SET is_deleted = :d, _fivetran_synced = :t WHERE id = :i"),
                          {"d": args[1], "t": at, "i": company(args[0])})
            elif kind == "company_new":
                new = c.execute(text("SELECT max(id) + 1 FROM company")).scalar()
                c.execute(text("INSERT INTO company (id, property_name, property_domain, property_customer_status, "
                               "is_deleted, _fivetran_synced) VALUES (:i, :nm, :d, 'active', false, :t)"),
                          {"i": new, "nm": args[1], "d": args[0], "t": at})
            elif kind == "company_gone":  # a hard delete: only the row count shows it
                c.execute(text("DELETE FROM company WHERE id = :i"), {"i": company(args[0])})
            elif kind == "company_mrr":
                c.execute(text("UPDATE company SET property_mrr = coalesce(property_mrr, 0) + 1, "
                               "_fivetran_synced = :t WHERE id = :i"), {"t": at, "i": company(args[0])})
            elif kind == "contact_move":
                c.execute(text("UPDATE contact SET property_associatedcompanyid = :a, _fivetran_synced = :t "
                               "WHERE id = :i"),
                          {"a": company(args[1]), "t": at, "i": _pick(c, "SELECT id FROM contact ORDER BY id", args[0])})
            elif kind == "contact_email":
                c.execute(text("UPDATE contact SET property_email = :e, _fivetran_synced = :t WHERE id = :i"),
                          {"e": args[1], "t": at, "i": _pick(c, "SELECT id FROM contact ORDER BY id", args[0])})
            elif kind == "billing_email":
                c.execute(text("UPDATE customer SET email = :e, _fivetran_synced = :t WHERE id = :i"),
                          {"e": args[1], "t": at, "i": _pick(c, "SELECT id FROM customer ORDER BY id", args[0])})
            elif kind == "billing_link":
                c.execute(text("UPDATE customer SET metadata = :m, _fivetran_synced = :t WHERE id = :i"),
                          {"m": json.dumps({"crm_company_id": str(company(args[1]))}), "t": at,
                           "i": _pick(c, "SELECT id FROM customer ORDER BY id", args[0])})
            elif kind == "org_domain_add":  # Zendesk's domains have no update timestamp
                org = _pick(c, "SELECT id FROM organization ORDER BY id", args[0])
                c.execute(text("INSERT INTO domain_name (organization_id, \"index\", domain_name, _fivetran_synced) "
                               "VALUES (:o, (SELECT coalesce(max(\"index\"), 0) + 1 FROM domain_name "
                               "WHERE organization_id = :o), :d, :t)"), {"o": org, "d": args[1], "t": at})
            elif kind == "org_domain_gone":
                row = _pick(c, "SELECT organization_id || ':' || \"index\" FROM domain_name ORDER BY 1", args[0])
                org, index = str(row).split(":")
                c.execute(text("DELETE FROM domain_name WHERE organization_id = :o AND \"index\" = :x"),
                          {"o": int(org), "x": int(index)})
            elif kind == "person_seen":
                user = f"usr_{args[0]:08d}"
                c.execute(text("INSERT INTO identifies (id, user_id, anonymous_id, email, name, timestamp, received_at) "
                               "VALUES (:id, :u, :a, :e, 'Someone', :t, :t)"),
                          {"id": f"idf_t{n}", "u": user, "a": f"anon_{args[2]}", "e": args[1], "t": at})
            elif kind == "person_group":
                group = _pick(c, "SELECT DISTINCT group_id FROM groups ORDER BY 1", args[1])
                c.execute(text("INSERT INTO groups (id, user_id, group_id, timestamp, received_at) "
                               "VALUES (:id, :u, :g, :t, :t)"),
                          {"id": f"grp_t{n}", "u": f"usr_{args[0]:08d}", "g": group, "t": at})
    finally:
        eng.dispose()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("pristine") / "warehouse.sqlite"
    seed(f"sqlite:///{path}", customers=6)
    yield path
    dispose_engines()


class _Runs:
    def __init__(self, root: Path):
        self.root, self.n = root, 0

    def start(self, pristine: Path) -> tuple[str, Settings]:
        self.n += 1
        here = self.root / f"run{self.n}"
        (here / "state").mkdir(parents=True)
        shutil.copy(pristine, here / "warehouse.sqlite")
        url = f"sqlite:///{here / 'warehouse.sqlite'}"
        s = settings_for(url, here / "state")
        build_index(s)
        return url, s

    def fresh(self, url: str) -> tuple[list, list]:
        self.n += 1
        other = self.root / f"fresh{self.n}"
        other.mkdir()
        s = settings_for(url, other)
        build_index(s)
        return index_rows(s)


def check_sequence(runs: _Runs, pristine: Path, edits: list[tuple]) -> None:
    url, s = runs.start(pristine)
    state = engine_for(s.state_db_url)
    generation = resolution.generation(state)
    rows = index_rows(s)
    for n, edit in enumerate(edits):
        apply_edit(url, edit, n)
        update = maintain_index(s)
        assert update.mode in ("incremental", "unchanged"), (edit, update)
        now, moved = index_rows(s), resolution.generation(state)
        assert (moved != generation) == (now != rows), (edit, "the generation moves exactly when the index does")
        rows, generation = now, moved
    assert rows == runs.fresh(url), edits
    dispose_engines()


def test_the_first_update_after_a_build_reads_no_source_rows(pristine, tmp_path):
    """A full refresh right after start-up built the index (``ready()``): its index update finds
    the watermarks the build recorded current, and reads no row (it used to read every source)."""
    url, s = _Runs(tmp_path).start(pristine)
    with statements_on(url) as seen:
        update = maintain_index(s)
    assert update.mode == "unchanged"
    assert seen and all("count(*)" in q for q in seen)  # each identity table's row count and newest stamp
    dispose_engines()


@settings(max_examples=6, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])  # a failure is reported as found (shrinking is slow here)
@given(edits=st.lists(EDITS, min_size=1, max_size=5))
def test_random_identity_edits_keep_the_index_equal_to_a_fresh_build(pristine, tmp_path_factory, edits):
    check_sequence(_Runs(tmp_path_factory.mktemp("runs")), pristine, edits)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])  # a failure is reported as found (shrinking is slow here)
@given(edits=st.lists(EDITS, min_size=1, max_size=8))
def test_many_random_identity_edits_keep_the_index_equal_to_a_fresh_build(pristine, tmp_path_factory, edits):
    check_sequence(_Runs(tmp_path_factory.mktemp("runs")), pristine, edits)


def test_identity_edits_on_postgresql_give_what_a_fresh_build_gives(pg_server, tmp_path):
    url, state, fresh_state = (pg_server.create_database() for _ in range(3))
    seed(url, customers=3)
    s = settings_for(url, tmp_path / "a", state_url=state)
    build_index(s)
    engine = engine_for(state)
    generation = resolution.generation(engine)
    edits = [("company_mrr", 1), ("company_domain", 0, "shared.example"), ("company_domain", 3, "shared.example"),
             ("contact_move", 0, 1), ("billing_email", 2, "ops@new-a.example"), ("org_domain_add", 4, "new-b.example"),
             ("person_seen", 3, "someone@globex.com", "a1"), ("company_new", "new-a.example", "Newco"),
             ("company_gone", 5)]
    for n, edit in enumerate(edits):
        apply_edit(url, edit, n)
        with statements_on(state) as seen:
            update = maintain_index(s)
        assert update.mode in ("incremental", "unchanged"), (edit, update)
        if edit[0] == "company_mrr":  # nothing of the index changed: nothing written, the generation stays
            assert update.moved_nodes == 0 and resolution.generation(engine) == generation
            assert not [q for q in seen if q.lstrip().startswith(("INSERT INTO identity_c", "INSERT INTO identity_k"))]
    assert resolution.generation(engine) > generation
    other = settings_for(url, tmp_path / "b", state_url=fresh_state)
    build_index(other)
    assert index_rows(s) == index_rows(other)
    found = IdentityIndex(engine).resolve("new-a.example")[0]  # the new account, linked as a build links it
    assert found == IdentityIndex(engine_for(fresh_state)).resolve("new-a.example")[0]
    dispose_engines()
