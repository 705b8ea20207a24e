"""Switching the CRM to Salesforce is configuration: same slices from another schema."""

from __future__ import annotations

from datetime import date

import pytest

from agent.bootstrap import ready
from tools.context.assembly import assemble_context
from tools.context.scope import ReadScope
from tools.embedded.generate import seed_salesforce
from tools.settings import SourceConfig

from .conftest import settings_for


@pytest.fixture(scope="module")
def sf_ready(sqlite_warehouse, tmp_path_factory):
    state = tmp_path_factory.mktemp("sf")
    sf_url = f"sqlite:///{state / 'salesforce.sqlite'}"
    seed_salesforce(sf_url)
    settings = settings_for(sqlite_warehouse, state)
    settings.sources["crm"] = SourceConfig(url=sf_url, mapping="salesforce")
    return ready(settings)


def test_salesforce_account_facts_match_hubspot(sf_ready, sqlite_ready):
    sf_acme, _ = sf_ready.index.resolve("acme.com")
    hs_acme, _ = sqlite_ready.index.resolve("acme.com")
    sf = assemble_context(ReadScope.build(sf_ready.settings, sf_ready.clock), sf_acme, ["crm"])
    hs = assemble_context(ReadScope.build(sqlite_ready.settings, sqlite_ready.clock), hs_acme, ["crm"])
    a, b = sf.get("crm.account"), hs.get("crm.account")
    assert a.provenance.system == "salesforce" and b.provenance.system == "hubspot"
    keys = ("company_name", "domain", "segment", "owner", "plan", "mrr", "contract_value", "renewal_date", "status")
    assert {k: getattr(a, k) for k in keys} == {k: getattr(b, k) for k in keys}
    assert a.renewal_date == date(2026, 2, 28)
    roles = {p.name: p.role for p in sf.get("crm.contacts").contacts}
    assert roles["Wile Coyote"] == "champion" and roles["Rhoda Runner"] == "exec sponsor"
    deal = next(o for o in sf.get("crm.opportunities").open if o.name == "Acme expansion 2026")
    assert (deal.stage, deal.amount) == ("proposal", 60000)
    kinds = {x.kind for x in sf.get("crm.activities").activities}
    assert "meeting" in kinds and len(kinds) >= 2  # tasks and events are both read


def test_salesforce_crm_still_stitches_billing_and_support(sf_ready):
    acme, _ = sf_ready.index.resolve("acme.com")
    assert {"crm", "billing", "support", "product"} <= set(acme.anchors)
    c = assemble_context(ReadScope.build(sf_ready.settings, sf_ready.clock), acme)
    assert c.traits.risk_indicators == ["billing_issue", "declining_usage"]
    tyrell, _ = sf_ready.index.resolve("rachael+support@tyrell.fr")
    assert tyrell.name == "Société Tyrell"
    assert {c.name for c in _ambiguous(sf_ready, "acme")} == {"Acme Corp", "Acme Logistics"}


def _ambiguous(r, ref):
    from tools.identity import AmbiguousCustomer

    with pytest.raises(AmbiguousCustomer) as exc:
        r.index.resolve(ref)
    return exc.value.candidates
