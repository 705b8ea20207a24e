"""`custctx mappings check` and the same checks in `custctx sources`: a mapping that is wrong
for its warehouse is one line naming the file and the key, found before any lookup — never
"No customer matches" while the source says ok.

Each test writes a small store of its own (SQLite files, column names unlike any built-in
mapping) and runs the real CLI (CliRunner; one real subprocess).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from agent.interfaces.cli.app import app
from tools.mapping.check import SHARED_KEY_ANCHORS, check_mapping
from tools.mapping.loader import load_mapping
from tools.sources.registry import dispose_engines

AS_OF = "2026-01-15T12:00:00"
SHOPPERS = 50  # more than SHARED_KEY_ANCHORS share example.com

CRM_MAPPING = """\
name: mycrm
source: crm
system: mycrm
identity:
  anchor: account.id
  keys:
    - {entity: account, anchor: id, field: id, kind: crm_id}
    - {entity: account, anchor: id, field: domain, kind: domain}
    - {entity: account, anchor: id, field: name, kind: name}
entities:
  account:
    table: firms
    fields:
      id: {column: firm_id, required: true}
      name: {column: NAME, required: true}
      domain: {column: web, convert: domain}
      industry: sector
      employees: {column: headcount, type: int}
"""

# The identity keys of the built-in stripe.yaml, copied for a shop's buyers.
BILLING_MAPPING = """\
name: mybilling
source: billing
system: mybilling
identity:
  anchor: customer.id
  keys:
    - {entity: customer, anchor: id, field: id, kind: billing_id}
    - {entity: customer, anchor: id, field: email, kind: email, derive_domain: true}
    - {entity: customer, anchor: id, field: name, kind: name}
entities:
  customer:
    table: buyers
    fields:
      id: {column: buyer_key, required: true}
      email: {column: mail, convert: lower}
      name: full_name
"""

FIRST = ("Noah", "Emma", "Liam", "Olivia", "Mason", "Ava", "Lucas", "Mia", "Ethan", "Zoe")
LAST = ("Brown", "Smith", "Jones", "Garcia", "Miller")


def shopper(i: int) -> tuple[str, str, str]:
    """(buyer key, e-mail, full name) of shopper ``i``: all at example.com."""
    first, last = FIRST[i % len(FIRST)], LAST[i // len(FIRST) % len(LAST)]
    return f"b{i:03d}", f"{first}.{last}{i}@example.com".lower(), f"{first} {last} {i}"


def write_store(folder: Path, firm_name: str = "Acme Anvils", crm_file: str = "crm.sqlite") -> dict[str, str]:
    """A CRM (two firms) and a shop's billing (50 shoppers at example.com and Acme's payables
    address) as SQLite files in ``folder``, with mapping files for them. Returns their paths/URLs."""
    folder.mkdir(parents=True, exist_ok=True)
    crm, billing = folder / crm_file, folder / "billing.sqlite"
    for path in (crm, billing):
        path.unlink(missing_ok=True)
    eng = create_engine(f"sqlite:///{crm}")
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE firms (firm_id TEXT, NAME TEXT, web TEXT, sector TEXT, headcount TEXT)"))
        conn.execute(text("INSERT INTO firms VALUES (:i, :n, :w, :s, :h)"), [
            {"i": "f1", "n": firm_name, "w": "acme.test", "s": "manufacturing", "h": "120"},
            {"i": "f2", "n": "Bolt Bikes", "w": "https://www.bolt.test", "s": "retail", "h": "40"}])
    eng.dispose()
    eng = create_engine(f"sqlite:///{billing}")
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE buyers (buyer_key TEXT, mail TEXT, full_name TEXT)"))
        rows = [shopper(i) for i in range(SHOPPERS)] + [("b999", "ap@acme.test", "Acme Anvils payables")]
        conn.execute(text("INSERT INTO buyers VALUES (:k, :m, :n)"), [{"k": k, "m": m, "n": n} for k, m, n in rows])
    eng.dispose()
    (folder / "mycrm.yaml").write_text(CRM_MAPPING, encoding="utf-8")
    (folder / "mybilling.yaml").write_text(BILLING_MAPPING, encoding="utf-8")
    return {"crm_url": f"sqlite:///{crm}", "billing_url": f"sqlite:///{billing}",
            "crm_mapping": str(folder / "mycrm.yaml"), "billing_mapping": str(folder / "mybilling.yaml")}


def store_env(folder: Path, store: dict[str, str], **extra: str) -> dict[str, str]:
    return {"CUSTCTX_HOME": str(folder / "home"), "CUSTCTX_AS_OF": AS_OF,
            "CUSTCTX_SOURCES__CRM__URL": store["crm_url"], "CUSTCTX_SOURCES__CRM__MAPPING": store["crm_mapping"],
            "CUSTCTX_SOURCES__BILLING__URL": store["billing_url"],
            "CUSTCTX_SOURCES__BILLING__MAPPING": store["billing_mapping"], **extra}


def edit(path: str, old: str, new: str) -> None:
    """Change one thing in a mapping file (and forget the loaded copies of every mapping)."""
    p = Path(path)
    body = p.read_text(encoding="utf-8")
    assert old in body, old
    p.write_text(body.replace(old, new), encoding="utf-8")
    load_mapping.cache_clear()


@pytest.fixture
def shop(tmp_path, monkeypatch):
    """The store, its settings in the environment, and a CLI runner over it."""
    store = write_store(tmp_path)
    for k, v in store_env(tmp_path, store).items():
        monkeypatch.setenv(k, v)
    load_mapping.cache_clear()
    yield tmp_path, store
    load_mapping.cache_clear()
    dispose_engines()


def cli(*args: str) -> tuple[int, str]:
    got = CliRunner().invoke(app, list(args))
    assert got.exception is None or isinstance(got.exception, SystemExit), got.exception
    return got.exit_code, got.stdout


# ------------------------------------------------------------------ a good mapping
def test_a_good_mapping_passes_and_lists_what_it_leaves_unmapped(shop):
    _, store = shop
    edit(store["billing_mapping"], "derive_domain: true", "derive_domain: true, account_domain: true")
    code, out = cli("mappings", "check")
    assert code == 0, out
    assert "crm: " in out and "billing: " in out and "problem" not in out
    # what the CRM reader could use and this mapping leaves out: a note, not a problem
    assert any(line.startswith(f"note: {store['crm_mapping']}: entities.account: not mapped, read as null:")
               and "mrr" in line for line in out.splitlines())
    assert f"note: {store['crm_mapping']}: entities.opportunity: not mapped: read as no rows" in out


def test_the_built_in_mappings_pass_on_the_fixture_warehouse(sqlite_warehouse):
    for ref in ("hubspot", "stripe", "zendesk", "email", "calendar", "chat", "documents", "calls", "news"):
        report = check_mapping(load_mapping(ref), create_engine(sqlite_warehouse), f"{ref}.yaml")
        assert report.errors == [], [p.line for p in report.errors]
        assert report.sampled > 0 and report.fields > 0


# ------------------------------------------------------------------ columns, expressions, values
def test_a_missing_column_is_one_line_with_file_and_key(shop):
    _, store = shop
    edit(store["crm_mapping"], "name: {column: NAME,", "name: {column: nme,")
    code, out = cli("mappings", "check", "--source", "crm")
    assert code == 1
    assert f'{store["crm_mapping"]}: entities.account.fields.name: column "nme" not in table firms' in out
    assert out.count("entities.account.fields.name") == 1  # once: not again as the entity's failed select


def test_an_expression_the_database_refuses_names_its_key(shop):
    _, store = shop
    edit(store["crm_mapping"], "industry: sector", "industry: {expr: \"upper(sectr) || '!'\"}")
    code, out = cli("mappings", "check", "-s", "crm", "-f", "json")
    problems = json.loads(out)[0]["problems"]
    errors = [p for p in problems if p["level"] == "error"]
    assert code == 1 and [p["key"] for p in errors] == ["entities.account.fields.industry"]
    assert "no such column: sectr" in errors[0]["message"]


def test_values_the_conversions_cannot_read_are_counted_in_the_sample(shop):
    _, store = shop
    eng = create_engine(store["crm_url"])
    with eng.begin() as conn:
        conn.execute(text("UPDATE firms SET headcount = 'about forty' WHERE firm_id = 'f2'"))
    eng.dispose()
    code, out = cli("mappings", "check", "-s", "crm")
    assert code == 1
    assert (f"{store['crm_mapping']}: entities.account.fields.employees: 1 of 2 sample rows cannot be read: "
            "employees: cannot read 'about forty' as int") in out


def test_a_missing_table_names_the_closest_one(shop):
    _, store = shop
    edit(store["crm_mapping"], "table: firms", "table: firm")
    code, out = cli("mappings", "check", "-s", "crm")
    assert code == 1
    assert f'{store["crm_mapping"]}: entities.account.table: table "firm" not in the database (did you mean firms?)' \
        in out


# ------------------------------------------------------------------ shared identity keys
def test_a_domain_shared_by_many_shoppers_is_refused_unless_it_is_an_account_domain(shop):
    _, store = shop
    code, out = cli("mappings", "check", "-s", "billing")
    assert code == 1
    line = next(x for x in out.splitlines() if x.startswith(f"{store['billing_mapping']}: identity.keys[1]: "))
    assert f'derived domain "example.com" ({SHOPPERS}) of customer.email is shared by more than ' \
           f"{SHARED_KEY_ANCHORS} customers" in line
    assert "account_domain: true" in line and "derive_domain" in line
    assert "acme.test" not in out  # held by one customer: identifying

    edit(store["billing_mapping"], "derive_domain: true", "derive_domain: true, account_domain: true")
    code, out = cli("mappings", "check", "-s", "billing")
    assert code == 0 and "identity.keys" not in out


def test_a_placeholder_email_shared_by_many_customers_is_refused(shop):
    _, store = shop
    eng = create_engine(store["billing_url"])
    with eng.begin() as conn:
        conn.execute(text("UPDATE buyers SET mail = 'unknown@shop.test' WHERE buyer_key < 'b020'"))
    eng.dispose()
    code, out = cli("mappings", "check", "-s", "billing", "--shared-limit", "5")
    assert code == 1
    assert 'identity.keys[1]: email "unknown@shop.test" (20) of customer.email is shared by more than 5' in out
    assert "a placeholder value?" in out


# ------------------------------------------------------------------ custctx sources
def test_sources_says_misconfigured_with_the_line_instead_of_ok(shop):
    _, store = shop
    edit(store["crm_mapping"], "name: {column: NAME,", "name: {column: nme,")
    code, out = cli("sources", "-f", "json")
    assert code == 0
    crm = {r["source"]: r for r in json.loads(out)}["crm"]
    assert crm["status"] == "misconfigured"
    assert crm["detail"].startswith(f'{store["crm_mapping"]}: entities.account.fields.name: column "nme" not in '
                                    "table firms")
    assert crm["problems"] == [crm["detail"]]


def test_the_installed_command_exits_non_zero_with_one_line_per_problem(tmp_path):
    store = write_store(tmp_path)
    edit(store["crm_mapping"], "industry: sector", "industry: sectr")
    exe = shutil.which("custctx")
    cmd = [exe] if exe else [sys.executable, "-m", "agent.interfaces.cli.app"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTCTX_")}
    env.update(store_env(tmp_path, store))
    proc = subprocess.run([*cmd, "mappings", "check"], capture_output=True, text=True, env=env, timeout=120,
                          stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 1, proc.stderr
    errors = [x for x in proc.stdout.splitlines() if x.startswith(store["crm_mapping"] + ":")]
    assert errors == [f'{store["crm_mapping"]}: entities.account.fields.industry: column "sectr" not in table '
                      "firms (did you mean sector?)"]
    assert "Traceback" not in proc.stderr


def test_the_checks_run_on_postgresql(pg_url, tmp_path):
    store = write_store(tmp_path)
    src, dst = create_engine(store["billing_url"]), create_engine(pg_url)
    with src.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(text("SELECT * FROM buyers"))]
    with dst.begin() as conn:
        conn.execute(text("CREATE TABLE buyers (buyer_key TEXT, mail TEXT, full_name TEXT)"))
        conn.execute(text("INSERT INTO buyers VALUES (:buyer_key, :mail, :full_name)"), rows)
    load_mapping.cache_clear()
    edit(store["billing_mapping"], "name: full_name", "name: {expr: \"upper(ful_name)\"}")
    report = check_mapping(load_mapping(store["billing_mapping"]), dst, "mybilling.yaml")
    lines = [p.line for p in report.errors]
    assert lines[0] == 'mybilling.yaml: entities.customer.fields.name: column "ful_name" does not exist', lines
    assert lines[1].startswith(f'mybilling.yaml: identity.keys[1]: derived domain "example.com" ({SHOPPERS}) of '
                               "customer.email is shared by more than")
    assert len(lines) == 2
    load_mapping.cache_clear()
    src.dispose()
    dst.dispose()
