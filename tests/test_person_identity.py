"""People as customers: identity beyond the account.

A small warehouse of our own (real SQLite; Stripe, Segment and Zendesk tables as the ELT tools
land them) holds shoppers who share the ``example.com`` domain, a Segment user with an anonymous
id stitched through ``identifies`` and ``aliases``, two users who shared one browser, a Zendesk
end user with no organization and two people of the same name at different postcodes. Each
resolves to the right person through the identity index, ``custctx context`` and the HTTP API;
the shared domain and the shared anonymous id merge no one. The story warehouse's Wile Coyote
resolves by his application user id and anonymous ids to Acme Corp.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import insert, select, text
from typer.testing import CliRunner

from agent.bootstrap import Ready, ready
from agent.interfaces.cli.app import app as cli_app
from agent.interfaces.http import create_app
from agent.interfaces.service import ContextService
from tools.embedded import tables as T
from tools.embedded.generate import AS_OF
from tools.embedded.story import ACME_VISITOR_ANONYMOUS_ID
from tools.identity import (
    AmbiguousCustomer,
    BadReference,
    CustomerNotFound,
    IdentityIndex,
    build_index,
)
from tools.mapping.loader import MAPPINGS_DIR
from tools.settings import Settings, SourceConfig
from tools.sources.registry import dispose_engines, engine_for

ADMIN_KEY, DANA_KEY = "k-people-admin", "k-people-dana"
SHOPPERS = [  # Stripe customer id, name, email, postcode
    ("cus_a", "Noah Brown", "noah.brown@example.com", "10115"),
    ("cus_b", "Noah Brown", "noah.brown2@example.com", "80331"),
    ("cus_c", "Emma Wilson", "emma.wilson@example.com", "20095"),
    ("cus_d", "Liam Moore", "liam.moore@example.com", "50667"),
    ("cus_e", "Ava Davis", "ava.davis@example.com", "60311"),
]


# ------------------------------------------------------------------ the people warehouse
def people_warehouse(url: str) -> str:
    eng = engine_for(url)
    for md in (T.stripe, T.segment, T.zendesk):
        md.create_all(eng)
    synced = AS_OF.replace(hour=0)
    with eng.begin() as conn:
        conn.execute(insert(T.st_customer), [
            {"id": cid, "name": name, "email": email, "currency": "eur", "created": 1_700_000_000,
             "_fivetran_synced": synced} for cid, name, email, _ in SHOPPERS])
        conn.execute(text("CREATE TABLE shopper_address (id TEXT PRIMARY KEY, customer_id TEXT, zip TEXT)"))
        conn.execute(text("INSERT INTO shopper_address VALUES (:i, :c, :z)"),
                     [{"i": f"adr_{i}", "c": cid, "z": pc} for i, (cid, _, _, pc) in enumerate(SHOPPERS)])
        conn.execute(insert(T.sg_identifies), [
            {"id": "idf_1", "user_id": "u-noah", "anonymous_id": "a-noah-1", "email": "noah.brown@example.com",
             "name": "Noah Brown", "received_at": synced},
            {"id": "idf_2", "user_id": "u-emma", "anonymous_id": "a-kiosk", "email": "emma.wilson@example.com",
             "name": "Emma Wilson", "received_at": synced},
            {"id": "idf_3", "user_id": "u-liam", "anonymous_id": "a-kiosk", "email": "liam.moore@example.com",
             "name": "Liam Moore", "received_at": synced},
            {"id": "idf_4", "user_id": None, "anonymous_id": "a-visitor", "email": None, "name": None,
             "received_at": synced},
        ])
        conn.execute(insert(T.sg_aliases), [
            {"id": "als_1", "previous_id": "a-noah-0", "user_id": "u-noah", "received_at": synced}])
        conn.execute(insert(T.zd_user), [
            {"id": 501, "organization_id": None, "email": "noah.brown@example.com", "name": "Noah Brown",
             "role": "end-user", "_fivetran_synced": synced},
            {"id": 502, "organization_id": None, "email": "olivia.stone@gmail.com", "name": "Olivia Stone",
             "role": "end-user", "_fivetran_synced": synced},
        ])
    return url


def shop_mapping(path: Path, account_domain: bool = False) -> Path:
    """The built-in Stripe mapping plus the shoppers' postcodes (and, if asked, the email's
    domain marked as an account domain)."""
    doc = yaml.safe_load((MAPPINGS_DIR / "stripe.yaml").read_text(encoding="utf-8"))
    doc["entities"]["address"] = {"table": "shopper_address", "fields": {
        "id": {"column": "id", "required": True}, "customer_id": "customer_id", "postcode": "zip"}}
    doc["identity"]["keys"].append({"entity": "address", "anchor": "customer_id", "field": "postcode",
                                    "kind": "postcode"})
    for key in doc["identity"]["keys"]:
        if key.get("derive_domain"):
            key["account_domain"] = account_domain
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def people_settings(url: str, home: Path, mapping: Path, **extra) -> Settings:
    return Settings(home=home, embedded=False, as_of=AS_OF, state_url=f"sqlite:///{home}/state.sqlite",
                    sources={"billing": SourceConfig(url=url, mapping=str(mapping)),
                             "product": SourceConfig(url=url), "support": SourceConfig(url=url)}, **extra)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("people")
    yield people_warehouse(f"sqlite:///{root / 'people.sqlite'}"), shop_mapping(root / "shop.yaml")
    dispose_engines()


def ready_with_keys(url: str, mapping: Path, home: Path) -> Ready:
    """The people warehouse ready in ``home``, with API keys for an admin and dana.scully."""
    keys = {hashlib.sha256(ADMIN_KEY.encode()).hexdigest(): {"user": "ops", "role": "admin"},
            hashlib.sha256(DANA_KEY.encode()).hexdigest(): {"user": "dana.scully", "role": "account_exec"}}
    (home / "keys.json").write_text(json.dumps(keys), encoding="utf-8")
    return ready(people_settings(url, home, mapping, api_keys_file=home / "keys.json"))


@pytest.fixture(scope="module")
def people(world, tmp_path_factory) -> Ready:
    url, mapping = world
    return ready_with_keys(url, mapping, tmp_path_factory.mktemp("people-home"))


def billing_id(ix: IdentityIndex, ref: str) -> str:
    return ix.resolve(ref)[0].anchors["billing"]


# ------------------------------------------------------------------ the index
def test_shoppers_of_a_shared_domain_stay_apart(people):
    ix = people.index
    for cid, name, email, _ in SHOPPERS:
        customer, how = ix.resolve(email)
        assert (customer.anchors["billing"], customer.name, how) == (cid, name, "email")
        assert customer.primary_domain is None  # example.com is no one's account domain
    with pytest.raises(CustomerNotFound):
        ix.resolve("example.com")
    with pytest.raises(CustomerNotFound):  # an unknown shopper is not "someone at example.com"
        ix.resolve("mia.taylor@example.com")


def test_an_account_domain_mark_merges_the_records_sharing_it(world, tmp_path):
    url, _ = world
    settings = people_settings(url, tmp_path, shop_mapping(tmp_path / "b2b.yaml", account_domain=True))
    build_index(settings)
    ix = IdentityIndex.for_settings(settings)
    assert len({ix.resolve(email)[0].customer_id for _, _, email, _ in SHOPPERS}) == 1
    assert ix.resolve("example.com")[1] == "domain"


def test_application_user_id_and_anonymous_ids_resolve_to_the_person(people):
    ix = people.index
    assert ix.resolve("user:u-noah")[1] == "user_id"
    assert ix.resolve("anon:a-noah-1")[1] == "anonymous_id"  # identifies: anonymous → user
    for ref in ("user:u-noah", "anon:a-noah-1", "anon:a-noah-0", "u-noah", "a-noah-0"):  # a-noah-0: aliases
        assert billing_id(ix, ref) == "cus_a", ref
    assert billing_id(ix, "user:u-emma") == "cus_c" and billing_id(ix, "user:u-liam") == "cus_d"


def test_a_shared_anonymous_id_merges_no_one(people):
    with pytest.raises(AmbiguousCustomer) as exc:
        people.index.resolve("anon:a-kiosk")
    assert {c.name for c in exc.value.candidates} == {"Emma Wilson", "Liam Moore"}
    with pytest.raises(CustomerNotFound):  # an anonymous visitor never identified is no one
        people.index.resolve("anon:a-visitor")


def test_support_requester_id_resolves_to_the_person(people):
    ix = people.index
    assert billing_id(ix, "support_user:501") == "cus_a" and billing_id(ix, "zendesk_user:501") == "cus_a"
    assert ix.resolve("zendesk_user:501")[1] == "support_user_id"


def test_a_person_known_to_support_only_is_a_customer_of_their_own(people):
    ix = people.index
    olivia, how = ix.resolve("zendesk_user:502")
    assert (olivia.name, olivia.anchors, how) == ("Olivia Stone", {}, "support_user_id")
    for ref in ("olivia.stone@gmail.com", "Olivia Stone"):
        assert ix.resolve(ref)[0].customer_id == olivia.customer_id, ref


def test_name_and_postcode_tell_two_namesakes_apart(people):
    ix = people.index
    assert billing_id(ix, "name+postcode:Noah Brown, 10115") == "cus_a"
    assert billing_id(ix, "NAME+POSTCODE: noah  BROWN , 80 331") == "cus_b"
    assert ix.resolve("name+postcode:Noah Brown, 10115")[1] == "name+postcode"
    with pytest.raises(AmbiguousCustomer):
        ix.resolve("Noah Brown")
    with pytest.raises(CustomerNotFound):
        ix.resolve("name+postcode:Noah Brown, 99999")


@pytest.mark.parametrize("ref", ["name+postcode:Noah Brown", "name+postcode:, 10115", "user:", "anon:  "])
def test_malformed_person_references_are_one_line(people, ref):
    with pytest.raises(BadReference) as exc:
        people.index.resolve(ref)
    assert "\n" not in str(exc.value)


def test_unknown_user_id_is_not_found(people):
    with pytest.raises(CustomerNotFound) as exc:
        people.index.resolve("user:nobody")
    assert str(exc.value) == "No customer matches 'user:nobody'."


def test_people_resolve_the_same_on_postgresql(pg_server, tmp_path):
    url = people_warehouse(pg_server.create_database())
    settings = people_settings(url, tmp_path, shop_mapping(tmp_path / "shop.yaml"))
    build_index(settings)
    ix = IdentityIndex.for_settings(settings)
    for ref, cid in (("user:u-noah", "cus_a"), ("anon:a-noah-0", "cus_a"), ("zendesk_user:501", "cus_a"),
                     ("name+postcode:Noah Brown, 80331", "cus_b"), ("emma.wilson@example.com", "cus_c")):
        assert billing_id(ix, ref) == cid, ref
    with pytest.raises(CustomerNotFound):
        ix.resolve("example.com")
    with pytest.raises(AmbiguousCustomer):
        ix.resolve("anon:a-kiosk")


# ------------------------------------------------------------------ custctx context
def cli_env(url: str, mapping: Path, home: Path) -> dict[str, str]:
    return {"CUSTCTX_HOME": str(home), "CUSTCTX_EMBEDDED": "false", "CUSTCTX_AS_OF": AS_OF.isoformat(),
            "CUSTCTX_SOURCES__BILLING__URL": url, "CUSTCTX_SOURCES__BILLING__MAPPING": str(mapping),
            "CUSTCTX_SOURCES__PRODUCT__URL": url, "CUSTCTX_SOURCES__SUPPORT__URL": url}


def context_json(env: dict[str, str], ref: str) -> dict:
    got = CliRunner().invoke(cli_app, ["context", ref, "--format", "json"], env=env)
    assert got.exit_code == 0, got.stderr
    return json.loads(got.stdout)


def test_custctx_context_resolves_people(world, tmp_path):
    url, mapping = world
    env = cli_env(url, mapping, tmp_path)
    noah = context_json(env, "user:u-noah")
    assert noah["customer"]["name"] == "Noah Brown"
    for ref in ("anon:a-noah-0", "zendesk_user:501", "name+postcode:Noah Brown, 10115"):
        assert context_json(env, ref)["customer_id"] == noah["customer_id"], ref
    olivia = context_json(env, "zendesk_user:502")  # a person-customer: no record in billing or product
    assert olivia["customer"]["name"] == "Olivia Stone" and olivia["customer_id"] != noah["customer_id"]
    namesake = context_json(env, "name+postcode:Noah Brown, 80331")
    assert namesake["customer_id"] != noah["customer_id"] and namesake["customer"]["name"] == "Noah Brown"
    shared = CliRunner().invoke(cli_app, ["context", "example.com"], env=env)
    assert shared.exit_code == 1 and shared.stderr.strip() == "error: No customer matches 'example.com'."


def test_custctx_context_resolves_a_segment_user_and_anonymous_id_of_the_story(sqlite_warehouse, tmp_path):
    with engine_for(sqlite_warehouse).connect() as conn:
        wile, anon = conn.execute(select(T.sg_identifies.c.user_id, T.sg_identifies.c.anonymous_id)
                                  .where(T.sg_identifies.c.email == "wile.coyote@acme.com")).one()
    env = {"CUSTCTX_HOME": str(tmp_path), "CUSTCTX_WAREHOUSE_URL": sqlite_warehouse,
           "CUSTCTX_AS_OF": AS_OF.isoformat(), "CUSTCTX_SEED_CUSTOMERS": "0"}
    acme = context_json(env, f"user:{wile}")
    assert acme["customer"]["name"] == "Acme Corp"
    for ref in (f"anon:{anon}", f"anon:{ACME_VISITOR_ANONYMOUS_ID}"):  # identifies; aliases (before sign-up)
        assert context_json(env, ref)["customer_id"] == acme["customer_id"], ref


# ------------------------------------------------------------------ HTTP
@pytest.fixture(scope="module")
def api(people) -> Iterator[TestClient]:
    service = ContextService(people.settings)
    with TestClient(create_app(service.settings, service=service), raise_server_exceptions=False) as client:
        yield client
    service.close()


def get(api: TestClient, key: str, **params: str):
    return api.get("/v1/context", params={**params, "slices": "billing.status"},
                   headers={"Authorization": f"Bearer {key}"})


def test_the_api_takes_the_session_user_id_or_anonymous_id(api):
    by_user = get(api, ADMIN_KEY, user_id="u-noah")
    assert by_user.status_code == 200 and by_user.json()["customer"]["name"] == "Noah Brown"
    by_anon = get(api, ADMIN_KEY, anonymous_id="a-noah-0")
    assert by_anon.status_code == 200 and by_anon.json()["customer_id"] == by_user.json()["customer_id"]
    by_ref = api.get("/v1/customers/user:u-noah/context", params={"slices": "billing.status"},
                     headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert by_ref.status_code == 200 and by_ref.json()["customer_id"] == by_user.json()["customer_id"]
    for params in ({}, {"user_id": "u-noah", "anonymous_id": "a-noah-0"}, {"customer": "x", "user_id": "u"}):
        bad = get(api, ADMIN_KEY, **params)
        assert bad.status_code == 422 and bad.json()["error"] == "invalid_request", params
    ambiguous = get(api, ADMIN_KEY, anonymous_id="a-kiosk")
    assert ambiguous.status_code == 409 and len(ambiguous.json()["candidates"]) == 2


def test_a_person_hidden_from_the_caller_is_not_found_as_a_missing_one(api):
    hidden, missing = get(api, DANA_KEY, user_id="u-noah"), get(api, DANA_KEY, user_id="u-nobody")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["error"] == missing.json()["error"] == "customer_not_found"
    assert hidden.json()["message"].replace("u-noah", "X") == missing.json()["message"].replace("u-nobody", "X")
    assert "Noah" not in hidden.text


# ------------------------------------------------------------------ the linking rule itself
def test_a_person_in_two_accounts_bridges_neither():
    from tools.identity_graph import Node, group_records
    from tools.mapping.engine import IdentityKey

    group = IdentityKey("group", "group_id", "group_id", "product_id")
    member = IdentityKey("group", "user_id", "group_id", "product_id", person=True)
    user = IdentityKey("identify", "user_id", "user_id", "user_id", person=True)
    nodes = {("product", "g1"): Node(), ("product", "g2"): Node(), ("product", "person:u1"): Node(person=True)}
    nodes["product", "g1"].add(group, "g1")
    nodes["product", "g2"].add(group, "g2")
    for value, key in (("g1", member), ("g2", member), ("u1", user)):
        nodes["product", "person:u1"].add(key, value)
    groups = group_records(nodes)
    assert sorted(tuple(g.members) for g in groups) == [(("product", "g1"),), (("product", "g2"),)]
    assert all(g.riders == [("product", "person:u1")] for g in groups)  # user:u1 is ambiguous, not a bridge


def test_triage_takes_the_session_user_id(api):
    ticket = {"subject": "Card declined", "description": "My card was declined at checkout, please help."}
    got = api.post("/v1/triage", json={"ticket": ticket, "user_id": "u-noah"},
                   headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert got.status_code == 200, got.text
    assert "Noah Brown" in json.dumps(got.json()["customer"])
    both = api.post("/v1/triage", json={"ticket": ticket, "user_id": "u-noah", "customer": "x"},
                    headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert both.status_code == 422 and both.json()["error"] == "invalid_request"
