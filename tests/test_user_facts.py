"""Gaps as a conversation (issue 18, part 5): facts users supply are kept in long-term memory with
provenance ``user`` (who, when), per tenant and customer, through the access gate and audited;
the assistant asks for what no source holds and shows what it was told; the missing-context
section ranks unconnected sources per workflow; with no customer the assistant asks who it is."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from langgraph.store.memory import InMemoryStore

from agent.brief import render_brief
from agent.interfaces.service import ContextService
from agent.interfaces.web.customers import brief_head
from agent.runs import Runner
from tools.access.audit import audit_log
from tools.access.gate import Access
from tools.access.policy import load_policy
from tools.access.principal import Principal
from tools.context.assembly import assemble_context
from tools.context.missing import SOURCE_VALUE, WORKFLOWS, missing_lines, rank_unconnected
from tools.context.read import resolve
from tools.context.scope import ReadScope
from tools.context.view import reference_view
from tools.facts import (
    MAX_FACTS,
    USER_FACTS_KEY,
    FactError,
    UserFact,
    facts_namespace,
    record_fact,
    user_facts,
)
from tools.identity import CustomerNotFound
from tools.memory import ContextMemory, open_store
from tools.settings import SOURCE_NAMES

from .conftest import settings_for
from .test_cli import custctx
from .test_mcp import custctx_cmd, free_port, server_env, stop, wait_until_up

TOLD_AT = datetime(2026, 1, 14, 9, 30, tzinfo=UTC)
ONBOARDING = "Their onboarding finished last week; go-live was 2026-01-08."


STORE = InMemoryStore()  # one LangGraph store shared by every tenant of these tests


def scope_of(r, role: str, user: str, tenant: str) -> ReadScope:
    """A request scope with a gate whose clock is fixed (the time a fact is recorded)."""
    access = Access(Principal(tenant, user, role), load_policy(None).role(role), audit_log(r.settings.state_db_url),
                    clock=lambda: TOLD_AT)
    return ReadScope.build(r.settings, r.clock, access=access, memory=ContextMemory(STORE, "default", r.settings.ttls),
                           index=r.index)


def test_a_fact_is_kept_with_provenance_user_per_tenant_and_audited(sqlite_ready):
    r, tenant = sqlite_ready, f"t-{uuid.uuid4().hex[:8]}"
    scope = scope_of(r, "account_exec", "dana.scully", tenant)
    acme, _ = resolve(scope, "acme.com")
    fact = record_fact(scope, acme.customer_id, f"  {ONBOARDING}\n ")
    assert (fact.text, fact.by, fact.role, fact.at, fact.provenance) == (
        ONBOARDING, "dana.scully", "account_exec", TOLD_AT, "user")
    # stored in the Store under the tenant's and customer's namespace + user_facts, one item per fact
    mem = ContextMemory(STORE, tenant, r.settings.ttls)
    assert facts_namespace(mem, acme.customer_id) == ("customers", tenant, acme.customer_id, USER_FACTS_KEY)
    items = mem.store.search(facts_namespace(mem, acme.customer_id))
    assert [i.value["text"] for i in items] == [ONBOARDING]
    assert mem.store.get(mem.namespace(acme.customer_id), USER_FACTS_KEY) is None  # no list read-modify-written

    reader = scope_of(r, "support_agent", "sam", tenant)  # another user of the same tenant sees it, as told by dana
    resolve(reader, "acme.com")
    assert [(f.text, f.by) for f in user_facts(reader, acme.customer_id)] == [(ONBOARDING, "dana.scully")]

    other = scope_of(r, "admin", "eve", f"t-{uuid.uuid4().hex[:8]}")  # another tenant: nothing
    resolve(other, "acme.com")
    assert user_facts(other, acme.customer_id) == []

    recs = audit_log(r.settings.state_db_url).query(tenant, limit=None)
    facts_recs = [(x.user_name, x.decision, x.outcome) for x in recs if x.slice == USER_FACTS_KEY]
    assert sorted(facts_recs) == [("dana.scully", "allowed", "recorded"), ("sam", "allowed", "memory")]


def test_bad_text_and_customers_the_principal_may_not_see_are_refused(sqlite_ready):
    r, tenant = sqlite_ready, f"t-{uuid.uuid4().hex[:8]}"
    scope = scope_of(r, "account_exec", "dana.scully", tenant)
    acme, _ = resolve(scope, "acme.com")
    with pytest.raises(FactError, match="needs some text"):
        record_fact(scope, acme.customer_id, "   ")
    with pytest.raises(FactError, match="at most 1000 characters"):
        record_fact(scope, acme.customer_id, "x" * 1001)
    with pytest.raises(CustomerNotFound):  # hidden by dana's row filter: not found, as if missing
        resolve(scope, "massivedynamic.com")
    massive, _ = r.index.resolve("massivedynamic.com")
    with pytest.raises(FactError, match="resolve the customer"):  # never row-checked in this scope: refused
        record_fact(scope, massive.customer_id, "They are moving to a competitor")
    assert user_facts(scope, massive.customer_id) == []


def test_the_brief_and_the_assistant_show_user_facts_and_ask_for_what_no_source_holds(sqlite_ready, tmp_path):
    r, tenant = sqlite_ready, f"t-{uuid.uuid4().hex[:8]}"
    settings = settings_for(r.settings.sources["crm"].url, tmp_path, tenant=tenant)
    dana = Principal(tenant, "dana.scully", "account_exec")
    with Runner(settings, principal=dana) as runner:
        before = runner.ask("Is their onboarding done?", "acme.com")
        assert before["error"] is None and before["slices_used"] == []
        assert "no connected source records it, so I cannot answer" in before["answer"]
        assert "custctx note" in before["answer"]
        scope = runner.request()
        acme, _ = resolve(scope, "acme.com")
        record_fact(scope, acme.customer_id, ONBOARDING)
        after = runner.ask("Is their onboarding done?", "acme.com")
        assert "provenance user" in after["answer"] and "told by dana.scully" in after["answer"]
        assert ONBOARDING in after["answer"]
        brief = render_brief(assemble_context(scope, acme, ["crm.account"]), user_facts(scope, acme.customer_id))
    assert "### Told by Users" in brief and f'dana.scully (account_exec, provenance user): "{ONBOARDING}"' in brief


def lead_scope(r, store, tenant: str, user: str) -> ReadScope:
    """A support lead (sees every customer: no row check needed) writing to ``store``."""
    access = Access(Principal(tenant, user, "support_lead"), load_policy(None).role("support_lead"), None,
                    clock=lambda: TOLD_AT)
    return ReadScope.build(r.settings, r.clock, access=access, memory=ContextMemory(store, tenant, r.settings.ttls))


def append_at_once(r, url: str, writers: int = 8, per: int = 12) -> None:
    """``writers`` threads append ``per`` facts each to one customer at once — half through one store
    (one connection, as a server shares it), half each through a store of its own — and every fact
    is kept, each writer's in the order it recorded them."""
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    acme, _ = r.index.resolve("acme.com")
    with open_store(url) as shared, ExitStack() as own:
        stores = [shared] * (writers // 2) + [own.enter_context(open_store(url)) for _ in range(writers - writers // 2)]
        start = threading.Barrier(writers)

        def note(w: int) -> None:
            scope = lead_scope(r, stores[w], tenant, f"user{w}")
            start.wait()
            for i in range(per):
                record_fact(scope, acme.customer_id, f"fact {w}-{i}")

        with ThreadPoolExecutor(writers) as pool:
            list(pool.map(note, range(writers)))
        got = user_facts(lead_scope(r, shared, tenant, "reader"), acme.customer_id)
    assert len(got) == writers * per
    for w in range(writers):
        assert [f.text for f in got if f.by == f"user{w}"] == [f"fact {w}-{i}" for i in range(per)]


def test_notes_recorded_at_once_by_many_threads_are_all_kept_on_sqlite(sqlite_ready, tmp_path):
    append_at_once(sqlite_ready, f"sqlite:///{tmp_path}/facts.sqlite")


def test_notes_recorded_at_once_by_many_threads_are_all_kept_on_postgresql(sqlite_ready, pg_server):
    append_at_once(sqlite_ready, pg_server.create_database())


NOTE_IN_A_PROCESS = """
import sys
from datetime import UTC, datetime
from tools.access.gate import Access
from tools.access.policy import load_policy
from tools.access.principal import Principal
from tools.context.scope import ReadScope
from tools.context.view import reference_view
from tools.facts import record_fact
from tools.memory import ContextMemory, open_store
from tools.settings import Settings
from tools.sources.base import ReadClock

url, home, tenant, customer_id, user, n = sys.argv[1:7]
settings = Settings(home=home, embedded=False)
at = datetime(2026, 1, 14, 9, 30, tzinfo=UTC)
with open_store(url) as store:
    access = Access(Principal(tenant, user, "support_lead"), load_policy(None).role("support_lead"), None,
                    clock=lambda: at)
    scope = ReadScope.build(settings, ReadClock(as_of=at, settings=settings), access=access,
                            memory=ContextMemory(store, tenant, settings.ttls))
    print("ready", flush=True)
    sys.stdin.readline()  # every process starts appending when the test says go
    for i in range(int(n)):
        record_fact(scope, customer_id, f"{user} fact {i}")
print("done", flush=True)
"""


@pytest.mark.slow  # four Python processes importing the product: ~8-16 s on a shared machine
def test_notes_recorded_at_once_by_several_processes_on_sqlite_are_all_kept(sqlite_ready, tmp_path):
    r, tenant = sqlite_ready, f"t-{uuid.uuid4().hex[:8]}"
    acme, _ = r.index.resolve("acme.com")
    url, procs, per = f"sqlite:///{tmp_path}/facts.sqlite", 4, 15
    with open_store(url):  # the store's tables exist before the writers start
        pass
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTCTX_")}
    writers = [subprocess.Popen([sys.executable, "-c", NOTE_IN_A_PROCESS, url, str(tmp_path), tenant,
                                 acme.customer_id, f"proc{p}", str(per)], env=env, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for p in range(procs)]
    try:
        for w in writers:
            assert w.stdout is not None and w.stdout.readline().strip() == "ready", w.stderr
        for w in writers:
            assert w.stdin is not None
            w.stdin.write("go\n")
            w.stdin.flush()
        results = [w.communicate(timeout=120) for w in writers]
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
    assert [w.returncode for w in writers] == [0] * procs, [err for _, err in results]
    with open_store(url) as store:
        got = user_facts(lead_scope(r, store, tenant, "reader"), acme.customer_id)
    assert len(got) == procs * per
    for p in range(procs):
        assert [f.text for f in got if f.by == f"proc{p}"] == [f"proc{p} fact {i}" for i in range(per)]


def test_facts_an_older_version_kept_as_one_list_are_read_and_moved_once(sqlite_ready, tmp_path):
    r, tenant = sqlite_ready, f"t-{uuid.uuid4().hex[:8]}"
    acme, _ = r.index.resolve("acme.com")
    told = [UserFact(text=t, by="dana.scully", role="account_exec", at=TOLD_AT - timedelta(days=d)).model_dump(
        mode="json") for t, d in (("first", 2), ("second", 1))]
    with open_store(f"sqlite:///{tmp_path}/old.sqlite") as store:
        mem = ContextMemory(store, tenant, r.settings.ttls)
        old_list = {"facts": [told[0], {"text": 3}, told[1]]}  # a damaged entry is left out, as before
        store.put(mem.namespace(acme.customer_id), USER_FACTS_KEY, old_list, index=False)
        scope = lead_scope(r, store, tenant, "sam")
        assert [(f.text, f.by) for f in user_facts(scope, acme.customer_id)] == [
            ("first", "dana.scully"), ("second", "dana.scully")]
        assert store.get(mem.namespace(acme.customer_id), USER_FACTS_KEY) is None  # moved to items of their own
        record_fact(scope, acme.customer_id, "third")
        # another process that read the old list before it was deleted moves it again: nothing doubles
        store.put(mem.namespace(acme.customer_id), USER_FACTS_KEY, old_list, index=False)
        assert [f.text for f in user_facts(scope, acme.customer_id)] == ["first", "second", "third"]


def test_beyond_the_cap_the_oldest_facts_are_dropped(sqlite_ready, monkeypatch):
    r, tenant = sqlite_ready, f"t-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr("tools.facts.MAX_FACTS", 3)
    acme, _ = r.index.resolve("acme.com")
    scope = lead_scope(r, STORE, tenant, "sam")
    for i in range(5):
        record_fact(scope, acme.customer_id, f"fact {i}")
    assert [f.text for f in user_facts(scope, acme.customer_id)] == ["fact 2", "fact 3", "fact 4"]
    assert scope.memory is not None and len(STORE.search(facts_namespace(scope.memory, acme.customer_id), limit=100)) == 3
    assert MAX_FACTS == 200


def test_context_and_review_show_user_facts_through_the_gate(sqlite_ready, tmp_path):
    """The service every server shares: the reference view (HTTP and MCP context) and the review
    carry the facts as user_facts with provenance user; a role that may not see the customer sees
    nothing; each read of the facts is audited as the reader."""
    r, tenant = sqlite_ready, f"t-{uuid.uuid4().hex[:8]}"
    settings = settings_for(r.settings.sources["crm"].url, tmp_path, tenant=tenant)
    dana, sam = Principal(tenant, "dana.scully", "account_exec"), Principal(tenant, "sam", "support_agent")
    service = ContextService(settings)
    try:
        bare = reference_view(service.context("acme.com", ["crm.account"], principal=sam))
        assert bare["user_facts"] == []
        service.note("acme.com", ONBOARDING, principal=dana)
        view = reference_view(service.context("acme.com", ["crm.account"], principal=sam))
        assert [{k: f[k] for k in ("text", "by", "role", "provenance")} for f in view["user_facts"]] == [
            {"text": ONBOARDING, "by": "dana.scully", "role": "account_exec", "provenance": "user"}]
        assert set(bare) - {"user_facts"} <= set(view) and view["customer"]["name"] == "Acme Corp"
        page = brief_head(service.context("acme.com", ["crm.account"], principal=sam))  # the web customer page
        assert "### Told by Users" in page and f"dana.scully (account_exec, provenance user): “{ONBOARDING}”" in page
        review = service.review("acme.com", principal=dana)
        assert f'dana.scully (account_exec, provenance user): "{ONBOARDING}"' in review["markdown"]
        assert review["review"]["user_facts"][0]["text"] == ONBOARDING
        with pytest.raises(CustomerNotFound):  # Acme is dana's: another account executive does not see it
            service.context("acme.com", ["crm.account"], principal=Principal(tenant, "fox.mulder", "account_exec"))
        with pytest.raises(CustomerNotFound):
            service.facts("acme.com", principal=Principal(tenant, "fox.mulder", "account_exec"))
    finally:
        service.close()
    recs = audit_log(settings.state_db_url).query(tenant, limit=None)
    reads = [(x.user_name, x.outcome) for x in recs if x.slice == USER_FACTS_KEY]
    assert ("sam", "memory") in reads and ("dana.scully", "memory") in reads
    assert not [x for x in recs if x.slice == USER_FACTS_KEY and x.user_name == "fox.mulder"]


def test_missing_context_ranks_unconnected_sources_per_workflow():
    for wf in WORKFLOWS:
        assert set(SOURCE_VALUE[wf]) == set(SOURCE_NAMES)  # every source valued for every workflow
    assert [m.source for m in rank_unconnected("triage", ["research", "commerce", "billing"])] == \
        ["billing", "commerce", "research"]
    assert [m.source for m in rank_unconnected("review", ["research", "commerce", "calls"])] == \
        ["calls", "research", "commerce"]
    assert missing_lines("assistant", ["commerce"]) == [
        "- Connect **commerce** (value 1/5 for assistant): a shopper's orders, refunds, cards and addresses"]


@pytest.mark.slow
def test_note_command_and_ask_without_a_customer(tmp_path):
    home = tmp_path / "home"
    noted = custctx(home, "note", "acme.com", ONBOARDING, "--as", "account_exec:dana.scully", check=True)
    assert "Noted for Acme Corp, as told by dana.scully" in noted.stdout
    listed = custctx(home, "note", "acme.com", "--format", "json", check=True)
    assert [(f["text"], f["by"], f["provenance"]) for f in json.loads(listed.stdout)["facts"]] == [
        (ONBOARDING, "dana.scully", "user")]
    ctx = custctx(home, "context", "acme.com", "--format", "json", "--slices", "crm.account", check=True)
    assert json.loads(ctx.stdout)["user_facts"][0]["text"] == ONBOARDING
    hidden = custctx(home, "note", "massivedynamic.com", "x", "--as", "account_exec:dana.scully")
    assert hidden.returncode == 1 and hidden.stderr.strip() == "error: No customer matches 'massivedynamic.com'."
    empty = custctx(home, "note", "acme.com", "")
    assert empty.returncode == 2 and empty.stderr.count("\n") == 1 and "needs some text" in empty.stderr
    who = custctx(home, "ask", "What's their billing status?")  # no customer: one clear question, no error line
    assert who.returncode == 2 and who.stdout == "" and "error" not in who.stderr
    assert who.stderr.strip().startswith("Who is the customer, and what is the conversation about?")
    assert who.stderr.strip().count("\n") == 0
    unknown = custctx(home, "context", "Nobody Inc")  # context keeps its one-line not-found error
    assert unknown.returncode == 1 and unknown.stderr.strip() == "error: No customer matches 'Nobody Inc'."


@pytest.mark.slow
def test_facts_over_http(tmp_path):
    home = tmp_path / "api-home"
    home.mkdir()
    keys = {hashlib.sha256(b"k-dana").hexdigest(): {"user": "dana.scully", "role": "account_exec"},
            hashlib.sha256(b"k-sam").hexdigest(): {"user": "sam", "role": "support_agent"},
            hashlib.sha256(b"k-fox").hexdigest(): {"user": "fox.mulder", "role": "account_exec"}}
    (home / "keys.yaml").write_text(json.dumps(keys), encoding="utf-8")
    port = free_port()
    proc = subprocess.Popen(custctx_cmd("serve", "api", "--port", str(port)),
                            env={**server_env(home), "CUSTCTX_API_KEYS_FILE": str(home / "keys.yaml")},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_up(proc, f"http://127.0.0.1:{port}/healthz")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": "Bearer k-dana"},
                          timeout=120) as api:
            made = api.post("/v1/customers/acme.com/facts", json={"text": ONBOARDING})
            assert made.status_code == 201, made.text
            assert made.json()["fact"]["by"] == "dana.scully" and made.json()["fact"]["provenance"] == "user"
            got = api.get("/v1/customers/acme.com/facts").json()
            assert [f["text"] for f in got["facts"]] == [ONBOARDING]
            hidden = api.post("/v1/customers/massivedynamic.com/facts", json={"text": "x"})
            missing = api.post("/v1/customers/nowhere.example/facts", json={"text": "x"})
            assert hidden.status_code == missing.status_code == 404
            assert hidden.json()["error"] == missing.json()["error"] == "customer_not_found"
            assert api.post("/v1/customers/acme.com/facts", json={"text": ""}).status_code == 422
            assert httpx.post(f"http://127.0.0.1:{port}/v1/customers/acme.com/facts", json={"text": "x"}).status_code \
                == 401
            # the context shows the facts, as told by dana, to every caller who may see Acme, and to nobody else
            for key in ("k-dana", "k-sam"):
                ctx = api.get("/v1/customers/acme.com/context", params={"slices": "crm.account"},
                              headers={"Authorization": f"Bearer {key}"})
                assert ctx.status_code == 200, ctx.text
                assert [(f["text"], f["by"], f["provenance"]) for f in ctx.json()["user_facts"]] == [
                    (ONBOARDING, "dana.scully", "user")]
                assert ctx.json()["customer"]["name"] == "Acme Corp"  # the reference fields as before
            fox = api.get("/v1/customers/acme.com/context", headers={"Authorization": "Bearer k-fox"})
            assert fox.status_code == 404 and ONBOARDING not in fox.text
    finally:
        stop(proc)


@pytest.mark.slow
def test_facts_over_mcp(tmp_path):
    """A real MCP client over stdio: record_customer_fact keeps the fact; the context brief then shows it."""
    import anyio
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    home = tmp_path / "mcp-home"
    params = StdioServerParameters(command=custctx_cmd()[0], args=[*custctx_cmd()[1:], "serve", "mcp"],
                                   env=server_env(home))

    async def talk() -> tuple[Any, Any, Any, Any]:
        async with Client(params, read_timeout_seconds=120) as client:
            made = await client.call_tool("record_customer_fact", {"customer": "acme.com", "text": ONBOARDING})
            missing = await client.call_tool("record_customer_fact", {"customer": "nowhere.example", "text": "x"})
            ctx = await client.call_tool("get_customer_context", {"customer_id": "acme.com", "include_history": False})
            review = await client.call_tool("generate_account_review", {"customer": "acme.com"})
            return made, missing, ctx, review

    made, missing, ctx, review = anyio.run(talk)
    assert not made.is_error and made.structured_content["fact"]["provenance"] == "user"
    assert not ctx.is_error and [(f["text"], f["provenance"]) for f in ctx.structured_content["user_facts"]] == [
        (ONBOARDING, "user")]
    assert not review.is_error and "### Told by Users" in review.content[0].text
    assert ONBOARDING in review.content[0].text
    assert review.structured_content["review"]["user_facts"][0]["text"] == ONBOARDING
    assert missing.is_error and "No customer matches 'nowhere.example'" in missing.content[0].text
    listed = custctx(home, "note", "acme.com", "--format", "json", check=True)
    assert [f["text"] for f in json.loads(listed.stdout)["facts"]] == [ONBOARDING]
