"""Answer the question asked (issue 18, part 6): the offline planner maps a question to the fields
that answer it, reads only their slices, states them, says plainly when the data cannot answer, and
never falls back to the eight-slice overview for a specific question."""

from __future__ import annotations

import uuid

import pytest

from agent.offline.fields import fields_of, needs_of, without_names
from agent.offline.planning import OVERVIEW_SLICES, plan_fields, plan_question
from agent.runs import Runner

from .conftest import settings_for


@pytest.mark.parametrize(("question", "fields", "slices"), [
    ("What are the contacts' phone numbers?", ["phones"], ["crm.contacts"]),
    ("How many seats are active at Globex?", ["active_users"], ["product.usage"]),
    ("When do we next meet Acme?", ["next_meeting"], ["calendar.meetings"]),
    ("When is Umbrella's renewal and should I worry?", ["health_check", "renewal_date"],
     ["crm.account", "billing.status", "product.usage", "support.summary"]),
    ("what did we last discuss with them?", ["last_touch"], ["crm.activities", "email.threads"]),
    ("What's the CSAT?", ["csat"], ["support.summary"]),
    ("What's the contract renewal date for Umbrella Health?", ["renewal_date"], ["crm.account"]),
])
def test_a_question_maps_to_its_fields_and_their_slices_only(question, fields, slices):
    plan = plan_fields(question)
    assert plan.fields == fields and plan.slices == slices


def test_names_are_not_topics_and_broad_questions_keep_their_intents():
    assert "Health" not in without_names("Is Umbrella Health likely to churn?")
    assert plan_fields("Is Umbrella Health likely to churn?").fields == ["health_check"]
    assert plan_fields("Which region is Massive Dynamic in?").slices == ["crm.account"]
    for q in ("What's their billing status?", "Any open support tickets?", "What's going on with them?"):
        assert plan_fields(q).slices == plan_question(q)[1] and not fields_of(q)  # unchanged by the fields
    # a shopper's cards are commerce's while a commerce source is connected
    assert "payment_method" not in fields_of("Which card is on file?", commerce=True)
    assert fields_of("Which card is on file?") == ["payment_method"]


def test_specific_questions_nothing_answers_read_nothing_instead_of_the_overview():
    assert needs_of("Has their onboarding finished?") == ["onboarding"]
    assert plan_fields("What is their NPS?").slices == []
    assert plan_fields("How tall is the building?").slices == []  # specific, unknown: nothing read
    assert plan_fields("Anything I should know?").slices == list(OVERVIEW_SLICES)  # open: the overview
    assert plan_fields("and then?", ["billing.status"]).slices == ["billing.status"]  # a follow-up keeps its slices


@pytest.fixture(scope="module")
def runner(sqlite_ready, tmp_path_factory):
    settings = settings_for(sqlite_ready.settings.sources["crm"].url, tmp_path_factory.mktemp("fields"),
                            tenant=f"t-{uuid.uuid4().hex[:8]}")
    with Runner(settings) as r:
        yield r


@pytest.mark.parametrize(("customer", "question", "facts", "absent"), [
    ("acme.com", "What are the contacts' phone numbers?", ["Wile Coyote", "phone +1-555-0101-001",
                                                           "phone +1-555-0101-002"], ["[billing"]),
    ("globex.com", "How many seats are active at Globex?", ["80 active users"], ["[crm.account]", "[billing"]),
    ("acme.com", "When do we next meet Acme?", ["**Next meeting**", "Acme QBR", "2026-01-20"], ["[product.usage]"]),
    ("umbrella-health.com", "When is Umbrella's renewal and should I worry?",
     ["2026-02-05 (21 days away)", "4 sso", "CSAT 2.9", "at risk"], ["[email.threads]"]),
    ("umbrella-health.com", "What's the satisfaction score at Umbrella Health?", ["CSAT 2.9"], ["Open ticket"]),
    ("acme.com", "What is their NPS?", ["NPS score", "cannot answer from the data", "custctx note"], ["[crm"]),
    ("acme.com", "How tall is the building?", ["I can't tell which of this customer's data answers"], ["[crm"]),
])
def test_the_answer_states_the_asked_fields(runner, customer, question, facts, absent):
    res = runner.ask(question, customer)
    assert res["error"] is None
    for f in facts:
        assert f in res["answer"], (f, res["answer"])
    for a in absent:
        assert a not in res["answer"], (a, res["answer"])
    assert not set(OVERVIEW_SLICES) <= set(res["slices_used"])


def test_last_discussed_is_the_latest_touch_not_the_previous_answer(runner):
    first = runner.ask("What's their billing status?", "acme.com")
    again = runner.ask("what did we last discuss with them?", None, first["thread_id"])
    assert again["slices_used"] == ["crm.activities", "email.threads"]
    assert again["answer"].splitlines()[1].startswith('- **Latest touch**: 2026-01-13 email "Re: Invoice payment failed"')
    assert "past_due" not in again["answer"]


def test_a_slice_without_the_value_says_so(runner):
    res = runner.ask("When do we next meet Globex?", "globex.com")  # only a past sync in the calendar
    assert "**No upcoming meeting**" in res["answer"] and "Globex monthly sync" in res["answer"]
    trial = runner.ask("When does their trial end?", "acme.com")
    assert "**No trial**: the subscription is past_due [billing.status]" in trial["answer"]
