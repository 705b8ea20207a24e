"""Identity resolution edge cases against the seeded story warehouse."""

from __future__ import annotations

import pytest

from tools.identity import (
    AmbiguousCustomer,
    BadReference,
    CustomerNotFound,
    normalize_email,
    normalize_name,
)


def test_normalisers():
    assert normalize_email("Rachael+Support@Tyrell.FR") == "rachael@tyrell.fr"
    assert normalize_name("  Société  Tyrell! ") == "societe tyrell"


@pytest.mark.parametrize("ref", [
    "acme.com", "https://www.acme.com/", "ACME.COM", "Acme Corp", "acme corp",
    "wile.coyote@acme.com", "someone.new@acme.com",
])
def test_many_ways_to_name_acme(sqlite_ready, ref):
    customer, _ = sqlite_ready.index.resolve(ref)
    assert customer.name == "Acme Corp"


def test_any_system_id_resolves(sqlite_ready):
    acme, _ = sqlite_ready.index.resolve("acme.com")
    for source, record_id in acme.anchors.items():
        by_prefixed, how = sqlite_ready.index.resolve(f"{source}:{record_id}")
        assert by_prefixed.customer_id == acme.customer_id and how.endswith("_id")
    assert sqlite_ready.index.resolve(acme.anchors["billing"])[0].customer_id == acme.customer_id
    assert sqlite_ready.index.resolve(acme.customer_id)[0].customer_id == acme.customer_id
    assert set(acme.anchors) == {"crm", "billing", "support", "product"}


def test_acme_alone_is_ambiguous(sqlite_ready):
    with pytest.raises(AmbiguousCustomer) as exc:
        sqlite_ready.index.resolve("acme")
    assert {c.name for c in exc.value.candidates} == {"Acme Corp", "Acme Logistics"}
    assert "\n" not in str(exc.value)


def test_unknown_email_is_not_found_in_one_line(sqlite_ready):
    with pytest.raises(CustomerNotFound) as exc:
        sqlite_ready.index.resolve("nobody@nowhere.test")
    assert "\n" not in str(exc.value) and "nobody@nowhere.test" in str(exc.value)


def test_unknown_name_suggests_closest(sqlite_ready):
    with pytest.raises(CustomerNotFound) as exc:
        sqlite_ready.index.resolve("Globexx")
    assert "Globex" in exc.value.suggestions


@pytest.mark.parametrize("ref", ["not-an-email@", "a@b@c.com", "   ", "@acme.com"])
def test_malformed_references(sqlite_ready, ref):
    with pytest.raises(BadReference):
        sqlite_ready.index.resolve(ref)


def test_free_mail_domains_never_link_customers(sqlite_ready):
    with pytest.raises(CustomerNotFound):
        sqlite_ready.index.resolve("someone@gmail.com")


def test_one_system_only_customers_resolve(sqlite_ready):
    hooli, _ = sqlite_ready.index.resolve("hooli.xyz")
    assert "crm" not in hooli.anchors and {"billing", "support"} <= set(hooli.anchors)
    cyberdyne, _ = sqlite_ready.index.resolve("cyberdyne.ai")
    assert "billing" not in cyberdyne.anchors and "crm" in cyberdyne.anchors


def test_every_story_customer_resolves_to_a_distinct_customer(sqlite_ready):
    domains = ["acme.com", "globex.com", "initech.io", "umbrella-health.com", "hooli.xyz", "starkindustries.com",
               "wayne.com", "soylent.com", "cyberdyne.ai", "tyrell.fr", "massivedynamic.com", "piedpiper.com",
               "acmelogistics.com"]
    ids = {sqlite_ready.index.resolve(d)[0].customer_id for d in domains}
    assert len(ids) == len(domains)


def test_a_story_person_resolves_by_app_user_id_and_anonymous_ids(sqlite_ready):
    from sqlalchemy import select

    from tools.embedded import tables as T
    from tools.embedded.story import ACME_VISITOR_ANONYMOUS_ID
    from tools.sources.registry import engine_for

    with engine_for(sqlite_ready.settings.source("product").url).connect() as conn:
        user, anon = conn.execute(select(T.sg_identifies.c.user_id, T.sg_identifies.c.anonymous_id)
                                  .where(T.sg_identifies.c.email == "rhoda.runner@acme.com")).one()
    for ref, how in ((f"user:{user}", "user_id"), (f"anon:{anon}", "anonymous_id"), (user, "id"),
                     (f"anon:{ACME_VISITOR_ANONYMOUS_ID}", "anonymous_id")):
        customer, matched = sqlite_ready.index.resolve(ref)
        assert (customer.name, matched) == ("Acme Corp", how), ref
    with pytest.raises(CustomerNotFound):
        sqlite_ready.index.resolve("user:usr_99999999")
