"""One read path per request: one resolution, one access gate, one memory read and one audit
record per slice read, one row check — counted around the real functions."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest

from agent.runs import Runner
from tests.conftest import settings_for
from tools.access.audit import audit_log
from tools.access.gate import Access
from tools.access.principal import Principal
from tools.context.read import resolve
from tools.context.resolution import CachedIndex
from tools.memory import ContextMemory

QUESTION = "Who are the contacts and the deals?"  # the offline planner reads crm.contacts + crm.opportunities


@pytest.fixture
def counted(monkeypatch):
    """Counts of identity resolutions, access gates and memory reads (by slice) while a test runs."""
    counts: Counter[str] = Counter()
    memory_reads: Counter[str] = Counter()

    def wrap(cls, name, count):
        original = getattr(cls, name)

        def counting(self, *args, **kwargs):
            count(*args, **kwargs)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, counting)

    # a request resolves through the per-process cache (a hit computes nothing; it still counts)
    wrap(CachedIndex, "resolve", lambda *a, **k: counts.update(["resolve"]))
    wrap(Access, "__init__", lambda *a, **k: counts.update(["gate"]))
    # every memory read is one ``rows`` query (get_many and get read through it)
    wrap(ContextMemory, "rows", lambda customer_id, names: memory_reads.update(list(names)))
    return counts, memory_reads


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_one_question_about_two_slices_as_an_account_executive(sqlite_warehouse, tmp_path, counted, warm):
    counts, memory_reads = counted
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    settings = settings_for(sqlite_warehouse, tmp_path, tenant=tenant)
    dana = Principal(tenant, "dana.scully", "account_exec", interface="cli")
    with Runner(settings, principal=dana) as runner:
        if warm:  # an earlier request filled long-term memory
            runner.ask(QUESTION, "acme.com")
        counts.clear()
        memory_reads.clear()
        since = len(audit_log(settings.state_db_url).query(tenant, limit=None))

        # What `custctx ask QUESTION --customer acme.com --as account_exec:dana.scully` does:
        scope = runner.request()  # the request's scope: one gate
        resolve(scope, "acme.com")  # the CLI resolves first, for its exit codes ...
        res = runner.ask(QUESTION, "acme.com", scope=scope)  # ... and the graph uses that resolution

    assert res["error"] is None and res["slices_used"] == ["crm.contacts", "crm.opportunities"]
    assert counts == {"resolve": 1, "gate": 1}
    # one memory read per slice of the question (cold: a miss, then the source), plus the row
    # check's read of the account; the answer is written from what the fetches admitted
    assert memory_reads == {"crm.contacts": 1, "crm.opportunities": 1, "crm.account": 1}
    recs = list(reversed(audit_log(settings.state_db_url).query(tenant, limit=None)))[since:]
    assert [(r.slice, (r.detail or "").startswith("row check")) for r in recs[:1]] == [("crm.account", True)]
    # the two fetches run in parallel: their records come in either order
    assert sorted((r.slice, (r.detail or "").startswith("row check")) for r in recs[1:]) == [
        ("crm.contacts", False), ("crm.opportunities", False)]
    assert {r.outcome for r in recs[1:]} == {"memory" if warm else "source"}
    assert {r.interface for r in recs} == {"cli"}


def test_a_graph_resumed_elsewhere_reads_its_slices_back_through_the_gate(sqlite_warehouse, tmp_path):
    """The admitted slices live only for the run; a respond step without them (a run resumed in
    another process) reads the turn's references back from memory, masked and audited."""
    from agent.graphs.nodes import turn_context
    from agent.run_context import RunContext, RunServices, bound

    tenant = f"t-{uuid.uuid4().hex[:8]}"
    settings = settings_for(sqlite_warehouse, tmp_path, tenant=tenant)
    sam = Principal(tenant, "sam", "support_agent", interface="runner")
    with Runner(settings, principal=sam) as runner:
        res = runner.ask("What's their billing status?", "acme.com", "t-resume")
        state = runner.assistant.get_state({"configurable": {"thread_id": "t-resume"}}).values
        rc = RunContext()

        class _Runtime:  # what LangGraph hands a node: the run's context and store
            context, store = rc, runner.store

        with bound(rc, RunServices(scope=runner.request())):
            slices, gaps = turn_context(state, _Runtime())  # type: ignore[arg-type]
    assert list(slices) == res["slices_used"] == ["billing.status", "billing.invoices"] and not gaps
    assert slices["billing.status"].provenance.masked_fields == ["payment_method"]
    recs = audit_log(settings.state_db_url).query(tenant, limit=None)
    assert [(r.slice, r.detail) for r in recs[:2]] == [
        ("billing.invoices", "read back for the answer"),
        ("billing.status", "read back for the answer; masked: payment_method")]
