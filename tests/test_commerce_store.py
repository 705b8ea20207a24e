"""A store nobody's mapping was written for (tests/commerce_store.py: ≈50 shoppers, orders with
items, refunds, several cards, addresses), connected with one mapping file and one URL per
source, checked against the generator's truth for every person: through `custctx context`,
`custctx ask` and the HTTP API."""

from __future__ import annotations

import hashlib
import json
import subprocess

import httpx
import pytest
from typer.testing import CliRunner

from agent.interfaces.cli.app import app

from .commerce_store import AS_OF, ShopperTruth, generate, names_from_expressions, write_mappings
from .test_mcp import custctx_cmd, free_port, server_env, stop, wait_until_up

ADMIN, AGENT = "k-store-admin", "k-store-agent"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corner-shop")
    url = f"sqlite:///{folder / 'shop.sqlite'}"
    truth = generate(url)
    people, mapping = write_mappings(folder)
    keys = {hashlib.sha256(ADMIN.encode()).hexdigest(): {"user": "ops", "role": "admin"},
            hashlib.sha256(AGENT.encode()).hexdigest(): {"user": "alice", "role": "support_agent"}}
    (folder / "keys.yaml").write_text(json.dumps(keys), encoding="utf-8")
    env = {
        "CUSTCTX_HOME": str(folder / "home"), "CUSTCTX_EMBEDDED": "false", "CUSTCTX_AS_OF": AS_OF.isoformat(),
        "CUSTCTX_SOURCES__CRM__URL": url, "CUSTCTX_SOURCES__CRM__MAPPING": str(people),
        "CUSTCTX_SOURCES__COMMERCE__URL": url, "CUSTCTX_SOURCES__COMMERCE__MAPPING": str(mapping),
        "CUSTCTX_API_KEYS_FILE": str(folder / "keys.yaml"),
    }
    return folder, truth, env


@pytest.fixture
def cli(store, monkeypatch):
    _, _, env = store
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    runner = CliRunner()

    def run(*args: str) -> str:
        got = runner.invoke(app, list(args))
        assert got.exit_code == 0, got.output
        return got.stdout

    return run


def money(v: float) -> str:
    return f"{v:,.2f}"


def check_view(view: dict, t: ShopperTruth, expiry: bool = True) -> None:
    """A context's reference view against the truth of one shopper."""
    s = view["slices"]
    orders, refunds = s["commerce.orders"], s["commerce.refunds"]
    assert view["customer"]["email"] == t.email
    assert orders["order_count"] == t.orders and orders["status_counts"] == t.status_counts, t.email
    assert orders["total_paid"] == t.paid and orders["total_refunded"] == t.refunded, t.email
    assert refunds["refund_count"] == t.refunds and refunds["total_refunded"] == t.refunded
    assert all(o["status"] in ("open", "fulfilled", "cancelled", "refunded") for o in orders["orders"])
    assert all(o["items"] for o in orders["orders"])  # every order with its items
    got_addresses = {(a["line1"], a["city"], a["postcode"], a["country"], a["default"])
                     for a in s["commerce.addresses"]["addresses"]}
    assert got_addresses == set(t.addresses), t.email
    assert s["commerce.addresses"]["addresses"][0]["default"]  # the default first
    cards = s["commerce.payment_methods"]["methods"]
    if expiry:
        assert {(c["brand"], c["last4"], c["exp_month"], c["exp_year"], c["default"]) for c in cards} == set(t.cards)
    else:
        assert {(c["brand"], c["last4"], c["default"]) for c in cards} == {(b, l4, d) for b, l4, _, _, d in t.cards}
        assert all(str(c[f]).startswith("•••• masked") for c in cards for f in ("exp_month", "exp_year")), cards


def test_the_store_is_what_the_issue_asks_for(store):
    _, truth, _ = store
    people = list(truth.values())
    assert len(people) == 50
    assert sum(p.orders for p in people) > 100 and sum(p.refunds for p in people) > 10
    assert sum(len(p.cards) > 1 for p in people) > 20 and sum(len(p.addresses) > 1 for p in people) > 20
    assert {s for p in people for s in p.status_counts} == {"open", "fulfilled", "cancelled", "refunded"}
    assert len({p.email.rsplit("@", 1)[1] for p in people}) == 1  # one shared domain: never merges them


def test_context_json_is_right_for_one_person_and_names_come_from_the_expression(store, cli):
    _, truth, _ = store
    t = next(iter(truth.values()))
    view = json.loads(cli("context", t.email, "--format", "json"))
    check_view(view, t)
    assert view["matched_by"] == "email"
    if not names_from_expressions():
        pytest.xfail("the mapping engine has no field expressions (concat) yet: names are first names only")
    assert view["customer"]["name"] == t.name


def test_context_is_right_for_every_person(store, cli):
    _, truth, _ = store
    names = []
    for t in truth.values():
        view = json.loads(cli("context", t.email, "--format", "json"))
        check_view(view, t)
        names.append((view["customer"]["name"], t.name))
    if not names_from_expressions():
        pytest.xfail("the mapping engine has no field expressions (concat) yet: names are first names only")
    assert all(got == want for got, want in names)


def test_mappings_check_passes_on_the_store(store, cli):
    out = cli("mappings", "check")  # exit 0: no problem with either mapping
    assert "crm: " in out and "people.yaml ok" in out and "commerce: " in out and "store.yaml ok" in out


def test_the_brief_has_an_orders_section_in_commerce_words(store, cli):
    _, truth, _ = store
    t = max(truth.values(), key=lambda p: (p.refunds, p.orders))
    md = cli("context", t.email)
    assert "### Orders and Refunds" in md
    assert f"**Orders**: {t.orders} orders" in md and f"refunded {money(t.refunded)} EUR" in md
    for brand, last4, *_ in t.cards:
        assert f"{brand} •{last4}" in md
    for line1, *_ in t.addresses:
        assert line1 in md
    for words in ("Closed lost", "Closed won", "ticket", "deal"):
        assert words not in md.split("### Orders and Refunds")[1].split("###")[0]


def answer_of(cli, question: str, email: str) -> dict:
    return json.loads(cli("ask", question, "--customer", email, "--format", "json"))


def check_answer(res: dict, t: ShopperTruth) -> None:
    text = res["answer"]
    assert set(res["slices_used"]) >= {"commerce.orders", "commerce.refunds", "commerce.payment_methods",
                                       "commerce.addresses"}
    if t.orders:
        assert f"{t.orders} order{'s' if t.orders != 1 else ''} (" in text, (t.email, text)
        for status, n in t.status_counts.items():
            assert f"{n} {status}" in text
        assert f"paid {money(t.paid)} EUR, refunded {money(t.refunded)} EUR" in text
    else:
        assert "no orders placed" in text
    if t.refunds:
        assert f"{t.refunds} refund{'s' if t.refunds != 1 else ''}, {money(t.refunded)} EUR in total" in text
    for brand, last4, month, year, default in t.cards:
        assert f"{brand} •{last4} exp {month:02d}/{year}" + (" (default)" if default else "") in text, text
    for line1, city, postcode, country, default in t.addresses:
        assert any(line1 in line and city in line and postcode in line and country in line
                   and (("(default)" in line) == default) for line in text.splitlines()), (t.email, line1)
    assert "Closed lost" not in text and "Closed won" not in text


QUESTION = "What orders, refunds, cards on file and addresses does this customer have?"


def test_ask_answers_orders_refunds_cards_and_addresses(store, cli):
    _, truth, _ = store
    people = sorted(truth.values(), key=lambda p: (-p.refunds, -len(p.cards)))[:3]
    for t in people:
        check_answer(answer_of(cli, QUESTION, t.email), t)


def test_ask_is_right_for_every_person(store, cli):
    _, truth, _ = store
    for t in truth.values():
        check_answer(answer_of(cli, QUESTION, t.email), t)


@pytest.fixture(scope="module")
def api(store):
    folder, _, env = store
    port = free_port()
    proc = subprocess.Popen(custctx_cmd("serve", "api", "--port", str(port)), env={**server_env(folder / "home"), **env},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_up(proc, f"http://127.0.0.1:{port}/healthz")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def test_the_api_is_right_for_every_person_and_masks_expiry_for_support(store, api):
    _, truth, _ = store
    with httpx.Client(base_url=api, timeout=60) as client:
        for t in truth.values():
            got = client.get(f"/v1/customers/{t.email}/context", headers={"Authorization": f"Bearer {ADMIN}"})
            assert got.status_code == 200, got.text
            check_view(got.json(), t)
        t = max(truth.values(), key=lambda p: len(p.cards))
        got = client.get(f"/v1/customers/{t.email}/context", headers={"Authorization": f"Bearer {AGENT}"})
        assert got.status_code == 200, got.text
        view = got.json()
        check_view(view, t, expiry=False)
        assert view["provenance"]["commerce.payment_methods"]["masked_for"] == "support_agent"
        missing = client.get("/v1/customers/nobody@example.com/context", headers={"Authorization": f"Bearer {ADMIN}"})
        assert missing.status_code == 404
