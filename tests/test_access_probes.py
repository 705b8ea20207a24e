"""The access eval: every principal of evals/datasets/access.yaml × every story customer ×
every slice, through the CLI's read path, the graphs, the MCP server and the HTTP API —
zero leaks, and every read audited."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage

from agent.brief import render_brief
from agent.prompting import context_block
from agent.runs import Runner
from evals.access_probes import (  # noqa: F401
    CUSTOMERS,
    DATASET,
    EXPECT,
    REFS,
    TENANT,
    Baseline,
    Expect,
    at,
    audited,
    check_audit,
    check_view,
    concrete,
    every_slice,
    expectations,
    expected_masks,
    hidden_like_missing,
    needles,
    strings,
    value_needles,
)
from tools.access.policy import marker
from tools.access.principal import Principal
from tools.context.assembly import read_customer_context
from tools.context.view import reference_view
from tools.identity import CustomerNotFound
from tools.slices import SLICE_NAMES
from tools.sources.base import utcnow

from .conftest import settings_for
from .fakes import ScriptedChatModel
from .test_cli import custctx

ROOT = Path(__file__).parents[1]


# -------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def probe(sqlite_warehouse, tmp_path_factory):
    """A runner on the story warehouse (own state database), the admin baseline of every story
    customer, and an API key per principal."""
    home = tmp_path_factory.mktemp("probes")
    keys = {f"key-{e.label}": {"user": e.user, "role": e.role} for e in EXPECT}
    (home / "keys.json").write_text(json.dumps(keys), encoding="utf-8")
    settings = settings_for(sqlite_warehouse, home, tenant=TENANT, api_keys_file=home / "keys.json")
    runner = Runner(settings, principal=Principal(TENANT, "root", "admin", interface="runner"))
    baseline = {}
    for ref in REFS:
        c = runner.customer_context(ref, None)
        view = reference_view(c)
        baseline[ref] = Baseline(c.customer_id, c.name, view["slices"])
    yield settings, runner, baseline
    runner.close()


def test_the_dataset_covers_every_role_and_story_customer():
    assert {e.role for e in EXPECT} >= {"support_agent", "support_lead", "account_exec", "finance", "admin"}
    assert len(CUSTOMERS) == 13
    dana = next(e for e in EXPECT if e.label == "account_exec:dana.scully")
    assert {"acme.com", "umbrella-health.com"} <= dana.visible and "massivedynamic.com" not in dana.visible


def test_every_role_every_story_customer_every_slice_zero_leaks(probe):
    """The CLI's read path (`custctx context`: resolve as the principal may, then read through
    memory, the guard and the policy), rendered as the JSON, the brief and the model's block."""
    settings, runner, baseline = probe
    problems: dict[str, list[str]] = {}
    reads = records = 0
    for exp in EXPECT:
        for ref in REFS:
            base, since = baseline[ref], utcnow()
            visible = ref in exp.visible
            where = f"{exp.label} × {ref}"
            try:
                c = read_customer_context(runner.request(exp.principal("cli")), ref, list(SLICE_NAMES))
            except CustomerNotFound as exc:
                found = False
                message = str(exc)
                if message != f"No customer matches {ref!r}." and base.name in message:
                    problems.setdefault(where, []).append(f"not-found message names it: {message}")
            else:
                found = True
                block = context_block({"name": c.name}, c.slices, c.gaps, c.traits.model_dump(mode="json"),
                                      [x.model_dump(mode="json") for x in c.conflicts])
                problems.setdefault(where, []).extend(
                    check_view(reference_view(c), base, exp, [render_brief(c), block]))
                reads += len(every_slice(exp))
            if found != visible:
                problems.setdefault(where, []).append(f"visible {found}, expected {visible}")
            recs = audited(settings, base.customer_id, since, "cli", exp)
            records += len(recs)
            problems.setdefault(where, []).extend(check_audit(recs, exp, visible))
    problems = {k: v for k, v in problems.items() if v}
    print(f"\naccess probes (CLI read path): {len(EXPECT)} principals × {len(REFS)} customers, "
          f"{reads} slice reads, {records} audit records, {sum(map(len, problems.values()))} problems")
    assert problems == {}


# ------------------------------------------------------------------ the graphs
GRAPH_CUSTOMERS = ("acme.com", "massivedynamic.com", "hooli.xyz", "soylent.com", "cyberdyne.ai")


def test_reviews_show_the_model_and_the_reader_only_what_the_role_may_see(probe):
    settings, runner, baseline = probe
    problems: dict[str, list[str]] = {}
    for exp in EXPECT:
        for ref in GRAPH_CUSTOMERS:
            base, since = baseline[ref], utcnow()
            model = ScriptedChatModel(lambda messages, tools: AIMessage(content="Summary."))
            res = runner.review(base.customer_id, principal=exp.principal("runner"), chat_model=model)
            where = f"review {exp.label} × {ref}"
            if ref not in exp.visible:
                ok = (res.get("error") or "").startswith("No customer matches") and not res.get("review")
                problems[where] = [] if ok else [f"hidden customer reviewed: {res.get('error')}"]
                continue
            prompts = [m.content for call in model.calls for m in call["messages"]]
            problems[where] = check_view(res["review"], base, exp, [res["markdown"], *prompts])
            # reads: one audited fetch per slice; the review is written from what the fetches
            # admitted, without reading memory again
            recs = audited(settings, base.customer_id, since, "runner", exp)
            fetched = Counter(x.slice for x in recs if not (x.detail or "").startswith(("read back", "row check")))
            back = Counter(x.slice for x in recs if x.detail and "read back" in x.detail)
            if set(fetched) != set(every_slice(exp)) or set(fetched.values()) != {1} or back:
                problems[where].append(f"audit: fetched {dict(fetched)}, read back {dict(back)}")
    problems = {k: v for k, v in problems.items() if v}
    assert problems == {}


# --------------------------------------------------------- MCP and HTTP API
def test_every_probe_through_the_mcp_server_and_the_http_api(probe):
    pytest.importorskip("mcp")
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from mcp import Client

    from agent.interfaces.http import create_app
    from agent.interfaces.mcp import build_server
    from agent.interfaces.service import ContextService

    settings, runner, baseline = probe
    problems: dict[str, list[str]] = {}
    service = ContextService(runner=runner)

    async def mcp_probe(exp: Expect) -> None:
        mcp_settings = settings.model_copy(update={"mcp": settings.mcp.model_copy(
            update={"role": exp.role, "user": exp.user})})
        mcp_service = ContextService(runner=Runner(mcp_settings, store=runner.store, checkpointer=runner.checkpointer))
        async with Client(build_server(mcp_service)) as client:
            missing = await client.call_tool("get_customer_context", {"customer_id": "nowhere-at-all.example"})
            not_found = "\n".join(getattr(c, "text", "") for c in missing.content)
            for ref in REFS:
                base, since = baseline[ref], utcnow()
                result = await client.call_tool("get_customer_context", {"customer_id": ref})
                where = f"mcp {exp.label} × {ref}"
                text = "\n".join(getattr(c, "text", "") for c in result.content)
                if ref in exp.visible:
                    problems[where] = ["error: " + text] if result.is_error else \
                        check_view(result.structured_content, base, exp, [text])
                else:
                    problems[where] = [] if result.is_error and hidden_like_missing(
                        text, not_found, ref, "nowhere-at-all.example", base, exp) \
                        else [f"hidden customer answered: {text[:200]}"]
                problems[where] += check_audit(audited(mcp_settings, base.customer_id, since, "mcp", exp), exp,
                                               ref in exp.visible)

    for exp in EXPECT:
        asyncio.run(mcp_probe(exp))

    dana = next(e for e in EXPECT if e.label == "account_exec:dana.scully")

    async def mcp_workflows() -> None:
        # the other tools resolve the customer the same way: a hidden one reads like a missing one
        dana_settings = settings.model_copy(update={"mcp": settings.mcp.model_copy(
            update={"role": dana.role, "user": dana.user})})
        async with Client(build_server(ContextService(runner=Runner(
                dana_settings, store=runner.store, checkpointer=runner.checkpointer)))) as client:
            for tool, arg in (("generate_account_review", "customer"), ("get_customer_slices", "customer"),
                              ("triage_ticket", "customer")):
                extra = {"slices": ["billing.status"]} if tool == "get_customer_slices" else \
                    {"subject": "Card declined", "description": "Our card was declined."} \
                    if tool == "triage_ticket" else {}
                texts = []
                for ref in ("massivedynamic.com", "nowhere-at-all.example"):
                    result = await client.call_tool(tool, {arg: ref, **extra})
                    texts.append("\n".join(getattr(c, "text", "") for c in result.content))
                    assert result.is_error, (tool, ref)
                assert hidden_like_missing(texts[0], texts[1], "massivedynamic.com", "nowhere-at-all.example",
                                           baseline["massivedynamic.com"], dana), (tool, texts)

    asyncio.run(mcp_workflows())

    with TestClient(create_app(settings, service)) as http:
        for exp in EXPECT:
            for ref in REFS:
                base, since = baseline[ref], utcnow()
                resp = http.get(f"/v1/customers/{ref}/context", headers={"X-API-Key": f"key-{exp.label}"})
                where = f"http {exp.label} × {ref}"
                missing = http.get("/v1/customers/nowhere-at-all.example/context",
                                   headers={"X-API-Key": f"key-{exp.label}"})
                if ref in exp.visible:
                    problems[where] = [f"status {resp.status_code}"] if resp.status_code != 200 else \
                        check_view(resp.json(), base, exp, [resp.text])
                else:
                    same = (resp.status_code, resp.json()["error"]) == (missing.status_code, missing.json()["error"])
                    problems[where] = [] if same and hidden_like_missing(
                        resp.json()["message"], missing.json()["message"], ref, "nowhere-at-all.example", base, exp) \
                        else [f"hidden customer: {resp.status_code} {resp.text[:200]}"]
                problems[where] += check_audit(audited(settings, base.customer_id, since, "http", exp), exp,
                                               ref in exp.visible)
        key = {"X-API-Key": f"key-{dana.label}"}
        for path, body in (("/v1/reviews", {}), ("/v1/triage", {"ticket": {"subject": "Card declined"}})):
            hidden, missing = (http.post(path, json={**body, "customer": ref}, headers=key)
                               for ref in ("massivedynamic.com", "nowhere-at-all.example"))
            assert hidden.status_code == missing.status_code == 404, (path, hidden.text)
            assert hidden.json()["error"] == missing.json()["error"]
            assert hidden_like_missing(hidden.json()["message"], missing.json()["message"], "massivedynamic.com",
                                       "nowhere-at-all.example", baseline["massivedynamic.com"], dana), path
    problems = {k: v for k, v in problems.items() if v}
    print(f"\naccess probes (MCP, HTTP): {len(EXPECT)} principals × {len(REFS)} customers × 2 interfaces, "
          f"{sum(map(len, problems.values()))} problems")
    assert problems == {}, json.dumps(problems, indent=1)[:4000]


# ------------------------------------------------------------- the real command
@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("probe-cli")


@pytest.fixture(scope="module")
def cli(home, sqlite_warehouse):
    """`custctx` on the session's story warehouse (no seeding of its own)."""
    def run(*args: str, check: bool = False):  # noqa: ANN202
        return custctx(home, *args, check=check, env_extra={"CUSTCTX_WAREHOUSE_URL": sqlite_warehouse})
    return run


def test_cli_probes_as_a_user_runs_them(cli, probe):
    _, _, baseline = probe
    hidden = cli("context", "massivedynamic.com", "--as", "account_exec:dana.scully")
    missing = cli("context", "nowhere-at-all.example", "--as", "account_exec:dana.scully")
    assert hidden.returncode == missing.returncode == 1
    assert hidden.stderr.replace("massivedynamic.com", "X") == missing.stderr.replace("nowhere-at-all.example", "X")
    dana = next(e for e in EXPECT if e.label == "account_exec:dana.scully")
    sam = next(e for e in EXPECT if e.label == "support_agent:sam.lee")
    view = json.loads(cli("context", "acme.com", "--as", dana.label, "--format", "json", check=True).stdout)
    assert check_view(view, baseline["acme.com"], dana, []) == []
    brief = cli("context", "acme.com", "--as", sam.label, check=True).stdout
    assert f"card {marker('support_agent')}" in brief and f"contract value {marker('support_agent')}" in brief
    assert [n for n in needles(baseline["acme.com"], sam) if n in brief] == []
    log = json.loads(cli("audit", "--format", "json", "--limit", "1000", check=True).stdout)
    acme = [x for x in log if x["customer_id"] == baseline["acme.com"].customer_id]
    # 2 commands × every slice, and each one's row check (account exec: owner; support agent: not churned)
    assert len(acme) == len(every_slice(dana)) + len(every_slice(sam)) + 2
    assert {(x["interface"], x["tenant"]) for x in log} == {("cli", "default")}
    massive = [x for x in log if x["customer_id"] == baseline["massivedynamic.com"].customer_id]
    assert [(x["slice"], x["decision"]) for x in massive] == [("crm.account", "denied")]


def test_wayne_ticket_is_flagged_and_shows_no_other_customer(cli, probe):
    _, _, baseline = probe
    others = [c for c in CUSTOMERS if c["name"] != "Wayne Enterprises"]
    foreign = {c["name"] for c in others} | {c["ref"] for c in others}
    for ref in (c["ref"] for c in others):
        pm = baseline[ref].slices.get("billing.status", {}).get("payment_method")
        if pm:
            foreign.add(f"•{pm['last4']}")
    for who in ("support_agent:sam.lee",):  # (the admin's run: tests/test_cli_workflows.py)
        proc = cli("triage", "--ticket", "1010", "--format", "json", "--as", who, check=True)
        d = json.loads(proc.stdout)
        assert d["customer"]["name"] == "Wayne Enterprises" and d["suspected_injection"] is True
        assert d["category"] == "security" and d["priority"] in ("P1", "P2", "P3", "P4")
        leaked = [x for x in foreign if x in proc.stdout]
        assert leaked == [], (who, leaked)
    hidden = cli("triage", "--ticket", "1010", "--format", "json", "--as", "account_exec:dana.scully")
    assert hidden.returncode == 1 and "Wayne" not in hidden.stdout + hidden.stderr
