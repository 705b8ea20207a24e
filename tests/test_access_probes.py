"""The access eval: every principal of evals/datasets/access.yaml × every story customer ×
every slice, through the CLI's read path, the graphs, the MCP server and the HTTP API —
zero leaks, and every read audited."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from langchain_core.messages import AIMessage

from agent.brief import render_brief
from agent.prompting import context_block
from agent.runs import Runner
from tools.access import read_customer_context
from tools.audit import audit_log
from tools.context import reference_view
from tools.identity import CustomerNotFound
from tools.policy import marker
from tools.principal import Principal
from tools.slices import SLICE_NAMES
from tools.source import utcnow

from .conftest import settings_for
from .fakes import ScriptedChatModel
from .test_cli import custctx

ROOT = Path(__file__).parents[1]
DATASET = yaml.safe_load((ROOT / "evals" / "datasets" / "access.yaml").read_text(encoding="utf-8"))
CUSTOMERS: list[dict[str, Any]] = DATASET["customers"]
REFS = [c["ref"] for c in CUSTOMERS]
TENANT = "probes"


@dataclass(frozen=True)
class Expect:
    """One principal's expectations, from the dataset."""

    role: str
    user: str
    visible: frozenset[str]
    forbidden: frozenset[str]
    masked: dict[str, tuple[str, ...]]

    @property
    def label(self) -> str:
        return f"{self.role}:{self.user}"

    def principal(self, interface: str = "cli") -> Principal:
        return Principal(TENANT, self.user, self.role, interface=interface)


def expectations() -> list[Expect]:
    out = []
    for p in DATASET["principals"]:
        role, _, user = p["as"].partition(":")
        visible = frozenset(REFS if p["visible"] == "all" else p["visible"])
        assert visible <= set(REFS) and set(p["forbidden"]) <= set(SLICE_NAMES), p["as"]
        out.append(Expect(role, user, visible, frozenset(p["forbidden"]),
                          {k: tuple(v) for k, v in (p.get("masked") or {}).items()}))
    return out


EXPECT = expectations()


# ------------------------------------------------------------ what may not appear
def concrete(data: Any, path: str, prefix: str = "") -> list[tuple[str, Any]]:
    """(concrete path, value) of every value at ``path`` (``contacts.phone``) in slice JSON."""
    key, _, rest = path.partition(".")
    if not isinstance(data, dict) or key not in data:
        return []
    here = f"{prefix}.{key}" if prefix else key
    value = data[key]
    if not rest:
        return [(here, value)]
    if isinstance(value, list):
        return [x for i, item in enumerate(value) for x in concrete(item, rest, f"{here}[{i}]")]
    return concrete(value, rest, here)


def at(data: Any, path: str) -> Any:
    for key, index in re.findall(r"([A-Za-z_0-9]+)(?:\[(\d+)\])?", path):
        data = data[key]
        if index:
            data = data[int(index)]
    return data


def value_needles(v: Any) -> list[str]:
    if isinstance(v, dict) and v.get("last4"):  # a payment method
        return [f"•{v['last4']}", f'"last4": "{v["last4"]}"']
    if isinstance(v, str):
        return [v]
    if isinstance(v, int | float) and not isinstance(v, bool):
        return [f"{v:,.2f}", json.dumps(v)] + ([f"{v:,.0f}"] if v >= 10_000 else [])
    return []


def strings(data: Any) -> set[str]:
    if isinstance(data, str):
        return {data}
    if isinstance(data, dict):
        return {s for v in data.values() for s in strings(v)}
    if isinstance(data, list):
        return {s for v in data for s in strings(v)}
    return set()


@dataclass
class Baseline:
    """A customer as the admin sees it: what a narrower role must not see."""

    customer_id: str
    name: str
    slices: dict[str, dict[str, Any]]  # slice JSON without provenance


def needles(base: Baseline, exp: Expect) -> dict[str, str]:
    """needle → why it must not appear in what ``exp``'s principal is shown."""
    out: dict[str, str] = {}
    allowed_text = json.dumps({n: d for n, d in base.slices.items() if n not in exp.forbidden}, ensure_ascii=False)
    for name in exp.forbidden & set(base.slices):
        for s in strings(base.slices[name]):
            # text (subjects, bodies, deal names, headlines, addresses), not ids or timestamps that
            # other slices' provenance legitimately shares
            if len(s) >= 8 and (" " in s or "@" in s) and s not in allowed_text and s not in base.name:
                out[s] = f"forbidden {name}"
    # what the role may legitimately see: its slices with the masked values taken out (Massive
    # Dynamic pays yearly: its invoices show the amount its contract value also is)
    legit = json.loads(allowed_text)
    for name, paths in exp.masked.items():
        for path in paths:
            for where, _ in concrete(legit.get(name) or {}, path):
                holder_path, _, key = where.rpartition(".")
                (at(legit[name], holder_path) if holder_path else legit[name])[key] = None
    legit_text = json.dumps(legit, ensure_ascii=False)
    for name, paths in exp.masked.items():
        for path in paths:
            for where, v in concrete(base.slices.get(name) or {}, path):
                found = value_needles(v)
                if not any(n in legit_text for n in found):  # in any of its renderings
                    out.update({n: f"masked {name}.{where}" for n in found})
    return out


def expected_masks(base: Baseline, exp: Expect) -> dict[str, set[str]]:
    return {name: {where for p in paths for where, v in concrete(base.slices.get(name) or {}, p) if v is not None}
            for name, paths in exp.masked.items() if name in base.slices and name not in exp.forbidden}


def check_view(view: dict[str, Any], base: Baseline, exp: Expect, texts: list[str]) -> list[str]:
    """Problems with what a visible customer's context shows ``exp``'s principal (empty: none)."""
    problems = []
    shown = set(view["slices"])
    want = set(base.slices) - exp.forbidden
    if shown != want:
        problems.append(f"slices {sorted(shown ^ want)} differ from the expectation")
    forbidden = {g["slice"] for g in view["gaps"] if g["kind"] == "forbidden"}
    if forbidden != set(exp.forbidden):
        problems.append(f"forbidden gaps {sorted(forbidden)} != {sorted(exp.forbidden)}")
    for name, paths in expected_masks(base, exp).items():
        got = set(view["provenance"][name]["masked_fields"])
        if got != paths:
            problems.append(f"{name} masked {sorted(got)}, expected {sorted(paths)}")
        for path in paths:
            if at(view["slices"][name], path) != marker(exp.role):
                problems.append(f"{name}.{path} is not shown masked")
    for name in set(view["provenance"]) - set(exp.masked):
        if view["provenance"][name]["masked_fields"]:
            problems.append(f"{name} masked although the role may see it")
    text = "\n".join([json.dumps(view, ensure_ascii=False), *texts])
    problems += [f"LEAK {why}: {n!r}" for n, why in needles(base, exp).items() if n in text]
    return problems


def hidden_like_missing(text: str, missing: str, ref: str, missing_ref: str, base: Baseline, exp: Expect) -> bool:
    """A hidden customer's error reads like a missing one's: same sentence, the hidden name nowhere,
    and any suggestions (closest names, as a missing name gets) only of customers the principal sees."""
    text, _, suggested = text.partition(" Did you mean: ")
    visible_names = {c["name"] for c in CUSTOMERS if c["ref"] in exp.visible}
    names = [n.strip() for n in suggested.rstrip("?").split(",") if n.strip()]
    return (text.replace(ref, "X") == missing.partition(" Did you mean: ")[0].replace(missing_ref, "X")
            and base.name not in text and all(n in visible_names for n in names))


def audited(settings, customer_id: str, since, interface: str, exp: Expect) -> list:
    return [x for x in audit_log(settings.state_db_url).query(TENANT, customer_id, since, limit=None)
            if x.interface == interface and x.role == exp.role and x.user_name == exp.user]


def check_audit(recs: list, exp: Expect, visible: bool, reads: int = 1) -> list[str]:
    """Every slice read has its record; a row filter adds its row check; a hidden customer only that."""
    rows = 1 if exp.role in ("support_agent", "account_exec") else 0
    if not visible:
        ok = len(recs) == 1 and recs[0].decision == "denied" and recs[0].detail.startswith("row check")
        return [] if ok else [f"audit: {len(recs)} records for a hidden customer"]
    per_slice = Counter(x.slice for x in recs if not (x.detail or "").startswith("row check"))
    problems = []
    if per_slice != Counter({n: reads for n in SLICE_NAMES}):
        problems.append(f"audit: records per slice {dict(per_slice)}")
    if sum((x.detail or "").startswith("row check") for x in recs) != rows:
        problems.append("audit: row check missing or repeated")
    if {x.slice for x in recs if x.decision == "denied"} != set(exp.forbidden):
        problems.append("audit: denied records do not match the forbidden slices")
    return problems


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
            access = runner.access(exp.principal("cli"))
            where = f"{exp.label} × {ref}"
            try:
                c = read_customer_context(settings, runner_index(runner), runner_ctx(runner), ref,
                                          list(SLICE_NAMES), access, memory=runner.memory())
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
                reads += len(SLICE_NAMES)
            if found != visible:
                problems.setdefault(where, []).append(f"visible {found}, expected {visible}")
            recs = audited(settings, base.customer_id, since, "cli", exp)
            records += len(recs)
            problems.setdefault(where, []).extend(check_audit(recs, exp, visible))
    problems = {k: v for k, v in problems.items() if v}
    print(f"\naccess probes (CLI read path): {len(EXPECT)} principals × {len(REFS)} customers, "
          f"{reads} slice reads, {records} audit records, {sum(map(len, problems.values()))} problems")
    assert problems == {}


def runner_index(runner: Runner):  # noqa: ANN201
    from agent.run_context import services

    return services(runner.settings).index


def runner_ctx(runner: Runner):  # noqa: ANN201
    from agent.run_context import services

    return services(runner.settings).ctx


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
            # reads: one fetch per slice and one read-back per slice fetched
            recs = audited(settings, base.customer_id, since, "runner", exp)
            fetched = Counter(x.slice for x in recs if x.detail is None or "read back" not in x.detail)
            back = Counter(x.slice for x in recs if x.detail and "read back" in x.detail)
            if set(fetched) - {"crm.account"} != set(SLICE_NAMES) - {"crm.account"} or \
                    set(back) != set(res["slices_used"]):
                problems[where].append(f"audit: fetched {dict(fetched)}, read back {dict(back)}")
    problems = {k: v for k, v in problems.items() if v}
    assert problems == {}


# --------------------------------------------------------- MCP and HTTP API
def test_every_probe_through_the_mcp_server_and_the_http_api(probe):
    pytest.importorskip("mcp")
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from mcp import Client

    from agent.api import create_app
    from agent.mcp_server import build_server
    from agent.serving import ContextService

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
    # 2 commands × 15 slices, and each one's row check (account exec: owner; support agent: not churned)
    assert len(acme) == 2 * len(SLICE_NAMES) + 2
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
