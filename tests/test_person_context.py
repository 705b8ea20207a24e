"""People as customers: their own tickets and product usage.

The people warehouse of ``tests/test_person_identity.py`` (real SQLite; Stripe, Segment and
Zendesk tables as the ELT tools land them) plus tickets and events: Olivia, a Zendesk end user
with no organization, is a customer of her own and gets the tickets she requested; Zoe, a Segment
user in no group, gets the usage of her own user id; Noah, a Stripe shopper, gets the tickets of
his Zendesk user and the usage of his application user (support and product know him only as a
person); a Segment group stays an account, read by its group. Single reads equal bulk reads
(what a refresh uses), on SQLite and PostgreSQL; a caller who may not see a person sees nothing
of their tickets.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
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
from tools.identity import (
    IdentityIndex,
    build_index,
    ensure_index,
    identity_customer,
    source_fingerprint,
)
from tools.identity import _ref as identity_ref
from tools.mapping.loader import MAPPINGS_DIR, load_mapping
from tools.slices import Slice
from tools.sources.base import CustomerRef, ReadClock, SliceNotFound
from tools.sources.batch import RowBatch
from tools.sources.registry import dispose_engines, engine_for, reader
from tools.sources.support import SupportReader

from .test_person_identity import (
    ADMIN_KEY,
    DANA_KEY,
    cli_env,
    people_settings,
    people_warehouse,
    ready_with_keys,
    shop_mapping,
)

DAY = timedelta(days=1)
OLIVIA, NOAH = 502, 501  # Zendesk end users, no organization


def person_warehouse(url: str) -> str:
    """The people warehouse, with tickets, a group account and events."""
    people_warehouse(url)
    synced = AS_OF.replace(hour=0)
    ticket = {"organization_id": None, "priority": "normal", "via_channel": "web", "_fivetran_synced": synced}
    with engine_for(url).begin() as conn:
        conn.execute(insert(T.zd_ticket), [
            {**ticket, "id": 9001, "requester_id": OLIVIA, "subject": "Refund for order 77", "status": "open",
             "description": "I returned order 77 two weeks ago.", "custom_issue_type": "billing",
             "created_at": AS_OF - 3 * DAY},
            {**ticket, "id": 9002, "requester_id": OLIVIA, "subject": "Cannot log in", "status": "solved",
             "description": "Password reset mail never arrives.", "custom_issue_type": "account_access",
             "created_at": AS_OF - 20 * DAY},
            {**ticket, "id": 9003, "requester_id": NOAH, "subject": "Where is my parcel", "status": "pending",
             "description": "Tracking shows nothing.", "custom_issue_type": "shipping", "created_at": AS_OF - DAY},
            {**ticket, "id": 9004, "requester_id": OLIVIA, "subject": "Filed after the as-of date", "status": "new",
             "description": "Not yet.", "custom_issue_type": "billing", "created_at": AS_OF + 5 * DAY},
        ])
        conn.execute(insert(T.zd_ticket_field_history), [
            {"ticket_id": 9002, "field_name": "status", "updated": AS_OF - 20 * DAY + timedelta(hours=10),
             "value": "solved", "_fivetran_synced": synced},
            {"ticket_id": 9002, "field_name": "satisfaction_score", "updated": AS_OF - 19 * DAY, "value": "5",
             "_fivetran_synced": synced},
        ])
        conn.execute(insert(T.zd_ticket_comment), [
            {"id": 1, "ticket_id": 9001, "user_id": 900, "body": "We are checking with the warehouse.",
             "public": True, "created": AS_OF - 2 * DAY, "_fivetran_synced": synced},
            {"id": 2, "ticket_id": 9001, "user_id": OLIVIA, "body": "Any news?", "public": True,
             "created": AS_OF - DAY, "_fivetran_synced": synced},
        ])
        conn.execute(insert(T.sg_identifies), [
            {"id": "idf_z", "user_id": "u-zoe", "anonymous_id": "a-zoe", "email": "zoe.quinn@gmail.com",
             "name": "Zoe Quinn", "received_at": synced},
            {"id": "idf_g", "user_id": "u-grp", "anonymous_id": "a-grp", "email": "kim@globex.test",
             "name": "Kim Lee", "received_at": synced}])
        conn.execute(insert(T.sg_groups), [
            {"id": "grp_1", "user_id": "u-grp", "group_id": "g-globex", "name": "Globex", "website": "globex.test",
             "received_at": synced}])
        conn.execute(insert(T.sg_tracks), [
            {"id": f"t{i}", "user_id": user, "anonymous_id": None, "event": event, "timestamp": AS_OF - days * DAY,
             "received_at": AS_OF - days * DAY} for i, (user, event, days) in enumerate([
                 ("u-zoe", "logged_in", 1), ("u-zoe", "report_created", 2), ("u-zoe", "dashboard_viewed", 10),
                 ("u-zoe", "report_created", 11), ("u-zoe", "logged_in", 12),
                 ("u-noah", "logged_in", 40),
                 ("u-grp", "logged_in", 3), ("u-grp", "export_run", 3)])])
    return url


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("person-context")
    yield person_warehouse(f"sqlite:///{root / 'people.sqlite'}"), shop_mapping(root / "shop.yaml")
    dispose_engines()


@pytest.fixture(scope="module")
def people(world, tmp_path_factory) -> Ready:
    url, mapping = world
    return ready_with_keys(url, mapping, tmp_path_factory.mktemp("person-context-home"))


def context_json(env: dict[str, str], ref: str) -> dict:
    got = CliRunner().invoke(cli_app, ["context", ref, "--format", "json"], env=env)
    assert got.exit_code == 0, got.stderr
    return json.loads(got.stdout)


def slice_of(context: dict, name: str) -> dict:
    return next(s for s in context["slices"] if s["name"] == name) if isinstance(context["slices"], list) \
        else context["slices"][name]


# ------------------------------------------------------------------ the index carries the person ids
def test_a_person_customer_carries_their_person_ids(people):
    ix = people.index
    olivia, zoe, noah = (ix.resolve(ref)[0] for ref in ("zendesk_user:502", "user:u-zoe", "user:u-noah"))
    assert (olivia.anchors, olivia.person_ids) == ({}, {"support": ("502",)})
    assert (zoe.anchors, zoe.person_ids) == ({}, {"product": ("u-zoe",)})
    assert noah.anchors == {"billing": "cus_a"} and noah.person_ids == {"product": ("u-noah",), "support": ("501",)}
    globex = ix.resolve("product:g-globex")[0]
    assert globex.anchors == {"product": "g-globex"} and globex.person_ids == {"product": ("u-grp",)}
    # a person riding with several customers is read for none of them
    emma_or_liam = [ix.resolve(r)[0] for r in ("user:u-emma", "user:u-liam")]
    assert all("support" not in c.person_ids for c in emma_or_liam)


# ------------------------------------------------------------------ custctx context
def test_a_zendesk_end_user_with_no_organization_gets_their_tickets(world, tmp_path):
    env = cli_env(*world, tmp_path)
    olivia = context_json(env, f"zendesk_user:{OLIVIA}")
    tickets = slice_of(olivia, "support.tickets")["tickets"]
    assert [t["id"] for t in tickets] == ["9001", "9002"]  # newest first; 9004 is after the as-of date
    assert [(c["author"], c["text"]) for c in tickets[0]["comments"]] == [
        ("agent", "We are checking with the warehouse."), ("customer", "Any news?")]
    summary = slice_of(olivia, "support.summary")
    assert (summary["total_tickets"], summary["open_tickets"], summary["avg_resolution_hours"], summary["csat"]) \
        == (2, 1, 10.0, 5.0)
    assert summary["organization_id"] == f"support_user:{OLIVIA}"
    noah = context_json(env, "user:u-noah")  # a shopper: billing's account, support's requester
    assert [t["subject"] for t in slice_of(noah, "support.tickets")["tickets"]] == ["Where is my parcel"]


def test_a_segment_user_in_no_group_gets_their_usage(world, tmp_path):
    env = cli_env(*world, tmp_path)
    usage = slice_of(context_json(env, "user:u-zoe"), "product.usage")
    assert (usage["group_id"], usage["active_users_30d"], usage["active_users_7d"]) == ("user:u-zoe", 1, 1)
    assert (usage["events_last_7d"], usage["events_prior_7d"], usage["trend"]) == (2, 3, "declining")
    assert usage["days_since_login"] == 1 and usage["features_used_30d"] == ["dashboard_viewed", "report_created"]
    noah = slice_of(context_json(env, "anon:a-noah-0"), "product.usage")
    assert (noah["active_users_30d"], noah["days_since_login"], noah["trend"]) == (0, 40, "no_activity")
    globex = slice_of(context_json(env, "product:g-globex"), "product.usage")  # an account: its group's users
    assert (globex["group_id"], globex["events_last_7d"], globex["features_used_30d"]) == ("g-globex", 2,
                                                                                          ["export_run"])


def test_a_person_no_source_knows_gets_a_not_found_gap(world, tmp_path):
    env = cli_env(*world, tmp_path)
    olivia = context_json(env, f"zendesk_user:{OLIVIA}")  # support knows her; product does not
    assert {g["slice"]: g["kind"] for g in olivia["gaps"]}.get("product.usage") == "not_found"


def test_an_index_of_the_older_layout_is_rebuilt_with_person_ids(world, tmp_path):
    url, mapping = world
    settings = people_settings(url, tmp_path, mapping)
    with engine_for(settings.state_db_url).begin() as conn:  # the index as it was before person ids
        conn.execute(text("CREATE TABLE identity_customer (customer_id VARCHAR(40) PRIMARY KEY, "
                          "name VARCHAR(255) NOT NULL, name_norm VARCHAR(255) NOT NULL, primary_domain VARCHAR(255), "
                          "anchors TEXT NOT NULL, domains TEXT NOT NULL, emails TEXT NOT NULL)"))
        conn.execute(text("CREATE TABLE identity_meta (key VARCHAR(50) PRIMARY KEY, value TEXT)"))
        conn.execute(text("INSERT INTO identity_meta VALUES ('fingerprint', :f)"),
                     {"f": source_fingerprint(settings)})
    assert ensure_index(settings)
    olivia = IdentityIndex.for_settings(settings).resolve(f"zendesk_user:{OLIVIA}")[0]
    assert olivia.person_ids == {"support": ("502",)}


# ------------------------------------------------------------------ HTTP, and who may see it
@pytest.fixture(scope="module")
def api(people) -> Iterator[TestClient]:
    service = ContextService(people.settings)
    with TestClient(create_app(service.settings, service=service), raise_server_exceptions=False) as client:
        yield client
    service.close()


def get(api: TestClient, key: str, **params: str):
    return api.get("/v1/context", params={**params, "slices": "support.tickets,support.summary,product.usage"},
                   headers={"Authorization": f"Bearer {key}"})


def test_the_api_gives_a_session_user_their_own_tickets_and_usage(api):
    noah = get(api, ADMIN_KEY, user_id="u-noah")
    assert noah.status_code == 200, noah.text
    assert [t["id"] for t in slice_of(noah.json(), "support.tickets")["tickets"]] == ["9003"]
    zoe = get(api, ADMIN_KEY, anonymous_id="a-zoe")
    assert zoe.status_code == 200, zoe.text
    assert slice_of(zoe.json(), "product.usage")["events_last_7d"] == 2


def test_a_person_hidden_from_the_caller_shows_none_of_their_tickets(api):
    for params in ({"user_id": "u-noah"}, {"anonymous_id": "a-zoe"}):
        hidden = get(api, DANA_KEY, **params)
        assert hidden.status_code == 404 and hidden.json()["error"] == "customer_not_found", params
        assert "parcel" not in hidden.text and "Noah" not in hidden.text and "Zoe" not in hidden.text


# ------------------------------------------------------------------ bulk equals single
def _customers(people: Ready) -> list[CustomerRef]:
    with engine_for(people.settings.state_db_url).connect() as conn:
        return [identity_ref(r._mapping) for r in conn.execute(select(identity_customer))]


def _plain(result):
    if isinstance(result, Exception):
        return (type(result).__name__, str(result))
    data = result.model_dump(mode="json")
    data["provenance"].pop("fetched_at")
    return data


def assert_bulk_equals_single(people: Ready) -> None:
    customers = _customers(people)
    clock = ReadClock(as_of=AS_OF, settings=people.settings)
    found: set[tuple[str, str]] = set()
    for source, names in (("support", ["support.summary", "support.tickets"]), ("product", ["product.usage"])):
        rdr = reader(people.settings, source)
        assert rdr is not None
        bulk = rdr.read_many({n: customers for n in names}, clock, RowBatch())
        for name in names:
            for c in customers:
                single: Slice | SliceNotFound
                try:
                    single = rdr.read(name, c, clock)
                    found.add((c.name, name.split(".")[0]))
                except SliceNotFound as exc:
                    single = exc
                assert _plain(bulk[c.customer_id, name]) == _plain(single), (name, c.name)
    assert found == {("Olivia Stone", "support"), ("Noah Brown", "support"), ("Zoe Quinn", "product"),
                     ("g-globex", "product"), ("Noah Brown", "product"), ("Emma Wilson", "product"),
                     ("Liam Moore", "product")}  # Emma's and Liam's users have no events: no activity


def test_bulk_reads_equal_single_reads_for_people(people):
    assert_bulk_equals_single(people)


def test_bulk_reads_equal_single_reads_for_people_on_postgresql(pg_server, tmp_path):
    url = person_warehouse(pg_server.create_database())
    settings = people_settings(url, tmp_path, shop_mapping(tmp_path / "shop.yaml"))
    build_index(settings)
    assert_bulk_equals_single(ready(settings))


# ------------------------------------------------------------------ a mapping without requesters
def test_a_mapping_without_requester_ids_names_the_gap(people, tmp_path):
    doc = yaml.safe_load((MAPPINGS_DIR / "zendesk.yaml").read_text(encoding="utf-8"))
    del doc["entities"]["ticket"]["fields"]["requester_id"]
    (tmp_path / "zd.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    rdr = SupportReader(load_mapping(str(tmp_path / "zd.yaml")), engine_for(people.settings.source("support").url))
    olivia = people.index.resolve(f"zendesk_user:{OLIVIA}")[0]
    with pytest.raises(SliceNotFound) as exc:
        rdr.read("support.tickets", olivia, ReadClock(as_of=AS_OF, settings=people.settings))
    assert "\n" not in str(exc.value) and "maps no ticket requester_id" in str(exc.value)
