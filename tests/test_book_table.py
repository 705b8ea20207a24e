"""The book table (tools/booktable.py): traits materialised with each refresh, listed through the
access gate by `custctx book`, the service behind GET /v1/customers and MCP find_customers."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from agent.bootstrap import ready
from agent.interfaces.cli.app import app
from agent.reviews import _index_row
from tools.access.audit import audit_log_for
from tools.access.gate import Access
from tools.access.principal import Principal
from tools.booktable import (
    RELATIONSHIP_INPUTS,
    BookQuery,
    BookQueryError,
    book_risk,
    book_size,
    find_customers,
    parse_within,
)
from tools.context.assembly import assemble_context
from tools.context.read import resolve
from tools.context.scope import ReadScope
from tools.embedded.generate import seed
from tools.embedded.story_data import HOOLI_DOMAIN, STORY_ACCOUNTS
from tools.identity import CustomerNotFound, identity_customer
from tools.memory import ContextMemory, open_store
from tools.refresh.jobs import refresh_full
from tools.sources.registry import dispose_engines, engine_for

from .conftest import settings_for

ROLES = {"admin": "ops", "support_agent": "alice", "support_lead": "lee", "account_exec": "dana.scully",
         "finance": "fay"}
NO_BILLING_POLICY = """
version: 1
roles:
  admin: {description: all, customers: all, slices: {allow: ["*"]}, refresh: true}
  no_billing:
    description: everything but billing
    customers: all
    slices: {allow: ["*"], deny: [billing]}
    mask: {crm.account: [owner]}
"""


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    """A refreshed book over a private warehouse: state, memory and the book table filled once."""
    url = f"sqlite:///{tmp_path_factory.mktemp('book-warehouse') / 'warehouse.sqlite'}"
    seed(url, customers=40)
    home = tmp_path_factory.mktemp("book-home")
    r = ready(settings_for(url, home))
    with open_store(r.settings.state_db_url) as store:
        memory = ContextMemory.of(store, r.settings)
        report = refresh_full(r.settings, memory)
        assert report.failures == 0
        yield r, memory, url, home
    dispose_engines()


def gate(r, role: str, user: str) -> Access:
    return Access.for_principal(r.settings, Principal(tenant=r.settings.tenant, user=user, role=role,
                                                      interface="cli"))


@pytest.fixture(scope="module")
def contexts(book):
    """The oracle, without the book table: every customer's traits as its context shows them (every
    slice, read by the read path as admin), by name."""
    r, memory, _, _ = book
    with engine_for(r.settings.state_db_url).connect() as conn:
        ids = [row[0] for row in conn.execute(identity_customer.select().with_only_columns(
            identity_customer.c.customer_id))]
    admin = ReadScope.build(r.settings, r.clock, access=gate(r, "admin", "ops"), memory=memory, index=r.index)
    return {(ref := r.index.get(cid)).name: assemble_context(admin, ref).traits for cid in ids}


def visible_to(r, memory, role: str, names: set[str]) -> set[str]:
    """The customers of ``names`` that ``role`` may resolve at all."""
    scope = ReadScope.build(r.settings, r.clock, access=gate(r, role, ROLES[role]), memory=memory, index=r.index)
    visible = set()
    for name in names:
        try:
            resolve(scope, r.index.resolve(name)[0].customer_id)
            visible.add(name)
        except CustomerNotFound:
            pass
    return visible


def expected_for(r, memory, role: str, contexts) -> set[str]:
    """Enterprise accounts with a billing issue in their context that ``role`` may see."""
    return visible_to(r, memory, role, {n for n, t in contexts.items()
                                        if t.tier == "enterprise" and "billing_issue" in t.risk_indicators})


def cli(home, url, *args: str, policy=None):  # noqa: ANN001
    env = {"CUSTCTX_HOME": str(home), "CUSTCTX_WAREHOUSE_URL": url, "CUSTCTX_SEED_CUSTOMERS": "40"}
    if policy is not None:
        env["CUSTCTX_POLICY"] = str(policy)
    return CliRunner().invoke(app, list(args), env=env)


@pytest.mark.parametrize("role", sorted(ROLES))
def test_book_lists_acme_and_nothing_it_should_not_for_every_role(book, contexts, role):
    r, memory, url, _ = book
    home = r.settings.home
    proc = cli(home, url, "book", "--risk", "billing_issue", "--tier", "enterprise", "-f", "json",
               "--as", f"{role}:{ROLES[role]}")
    assert proc.exit_code == 0, proc.stderr
    listed = json.loads(proc.stdout)["customers"]
    names = {c["name"] for c in listed}
    assert "Acme Corp" in names
    assert names == expected_for(r, memory, role, contexts)
    assert all(c["tier"] == "enterprise" and "billing_issue" in c["risk_indicators"] for c in listed)
    if role == "account_exec":
        assert {c["owner"] for c in listed} == {"dana.scully"}


def test_an_account_exec_sees_only_their_accounts_and_each_listing_is_audited(book):
    r, _, _, _ = book
    dana = gate(r, "account_exec", "dana.scully")
    listing = find_customers(r.settings, BookQuery(sort="name", limit=1000), dana)
    names = [e.name for e in listing.entries]
    assert "Acme Corp" in names and "Umbrella Health" in names and "Massive Dynamic" not in names
    assert {e.owner for e in listing.entries} == {"dana.scully"}
    assert names == sorted(names)
    records = audit_log_for(r.settings).query(r.settings.tenant, limit=1000)
    book_records = [x for x in records if x.slice == "book" and x.user_name == "dana.scully"]
    assert {x.customer_id for x in book_records} == {"*"} | {e.customer_id for e in listing.entries}
    every = find_customers(r.settings, BookQuery(limit=1000), gate(r, "admin", "ops"))
    assert "Massive Dynamic" in {e.name for e in every.entries}
    assert book_size(r.settings, r.settings.tenant) == len(every.entries)  # admin: every row of the table


def test_fields_a_role_may_not_read_are_masked_and_never_match(book, tmp_path):
    r, _, url, _ = book
    policy = tmp_path / "policy.yaml"
    policy.write_text(NO_BILLING_POLICY, encoding="utf-8")
    settings = r.settings.model_copy(update={"policy": policy})
    no_billing = Access.for_principal(settings, Principal(tenant=settings.tenant, user="nb", role="no_billing",
                                                          interface="cli"))
    assert find_customers(settings, BookQuery(risk="billing_issue"), no_billing).entries == []
    acme = [e for e in find_customers(settings, BookQuery(limit=1000), no_billing).entries if e.name == "Acme Corp"]
    assert acme and "billing_issue" not in acme[0].risk_indicators
    assert acme[0].health.startswith("••••") and acme[0].owner.startswith("••••")
    assert {"health", "churn_score", "owner", "risk_indicators"} <= set(acme[0].masked_fields)
    assert find_customers(settings, BookQuery(owner="dana.scully"), no_billing).entries == []  # masked: no match


def test_renewal_window_and_sort(book):
    r, _, _, _ = book
    soon = find_customers(r.settings, BookQuery(renewal_within_days=parse_within("30d"), sort="renewal"))
    names = [e.name for e in soon.entries]
    assert "Umbrella Health" in names and "Acme Corp" not in names  # 21 days vs 44 days away (as of 2026-01-15)
    dates = [e.renewal_date for e in soon.entries]
    assert dates == sorted(dates)
    churn = find_customers(r.settings, BookQuery(sort="churn", limit=5)).entries
    assert [e.churn_score for e in churn] == sorted((e.churn_score for e in churn), reverse=True)
    assert churn[0].churn_score >= 45  # at least Acme's: billing_issue 30 + declining_usage 15


def test_bad_options_are_one_line(book):
    r, _, url, _ = book
    for args, needle in ((["--risk", "sad"], "unknown risk"), (["--tier", "gold"], "unknown tier"),
                         (["--renewal-within", "soon"], "30d")):
        proc = cli(r.settings.home, url, "book", *args)
        assert proc.exit_code == 2 and needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    with pytest.raises(BookQueryError):
        find_customers(r.settings, BookQuery(limit=0))


def test_review_index_shows_health_tier_and_owner(tmp_path):
    data = {"name": "Acme Corp", "review": {"health": "at risk", "customer": {"tier": "enterprise",
                                                                             "owner": "dana.scully"}}}
    row = _index_row(data, tmp_path / "acme-corp--c_1.md", tmp_path / "acme-corp--c_1.json")
    assert (row.health, row.tier, row.owner) == ("at risk", "enterprise", "dana.scully")


def test_the_first_listing_builds_the_book_only_for_a_role_that_may_refresh(book, tmp_path):
    _, _, url, _ = book
    refused = cli(tmp_path, url, "book", "--as", "account_exec:dana.scully")
    assert refused.exit_code == 1 and "has not been built yet" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    built = cli(tmp_path, url, "book", "--tier", "enterprise", "--sort", "name", "-f", "json")  # the local admin
    assert built.exit_code == 0, built.stderr
    listing = json.loads(built.stdout)
    assert "Acme Corp" in [c["name"] for c in listing["customers"]] and listing["book_size"] > 13


def test_the_service_and_the_mcp_tool_list_through_the_gate(book):
    import anyio
    from mcp import Client

    from agent.interfaces.mcp import build_server
    from agent.interfaces.service import ContextService, InvalidRequest

    r, _, _, _ = book
    service = ContextService(r.settings.model_copy(update={"mcp": r.settings.mcp.model_copy(
        update={"role": "account_exec", "user": "dana.scully"})}))
    try:
        dana = Principal(tenant=r.settings.tenant, user="dana.scully", role="account_exec", interface="http")
        listed = service.find_customers(renewal_within="60d", sort="renewal", principal=dana)
        names = [c["name"] for c in listed["customers"]]
        assert names.index("Umbrella Health") < names.index("Acme Corp")  # Feb 5 before Feb 28
        assert {c["owner"] for c in listed["customers"]} == {"dana.scully"}
        assert [c["renewal_date"] for c in listed["customers"]] == sorted(c["renewal_date"]
                                                                          for c in listed["customers"])
        with pytest.raises(InvalidRequest, match="unknown tier"):
            service.find_customers(tier="gold", principal=dana)

        async def call() -> dict:
            async with Client(build_server(service), read_timeout_seconds=60) as client:
                result = await client.call_tool("find_customers", {"risk": "billing_issue", "tier": "enterprise"})
                bad = await client.call_tool("find_customers", {"risk": "sad"})
                assert bad.is_error
                return result.structured_content

        data = anyio.run(call)
        assert [c["name"] for c in data["customers"]] == ["Acme Corp"]
    finally:
        service.close()


def test_the_book_shows_the_traits_every_story_customers_context_shows(book):
    """`custctx book` rows against `custctx context -f json` traits, for every story customer the book
    holds (the active book: churned Soylent is never refreshed into it)."""
    r, _, url, home = book
    proc = cli(home, url, "book", "--limit", "1000", "-f", "json")
    assert proc.exit_code == 0, proc.stderr
    rows = {c["name"]: c for c in json.loads(proc.stdout)["customers"]}
    stories = [(a.name, a.domain) for a in STORY_ACCOUNTS if a.status != "churned"] + [("Hooli", HOOLI_DOMAIN)]
    for name, domain in stories:
        ctx = cli(home, url, "context", domain, "-f", "json")
        assert ctx.exit_code == 0, ctx.stderr
        data = json.loads(ctx.stdout)
        traits, row = data["traits"], rows[data["customer"]["name"] if "customer" in data else name]
        assert (row["health"], row["churn_score"]) == (traits["health"], traits["churn_risk"]["score"]), name
        assert row["tier"] == traits["tier"], name
        assert row["risk_indicators"] == traits["risk_indicators"], name
        assert row["relationship_risks"] == [x["name"] for x in traits["relationship_risks"]], name
    assert rows["Umbrella Health"]["relationship_risks"] == ["renewal_at_risk", "negative_sentiment",
                                                             "competitor_mentioned"]
    assert rows["Umbrella Health"]["churn_score"] == 70  # SIGNALS.md
    assert rows["Initech"]["relationship_risks"] == ["champion_cold", "engagement_declining"]


def _risk_expected(r, memory, contexts, role: str, risk: str) -> set[str]:
    """Customers of the book (the active book: churned accounts are not refreshed into it) whose context
    has ``risk`` that ``role`` may see, when it may read what the risk is derived from (else it sees
    the risk masked, and a masked value never matches)."""
    gate_ = gate(r, role, ROLES[role])
    if not all(gate_.allows(n) for n in RELATIONSHIP_INPUTS[risk]):
        return set()
    held = {e.name for e in find_customers(r.settings, BookQuery(limit=1000)).entries}
    return visible_to(r, memory, role, {n for n, t in contexts.items()
                                        if n in held and risk in {x.name for x in t.relationship_risks}})


@pytest.mark.parametrize("role", sorted(ROLES))
def test_relationship_risks_filter_the_book_for_every_role(book, contexts, role):
    r, memory, url, home = book
    listed = {}
    for risk in ("champion_cold", "renewal_at_risk"):
        proc = cli(home, url, "book", "--risk", risk, "--limit", "1000", "-f", "json", "--as", f"{role}:{ROLES[role]}")
        assert proc.exit_code == 0, proc.stderr
        customers = json.loads(proc.stdout)["customers"]
        listed[risk] = {c["name"] for c in customers}
        assert listed[risk] == _risk_expected(r, memory, contexts, role, risk), risk
        assert all(risk in c["relationship_risks"] and risk not in c["risk_indicators"] for c in customers)
    story_cold = {"Initech", "Stark Industries", "Société Tyrell", "Acme Logistics"}  # docs/SIGNALS.md
    if role in ("admin", "support_agent", "support_lead"):
        assert story_cold <= listed["champion_cold"] and "Umbrella Health" in listed["renewal_at_risk"]
    elif role == "account_exec":  # dana.scully's own: Umbrella and Stark, not Initech (monica.reyes')
        assert listed == {"champion_cold": listed["champion_cold"], "renewal_at_risk": {"Umbrella Health"}}
        assert "Stark Industries" in listed["champion_cold"] and "Initech" not in listed["champion_cold"]
    else:  # finance reads no conversations: the relationship risks are masked and never match
        assert listed == {"champion_cold": set(), "renewal_at_risk": set()}
        initech = [e for e in find_customers(r.settings, BookQuery(limit=1000), gate(r, role, ROLES[role])).entries
                   if e.name == "Initech"][0]
        assert initech.relationship_risks == [] and "relationship_risks" in initech.masked_fields
        assert initech.health.startswith("••••")


def test_risk_rows_keep_their_kind(book):
    r, _, _, _ = book
    with engine_for(r.settings.state_db_url).connect() as conn:
        rows = conn.execute(book_risk.select()).all()
    kinds = {(x.risk, x.kind) for x in rows}
    assert ("billing_issue", "account") in kinds and ("champion_cold", "relationship") in kinds
    assert {x.kind for x in rows} == {"account", "relationship"}
    assert all(x.inputs == ",".join(RELATIONSHIP_INPUTS[x.risk]) for x in rows if x.kind == "relationship")


def test_a_book_of_the_older_layout_is_made_again_empty(book, tmp_path):
    from sqlalchemy import inspect, text

    r, _, _, _ = book
    url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    with engine_for(url).begin() as conn:  # the layout before risk kinds: no kind, no inputs
        conn.execute(text("CREATE TABLE book_risk (tenant VARCHAR(100), customer_id VARCHAR(40), risk VARCHAR(40), "
                          "slice VARCHAR(40) NOT NULL, reason TEXT, PRIMARY KEY (tenant, customer_id, risk))"))
        conn.execute(text("INSERT INTO book_risk VALUES ('default', 'c_1', 'inactive', 'product.usage', 'x')"))
    settings = r.settings.model_copy(update={"state_url": url})
    assert settings.state_db_url == url
    assert book_size(settings, settings.tenant) == 0  # the first listing rebuilds it (`custctx book`)
    assert {"kind", "inputs"} <= {c["name"] for c in inspect(engine_for(url)).get_columns("book_risk")}
    with engine_for(url).connect() as conn:
        assert conn.execute(book_risk.select()).all() == []


def test_every_relationship_risk_has_its_inputs_and_the_book_reads_them():
    from tools.booktable import BOOK_SLICES, HEALTH_INPUTS
    from tools.signals import RELATIONSHIP_RISKS

    assert set(RELATIONSHIP_INPUTS) == set(RELATIONSHIP_RISKS)  # a new risk must say what a role needs to see it
    assert {n for inputs in RELATIONSHIP_INPUTS.values() for n in inputs} <= set(HEALTH_INPUTS) <= set(BOOK_SLICES)


def test_a_masked_sort_key_orders_by_name(book):
    """Finance sees health and the churn score masked (they come from conversations too): sorting by
    churn would reveal them, so its listing is by name."""
    r, _, _, _ = book
    fay = gate(r, "finance", "fay")
    listed = [e.name for e in find_customers(r.settings, BookQuery(sort="churn", limit=1000), fay).entries]
    assert listed == [e.name for e in find_customers(r.settings, BookQuery(sort="name", limit=1000), fay).entries]
    assert find_customers(r.settings, BookQuery(sort="churn"), fay).as_dict()["sorted_by"] == "name"
    admin = [e.churn_score for e in find_customers(r.settings, BookQuery(sort="churn", limit=1000)).entries]
    assert admin == sorted(admin, reverse=True) and admin != sorted(admin)  # admin: by churn score
