"""The access policy on every read: forbidden slices, masked fields, row filters, memory
reads masked per reader, tenants that never see each other, tools bound to the run's customer."""

from __future__ import annotations

import json
import uuid

import pytest
from langchain_core.messages import AIMessage, SystemMessage, ToolMessage
from langgraph.store.memory import InMemoryStore
from pydantic import ValidationError

from agent.brief import render_brief
from agent.graphs.nodes import NO_CUSTOMER_GIVEN
from agent.offline.answers import billing_lines
from agent.prompting import context_block, parse_context_block
from agent.runs import Runner
from tools.access.audit import audit_log
from tools.access.gate import Access
from tools.access.policy import (
    PolicyError,
    UnknownRole,
    load_policy,
    marker,
    mask_slice,
    parse_policy,
)
from tools.access.principal import BadPrincipal, Principal, default_principal, parse_as
from tools.context.assembly import assemble_context, read_customer_context
from tools.context.read import read_slices
from tools.context.read import resolve as resolve_in
from tools.context.scope import ReadScope
from tools.context.view import reference_view, slice_view
from tools.identity import AmbiguousCustomer, CustomerNotFound
from tools.langchain_tools import BINDING_ARG, READ_SLICES, ToolBinding, bind_call
from tools.memory import ContextMemory
from tools.slices import SLICE_NAMES, BillingStatus, CrmContacts, PaymentMethod

from .conftest import settings_for, statements_on
from .fakes import ScriptedChatModel

ROLES = ("support_agent", "support_lead", "account_exec", "finance", "admin")
NO_STORE = [n for n in SLICE_NAMES if not n.startswith("commerce.")]  # every slice without a commerce source


def every_slice(role: str) -> list[str]:
    """"Every slice" for a role without a commerce source: the store's slices it may not read stay (forbidden)."""
    return NO_STORE + [n for n in SLICE_NAMES if n.startswith("commerce.") and not load_policy().role(role).allows(n)]


def gate(r, role: str, user: str = "tester", tenant: str | None = None, interface: str = "cli") -> Access:
    """A fresh gate (own row-filter verdicts) in a tenant of its own unless one is given."""
    return Access.for_principal(r.settings, Principal(tenant or f"t-{uuid.uuid4().hex[:8]}", user, role,
                                                      interface=interface))


def records(r, tenant: str) -> list:
    return audit_log(r.settings.state_db_url).query(tenant, limit=None)


class RecordingStore(InMemoryStore):
    """An in-memory store that remembers every namespace read or written."""

    def __init__(self) -> None:
        super().__init__()
        self.touched: list[tuple[str, tuple[str, ...]]] = []

    def batch(self, ops):  # noqa: ANN001, ANN201 - BaseStore API
        for op in ops:
            ns = getattr(op, "namespace", None) or getattr(op, "namespace_prefix", None)
            self.touched.append((type(op).__name__, tuple(ns or ())))
        return super().batch(ops)


# ----------------------------------------------------------------- the policy file
def test_default_policy_defines_every_role_with_sensible_rights():
    policy = load_policy()
    assert set(ROLES) <= set(policy.roles)
    agent, ae, fin, admin = (policy.role(n) for n in ("support_agent", "account_exec", "finance", "admin"))
    assert agent.allows("billing.status") and agent.allows("billing.invoices") and not agent.allows("crm.opportunities")
    assert agent.mask == {"crm.account": ("contract_value",), "billing.status": ("payment_method",),
                          "crm.contacts": ("contacts.phone",),
                          "commerce.payment_methods": ("methods.exp_month", "methods.exp_year")}
    assert agent.allows("commerce.orders") and agent.allows("commerce.addresses")
    assert not ae.allows("commerce.payment_methods") and not fin.allows("commerce.addresses")
    assert ae.rows is not None and ae.rows.require == {"owner": ("{user}",)} and ae.rows.without_crm_record == "deny"
    assert ae.allows("crm.opportunities") and "contract_value" not in ae.mask.get("crm.account", ())
    assert fin.allows("billing.invoices") and "billing.status" not in fin.mask and not fin.allows("email.threads")
    assert admin.readable() == list(SLICE_NAMES) and admin.mask == {} and admin.rows is None
    assert admin.audit_log and not agent.audit_log
    with pytest.raises(UnknownRole, match="unknown role 'intern'.*support_agent"):
        policy.role("intern")


@pytest.mark.parametrize(("doc", "problem"), [
    ({}, "needs a `roles:` mapping"),
    ({"roles": {"x": {"slices": {"allow": ["billing.nope"]}}}}, "unknown slice or source 'billing.nope'"),
    ({"roles": {"x": {"mask": {"crm.account": ["contract_valu"]}}}}, "no field 'contract_valu'"),
    ({"roles": {"x": {"mask": {"crm.account": ["company_name"]}}}}, "required field and cannot be masked"),
    ({"roles": {"x": {"mask": {"crm.contacts": ["contacts.fax"]}}}}, "no field 'contacts.fax'"),
    ({"roles": {"x": {"customers": {"require": {"ownr": "{user}"}}}}}, "'ownr', not a field of crm.account"),
    ({"roles": {"x": {"customers": "some"}}}, "customers must be `all` or a mapping"),
    ({"roles": {"x": {"slice": {"allow": ["*"]}}}}, "unknown key(s) slice"),
    ({"roles": {"x": {}}, "rols": {}}, "unknown top-level key(s) rols"),
])
def test_a_broken_policy_is_an_error_not_a_silent_leak(doc, problem):
    with pytest.raises(PolicyError) as exc:
        parse_policy(doc, "p.yaml")
    assert problem in str(exc.value) and str(exc.value).startswith("p.yaml")


def test_a_policy_file_from_the_settings(sqlite_ready, tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("roles:\n  billing_clerk:\n    slices: {allow: [billing.status]}\n"
                    "    mask: {billing.status: [payment_method, billing_email]}\n")
    settings = sqlite_ready.settings.model_copy(update={"policy": path})
    access = Access.for_principal(settings, Principal("t-file", "bo", "billing_clerk"))
    acme, _ = sqlite_ready.index.resolve("acme.com")
    c = assemble_context(ReadScope.build(settings, sqlite_ready.clock, access=access), acme, ["billing", "crm.account"])
    assert list(c.slices) == ["billing.status"]
    assert {g.slice: g.kind for g in c.gaps} == {"crm.account": "forbidden", "billing.invoices": "forbidden"}
    assert c.slices["billing.status"].provenance.masked_fields == ["payment_method", "billing_email"]
    with pytest.raises(UnknownRole):
        Access.for_principal(settings, Principal("t-file", "bo", "admin"))
    with pytest.raises(PolicyError, match="cannot read the access policy"):
        Access.for_principal(settings.model_copy(update={"policy": tmp_path / "none.yaml"}),
                             Principal("t", "u", "admin"))


def test_principals_from_the_cli_and_the_defaults(sqlite_ready):
    s = sqlite_ready.settings.model_copy(update={"tenant": "acme-co"})
    p = parse_as("account_exec:dana.scully", s)
    assert (p.tenant, p.user, p.role, p.interface) == ("acme-co", "dana.scully", "account_exec", "cli")
    assert parse_as("finance", s.model_copy(update={"user": "fin"})).user == "fin"
    for bad in ("", ":dana", "admin:dana scully", "admin;drop"):
        with pytest.raises(BadPrincipal):
            parse_as(bad, s)
    assert default_principal(s, "cli").role == "admin"
    assert default_principal(s, "langgraph").role == "support_agent"
    assert default_principal(s, "mcp").role == "support_agent"
    assert default_principal(s.model_copy(update={"role": "finance"}), "cli").role == "finance"


# ------------------------------------------------------------------------ masking
def test_masked_values_are_withheld_and_visibly_masked(sqlite_ready):
    acme, _ = sqlite_ready.index.resolve("acme.com")
    c = assemble_context(ReadScope.build(sqlite_ready.settings, sqlite_ready.clock, access=gate(sqlite_ready, "support_agent")), acme, ["crm.account", "crm.contacts", "billing"])
    bil, contacts, acc = c.slices["billing.status"], c.slices["crm.contacts"], c.slices["crm.account"]
    mark = marker("support_agent")
    assert bil.payment_method is None and bil.provenance.masked_fields == ["payment_method"]
    assert bil.provenance.masked_for == "support_agent" and bil.status == "past_due"  # status stays visible
    assert acc.contract_value is None and acc.mrr == 15000
    assert contacts.provenance.masked_fields == [f"contacts[{i}].phone" for i in range(len(contacts.contacts))]
    view = reference_view(c)
    assert view["billing"]["method"] == mark
    assert view["slices"]["crm.account"]["contract_value"] == mark
    assert {x["phone"] for x in view["slices"]["crm.contacts"]["contacts"]} == {mark}
    assert view["provenance"]["billing.status"]["masked_fields"] == ["payment_method"]
    text = json.dumps(view, ensure_ascii=False) + render_brief(c)
    assert "4242" not in text and "180,000" not in text and "180000" not in text and "+1-555" not in text
    assert f"contract value {mark}" in render_brief(c) and f"card {mark}" in render_brief(c)
    # what a model is shown, and what the offline model reads back
    block = context_block({"name": "Acme Corp"}, c.slices, c.gaps)
    assert mark in block and "4242" not in block and "+1-555" not in block
    back = parse_context_block(block)
    assert back.slices["billing.status"].payment_method is None
    assert back.slices["billing.status"].provenance.masked_fields == ["payment_method"]
    assert any(mark in line for line in billing_lines(back.slices))


def test_mask_copies_and_leaves_none_values_unlisted():
    s = BillingStatus(billing_id="b", status="current", payment_method=PaymentMethod(brand="visa", last4="4242"),
                      provenance={"source": "billing", "system": "stripe", "fetched_at": "2026-01-15T12:00:00",
                                  "as_of": "2026-01-15T12:00:00"})
    masked = mask_slice(s, ("payment_method", "billing_email"), "finance")
    assert s.payment_method is not None and masked is not s  # the original is untouched
    assert masked.provenance.masked_fields == ["payment_method"]  # billing_email was None: nothing to hide
    assert slice_view(masked)["payment_method"] == marker("finance")
    empty = CrmContacts(contacts=[{"name": "A"}], provenance=s.provenance)
    assert mask_slice(empty, ("contacts.phone",), "x") is empty


def test_memory_refuses_masked_copies():
    s = BillingStatus(billing_id="b", status="current", payment_method=PaymentMethod(brand="visa", last4="1"),
                      provenance={"source": "billing", "system": "stripe", "fetched_at": "2026-01-15T12:00:00",
                                  "as_of": "2026-01-15T12:00:00"})
    memory = ContextMemory(InMemoryStore(), "t", {})
    with pytest.raises(ValueError, match="masked copy"):
        memory.put("c_1", mask_slice(s, ("payment_method",), "support_agent"))


# --------------------------------------------------------------- forbidden slices
def test_a_forbidden_slice_is_never_read_from_the_source_or_memory(sqlite_ready):
    acme, _ = sqlite_ready.index.resolve("acme.com")
    store = RecordingStore()
    access = gate(sqlite_ready, "finance")
    memory = ContextMemory(store, access.tenant, sqlite_ready.settings.ttls)
    with statements_on(sqlite_ready.settings.source("support").url) as seen:
        _, out = read_slices(ReadScope.build(sqlite_ready.settings, sqlite_ready.clock, memory=memory, access=access), acme, ["support.tickets", "email.threads", "chat.mentions"])
    assert [(r.slice, r.kind) for r, _ in out] == [("support.tickets", "forbidden"), ("email.threads", "forbidden"),
                                                  ("chat.mentions", "forbidden")]
    assert "finance role may not read support.tickets" in out[0][0].message
    assert not [s for s in seen if "ticket" in s or "email" in s or "chat" in s]
    assert not [ns for _, ns in store.touched if ns[-1:] != () and "support.tickets" in ns]
    assert all(op != "PutOp" for op, _ in store.touched)
    denied = [(x.slice, x.decision, x.outcome) for x in records(sqlite_ready, access.tenant)
              if x.decision == "denied"]
    assert sorted(denied) == [("chat.mentions", "denied", "forbidden"), ("email.threads", "denied", "forbidden"),
                              ("support.tickets", "denied", "forbidden")]


# --------------------------------------------------------------------- row level
def test_an_account_exec_sees_only_the_accounts_they_own(sqlite_ready):
    r = sqlite_ready
    dana = gate(r, "account_exec", "dana.scully")

    def resolve(ref: str, access: Access = dana):
        return resolve_in(ReadScope.build(r.settings, r.clock, access=access, index=r.index), ref)

    assert resolve("acme.com")[0].name == "Acme Corp"
    assert resolve("umbrella-health.com")[0].name == "Umbrella Health"
    assert resolve("Umbrella Health")[0].name == "Umbrella Health"
    with pytest.raises(CustomerNotFound) as hidden:
        resolve("massivedynamic.com")
    with pytest.raises(CustomerNotFound) as missing:
        resolve("nowhere-at-all.com")
    assert str(hidden.value) == "No customer matches 'massivedynamic.com'."
    assert str(missing.value) == "No customer matches 'nowhere-at-all.com'."
    for ref in ("william.bell@massivedynamic.com", "Massive Dynamic", "crm:" + r.index.resolve(
            "massivedynamic.com")[0].anchors["crm"]):
        with pytest.raises(CustomerNotFound) as exc:
            resolve(ref)
        assert "Massive" not in str(exc.value).replace(ref, "")  # no suggestion names the hidden account
    # a misspelt name: the admin is offered Massive Dynamic, dana is offered nothing
    admin = gate(r, "admin")
    with pytest.raises(CustomerNotFound, match="Did you mean: Massive Dynamic"):
        resolve("Massive Dynamc", admin)
    with pytest.raises(CustomerNotFound) as typo:
        resolve("Massive Dynamc")
    assert str(typo.value) == "No customer matches 'Massive Dynamc'."
    # "acme" is ambiguous for the admin, and only Acme Corp exists for dana (Acme Logistics is monica's)
    with pytest.raises(AmbiguousCustomer):
        resolve("acme", admin)
    assert resolve("acme")[0].name == "Acme Corp"
    # Hooli has no CRM record: no owner, so no account exec sees it; a support agent does
    with pytest.raises(CustomerNotFound):
        resolve("hooli.xyz")
    assert resolve("hooli.xyz", gate(r, "support_agent"))[0].name == "Hooli"
    # a churned account is outside the support agent's "active customers", not the lead's
    with pytest.raises(CustomerNotFound):
        resolve("soylent.com", gate(r, "support_agent"))
    assert resolve("soylent.com", gate(r, "support_lead"))[0].name == "Soylent"
    row_checks = [(x.customer_id, x.decision, x.detail) for x in records(r, dana.tenant) if x.slice == "crm.account"]
    massive = r.index.resolve("massivedynamic.com")[0].customer_id
    assert (massive, "denied", "row check: owner is not dana.scully") in row_checks


def test_a_hidden_customer_read_directly_looks_like_no_source_knows_it(sqlite_ready):
    r = sqlite_ready
    massive, _ = r.index.resolve("massivedynamic.com")
    access = gate(r, "account_exec", "dana.scully")
    c = assemble_context(ReadScope.build(r.settings, r.clock, access=access), massive, None)
    assert c.slices == {} and {g.kind for g in c.gaps} == {"not_found"} and len(c.gaps) == len(every_slice("account_exec"))
    text = json.dumps(reference_view(c))
    assert "walter.bishop" not in text and "30000" not in text
    recs = records(r, access.tenant)
    assert len(recs) == 1 + len(every_slice("account_exec"))
    assert {x.decision for x in recs} == {"denied"} and sum(x.outcome == "row_filter" for x in recs) == \
        len(every_slice("account_exec"))


# ------------------------------------------------------- memory reads and tenants
def test_a_slice_cached_by_finance_reaches_a_support_agent_masked(sqlite_ready):
    r = sqlite_ready
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    memory = ContextMemory(InMemoryStore(), tenant, r.settings.ttls)
    acme, _ = r.index.resolve("acme.com")
    finance = assemble_context(ReadScope.build(r.settings, r.clock, memory=memory, access=gate(r, "finance", "fin", tenant)), acme, ["billing.status"])
    f = finance.slices["billing.status"]
    assert f.provenance.served_from == "source" and str(f.payment_method) == "visa •4242"
    agent = assemble_context(ReadScope.build(r.settings, r.clock, memory=memory, access=gate(r, "support_agent", "sam", tenant)), acme, ["billing.status"])
    a = agent.slices["billing.status"]
    assert a.provenance.served_from == "memory" and a.payment_method is None
    assert reference_view(agent)["billing"]["method"] == marker("support_agent")
    assert "4242" not in json.dumps(reference_view(agent))
    assert str(memory.get(acme.customer_id, "billing.status").slice.payment_method) == "visa •4242"  # full fidelity
    # a stale snapshot (billing down) is masked too
    down = r.settings.model_copy(update={"faults": "billing=down"})
    stale = assemble_context(ReadScope.build(down, r.clock, memory=memory, prefer_memory=False, access=gate(r, "support_agent", "sam", tenant)), acme, ["billing.status"])
    s = stale.slices["billing.status"]
    assert s.provenance.stale and s.payment_method is None and s.provenance.masked_fields == ["payment_method"]
    outcomes = [(x.role, x.slice, x.decision, x.outcome) for x in reversed(records(r, tenant))]
    assert outcomes == [
        ("finance", "billing.status", "allowed", "source"),
        ("support_agent", "crm.account", "allowed", "source"),  # the row check (active customers only)
        ("support_agent", "billing.status", "masked", "memory"),
        ("support_agent", "crm.account", "allowed", "memory"),  # a new gate judges the row filter again
        ("support_agent", "billing.status", "masked", "stale")]


def test_tenants_never_read_each_others_memory(sqlite_ready):
    r = sqlite_ready
    store = RecordingStore()
    acme, _ = r.index.resolve("acme.com")
    a = gate(r, "finance", "fin", "tenant-a")
    b = gate(r, "finance", "fin", "tenant-b")
    # tenant A caches every slice
    assemble_context(ReadScope.build(r.settings, r.clock, memory=ContextMemory(store, "tenant-a", r.settings.ttls), access=a), acme, None)
    assert {ns[1] for _, ns in store.touched} == {"tenant-a"}
    store.touched.clear()
    # tenant B, even through a memory handle opened for tenant A (a misconfigured process), reads
    # only its own namespace: nothing is served from A's snapshots
    c = assemble_context(ReadScope.build(r.settings, r.clock, memory=ContextMemory(store, "tenant-a", r.settings.ttls), access=b), acme, None)
    assert {ns[1] for _, ns in store.touched} == {"tenant-b"}
    assert {s.provenance.served_from for s in c.slices.values()} == {"source"}
    again = assemble_context(ReadScope.build(r.settings, r.clock, memory=ContextMemory(store, "tenant-b", r.settings.ttls), access=b), acme, ["billing"])
    assert {s.provenance.served_from for s in again.slices.values()} == {"memory"}  # B's own snapshots
    assert {x.tenant for x in records(r, "tenant-a")} == {"tenant-a"}
    assert {x.tenant for x in records(r, "tenant-b")} == {"tenant-b"}
    assert len(records(r, "tenant-b")) == len(every_slice("finance")) + 2  # every slice (read or denied), billing twice


# ---------------------------------------------- graphs: prompts and bound tools
def _billing_then_answer(messages, tools):
    if tools and not any(isinstance(m, ToolMessage) for m in messages):
        # read billing — and try to smuggle another customer into the call
        return AIMessage(content="", tool_calls=[
            {"id": "c1", "name": "read_slices", "args": {"slices": ["billing.status"]}},
            {"id": "c2", "name": "read_slices", "args": {"slices": ["crm.account"], "customer": "massivedynamic.com"}},
            {"id": "c3", "name": "read_slices", "args": {"slices": ["crm.account"],
                                                         BINDING_ARG: {"customer": "massivedynamic.com"}}},
        ])
    return AIMessage(content="Billing is past due [billing.status].")


def test_the_model_sees_masked_context_and_tools_stay_on_the_runs_customer(sqlite_ready, tmp_path):
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    settings = settings_for(sqlite_ready.settings.sources["crm"].url, tmp_path, tenant=tenant)
    model = ScriptedChatModel(_billing_then_answer)
    with Runner(settings, principal=Principal(tenant, "sam", "support_agent", interface="runner")) as runner:
        res = runner.ask("What's their billing status?", "acme.com", chat_model=model)
    # c1 reads billing; c2 (a `customer` argument) and c3 (a smuggled runtime) are refused
    assert res["error"] is None and res["slices_used"] == ["billing.status"]
    assert res["customer"]["name"] == "Acme Corp"
    answer_prompt = model.calls[-1]["messages"]
    assert isinstance(answer_prompt[0], SystemMessage)
    shown = " ".join(m.content for m in answer_prompt if isinstance(m, ToolMessage) and m.status != "error")
    assert marker("support_agent") in shown and "4242" not in " ".join(str(m.content) for m in answer_prompt)
    errors = [m for m in answer_prompt if isinstance(m, ToolMessage) and m.status == "error"]
    assert [e.tool_call_id for e in errors] == ["c2", "c3"]
    assert "read_slices takes only `slices`, not customer" in errors[0].content
    assert f"not {BINDING_ARG}" in errors[1].content
    massive, _ = sqlite_ready.index.resolve("massivedynamic.com")
    recs = audit_log(settings.state_db_url).query(tenant, limit=None)
    assert {x.customer_id for x in recs} == {res["customer"]["customer_id"]}  # nothing about Massive Dynamic
    assert massive.customer_id not in {x.customer_id for x in recs}
    # one record per read: the row check and the fetch (the answer is written from what the
    # fetch admitted, not read from memory again)
    assert [(x.slice, x.decision, x.detail) for x in reversed(recs)] == [
        ("crm.account", "allowed", "row check: row filter passed (status not churned; no CRM record: allow)"),
        ("billing.status", "masked", "masked: payment_method")]
    assert {(x.interface, x.role, x.user_name) for x in recs} == {("runner", "support_agent", "sam")}


def test_source_tools_take_the_customer_from_the_injected_runtime_only(sqlite_ready):
    acme, _ = sqlite_ready.index.resolve("acme.com")
    rt = ToolBinding(scope=ReadScope.build(sqlite_ready.settings, sqlite_ready.clock,
                                           principal=Principal("t-tools", "sam", "support_agent")), customer=acme)
    assert set(READ_SLICES.tool_call_schema.model_json_schema()["properties"]) == {"slices"}
    with pytest.raises(ValidationError):
        READ_SLICES.invoke({"slices": ["billing.status"], "customer": "massivedynamic.com", BINDING_ARG: rt})
    call = {"id": "x", "name": "read_slices", "type": "tool_call",
            "args": {"slices": ["billing.status"], BINDING_ARG: {"customer": "massivedynamic.com"}}}
    msg = READ_SLICES.invoke(bind_call(call, rt))
    out = json.loads(msg.content)
    assert out["customer"] == acme.name
    assert out["slices"]["billing.status"]["payment_method"] == marker("support_agent")


def test_customer_context_reads_for_the_principal(sqlite_ready):
    r = sqlite_ready
    with pytest.raises(CustomerNotFound):
        read_customer_context(ReadScope.build(r.settings, r.clock, access=gate(r, "account_exec", "dana.scully"), index=r.index), "massivedynamic.com", list(SLICE_NAMES))
    c = read_customer_context(ReadScope.build(r.settings, r.clock, access=gate(r, "account_exec", "dana.scully"), index=r.index), "acme.com", ["billing"])
    assert list(c.slices) == ["billing.status"] and c.gaps[0].kind == "forbidden"


def test_a_thread_continued_by_someone_who_may_not_see_its_customer_ends_not_found(sqlite_ready, tmp_path):
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    settings = settings_for(sqlite_ready.settings.sources["crm"].url, tmp_path, tenant=tenant)
    with Runner(settings) as runner:
        first = runner.ask("What's their billing status?", "massivedynamic.com", "t-shared",
                           principal=Principal(tenant, "walter.bishop", "account_exec"))
        assert first["error"] is None and first["customer"]["name"] == "Massive Dynamic"
        again = runner.ask("and their usage?", None, "t-shared",
                           principal=Principal(tenant, "dana.scully", "account_exec"))
    # exactly what a thread that does not exist gives: its customer (and the reference it was started
    # with) never named (issue 15; tests/test_entry_points.py)
    assert again["error"] == NO_CUSTOMER_GIVEN  # asked who the customer is, as on a new thread
    assert again["error"].startswith("Who is the customer, and what is the conversation about?")
    assert not again.get("slices_used") and "30,000" not in json.dumps(again) and "massive" not in json.dumps(again)
