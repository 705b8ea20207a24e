"""Graceful degradation: each source in turn down, slow beyond its timeout, flaky or
corrupt — every story customer's context is still produced, the gap is named, and
the other sources' slices are exactly what they are without the fault."""

from __future__ import annotations

from functools import cache

import pytest

from agent.brief import render_brief
from tools.context.assembly import assemble_context
from tools.context.scope import ReadScope
from tools.context.view import reference_view
from tools.guard import SourceGuard
from tools.settings import EMBEDDED_SOURCES, GuardSettings, SourceConfig
from tools.slices import SLICE_MODELS

from .conftest import settings_for
from .test_guard import FakeClock

STORY = ["acme.com", "globex.com", "initech.io", "umbrella-health.com", "hooli.xyz", "starkindustries.com",
         "wayne.com", "soylent.com", "cyberdyne.ai", "tyrell.fr", "massivedynamic.com", "piedpiper.com",
         "acmelogistics.com"]
FAULTS = {"down": "down", "slow": "slow:5s", "flaky": "flaky:0.5", "corrupt": "corrupt"}


def facts(s) -> dict:
    data = s.model_dump(mode="json")
    data["provenance"].pop("fetched_at")
    return data


def run(settings, ref, resolve):
    customer, _ = resolve(ref)
    # One read at a time on a fake clock: injected slowness advances time without sleeping.
    g = SourceGuard(settings.guard, FakeClock())
    return assemble_context(ReadScope.build(settings, ctxs[0], guard=g), customer)


ctxs: list = []


@pytest.fixture(scope="module")
def world(sqlite_warehouse, sqlite_ready, tmp_path_factory):
    ctxs.append(sqlite_ready.clock)
    base_settings = sqlite_ready.settings.model_copy(update={"guard": GuardSettings(max_concurrency=1)})

    @cache
    def baseline(ref):
        return run(base_settings, ref, sqlite_ready.index.resolve)

    return base_settings, baseline, sqlite_ready.index.resolve


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("source", EMBEDDED_SOURCES)
def test_every_source_every_fault(world, source, fault):
    base_settings, baseline, resolve = world
    sources = dict(base_settings.sources)
    if fault == "slow":
        sources[source] = sources[source].model_copy(update={"timeout_s": 1.0})
    settings = base_settings.model_copy(update={"faults": f"{source}={FAULTS[fault]}", "sources": sources})
    mine = [n for n, m in SLICE_MODELS.items() if m.source == source]
    effect = 0
    for ref in STORY:
        base, c = baseline(ref), run(settings, ref, resolve)
        # Everything from the other sources is untouched.
        for name, s in base.slices.items():
            if name not in mine:
                assert name in c.slices and facts(c.slices[name]) == facts(s), (ref, name)
        assert [g for g in c.gaps if g.source != source] == [g for g in base.gaps if g.source != source]
        gaps = {g.slice: g for g in c.gaps if g.source == source}
        report = next(r for r in c.sources if r.source == source)
        if fault == "down":
            assert {g.kind for g in gaps.values()} == {"unavailable"} and set(gaps) == set(mine)
            # The first calls fail after retries; once the breaker opens the rest are not attempted.
            assert all("is down" in g.message or "circuit open" in g.message for g in gaps.values())
            assert "is down" in gaps[mine[0]].message and report.status == "failed"
        elif fault == "slow":
            assert set(gaps) == set(mine) and gaps[mine[0]].kind == "timeout"
            assert all(g.kind == "timeout" or "circuit open" in g.message for g in gaps.values())
            assert report.status == "failed" and "within 1 s" in report.error
        else:
            for name in mine:
                if name in c.slices:
                    effect += c.slices[name].provenance.skipped_rows
                    if fault == "flaky":
                        assert facts(c.slices[name]) == facts(base.slices[name]), (ref, name)
                else:
                    assert gaps[name].kind in ("unavailable", "not_found"), (ref, name)
                    if gaps[name].kind == "unavailable":
                        effect += 1
            effect += report.attempts - len([n for n in mine if n in c.slices or gaps[n].kind != "not_found"]) \
                if fault == "flaky" else 0
        # The context is still whole enough to show.
        assert c.customer_id == base.customer_id
        assert reference_view(c)["customer_id"] == base.customer_id
        assert "### Missing Context" in render_brief(c)
    if fault in ("flaky", "corrupt"):
        assert effect > 0, f"{source}={fault} had no visible effect on any story customer"


def only(sqlite_warehouse, state, source):
    return settings_for(sqlite_warehouse, state, sources={source: SourceConfig(url=sqlite_warehouse)})


@pytest.mark.parametrize("source, ref", [("crm", "acme.com"), ("billing", "acme.com"), ("billing", "hooli.xyz")])
def test_with_a_single_source_configured(sqlite_warehouse, tmp_path, source, ref):
    from agent.bootstrap import ready

    r = ready(only(sqlite_warehouse, tmp_path, source))
    customer, _ = r.index.resolve(ref)
    c = assemble_context(ReadScope.build(r.settings, r.clock), customer)
    assert {s.source for s in c.slices.values()} == {source}
    missing = {g.source for g in c.gaps if g.kind == "not_connected"}
    assert missing == set(EMBEDDED_SOURCES) - {source}
    for g in c.gaps:
        assert g.remedy and g.remedy.startswith("Connect a")
    if source == "crm":
        assert (c.traits.tier, c.get("crm.account").mrr) == ("enterprise", 15000)
    else:
        assert c.get("billing.status").status == ("past_due" if ref == "acme.com" else "current")
        assert any(g.remedy.startswith("Connect a CRM source (HubSpot, Salesforce") for g in c.gaps)
    report = {x.source: x.status for x in c.sources}
    assert report[source] == "connected" and {v for k, v in report.items() if k != source} == {"not_connected"}


def test_a_source_that_cannot_be_opened_is_a_gap_not_a_crash(sqlite_ready):
    settings = sqlite_ready.settings.model_copy(deep=True)
    settings.sources["billing"] = SourceConfig(url=settings.source("billing").url, mapping="no_such_mapping")
    acme, _ = sqlite_ready.index.resolve("acme.com")
    c = assemble_context(ReadScope.build(settings, sqlite_ready.clock), acme)
    billing = [g for g in c.gaps if g.source == "billing"]
    assert {g.kind for g in billing} == {"unavailable"} and len(billing) == 2
    assert "no mapping 'no_such_mapping'" in billing[0].message
    assert c.get("crm.account").mrr == 15000
