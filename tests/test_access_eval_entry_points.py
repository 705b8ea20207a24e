"""The access eval through every entry point (issue 15, "Done when"): the judge (a hidden reference must
answer exactly like a missing one; nothing identifying a hidden customer in any answer), the drivers
against the real CLI, a real uvicorn HTTP server, the real MCP server over streamable HTTP with bearer
keys and `langgraph dev` with the auth of langgraph.json — every story customer, zero problems — and
a driver that leaks is caught. Timings are measured by `custctx eval --suite access`, not asserted here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.runs import Runner
from evals import access_probes as ap
from evals.access_drivers import CliDriver, HttpDriver, LangGraphDriver, McpDriver, Reply, closing
from evals.access_entry import (
    MISSING_CUSTOMER,
    EntryContext,
    entry_point_probes,
    hidden_needles,
    identity,
    normal,
    same_as_missing,
)
from evals.access_servers import InProcessCli, cli_subprocess, served, settings_env, write_keys
from evals.access_suite import DEFAULT_ENTRY_POINTS, ENTRY_POINTS, entry_points_option
from evals.runner import CaseResult, EvalReport, write_report
from tools.access.principal import Principal
from tools.context.view import reference_view
from tools.settings import Settings

from .conftest import settings_for

DANA = next(e for e in ap.EXPECT if e.label == "account_exec:dana.scully")
SAM = next(e for e in ap.EXPECT if e.label == "support_agent:sam.lee")
ADMIN = next(e for e in ap.EXPECT if e.label == "admin:root")


@pytest.fixture(scope="module")
def world(sqlite_warehouse, tmp_path_factory):
    """Settings on the story warehouse (the probes' tenant), the admin baseline, identities, tickets,
    and a key file with a key per principal."""
    home = tmp_path_factory.mktemp("entry-eval")
    settings = settings_for(sqlite_warehouse, home, tenant=ap.TENANT)
    with Runner(settings, principal=Principal(ap.TENANT, "root", "admin", interface="runner")) as runner:
        baseline = {}
        for ref in ap.REFS:
            c = runner.customer_context(ref, None)
            baseline[ref] = ap.Baseline(c.customer_id, c.name, reference_view(c)["slices"])
        ids, tickets = identity(runner, baseline), ap.story_tickets(runner, baseline)
    keys = write_keys(home / "keys.json", [(e.label, e.role, e.user) for e in ap.EXPECT], ap.TENANT)
    yield settings, baseline, ids, tickets, keys, home


def ctx(world, interface: str) -> EntryContext:
    settings, baseline, ids, tickets, *_ = world
    return EntryContext(settings, baseline, ids, tickets, interface)


def problems_of(probes) -> dict[str, list[str]]:  # noqa: ANN001
    out: dict[str, list[str]] = {}
    n = 0
    for p in probes:
        n += 1
        if p.problems or p.audit:
            out[p.case] = p.problems + p.audit
    assert n > 0
    return out


# ------------------------------------------------------------------ the judge
def test_a_hidden_answer_must_be_a_missing_answer_up_to_the_typed_reference():
    missing = Reply(False, "404 customer_not_found", '{"message": "No customer matches \'nowhere.example\'.", '
                                                      '"suggestions": []}')
    same = Reply(False, "404 customer_not_found", '{"message": "No customer matches \'massivedynamic.com\'. '
                                                   'Did you mean: Acme Corp?", "suggestions": ["Acme Corp"]}')
    assert same_as_missing(same, "massivedynamic.com", missing, "nowhere.example") == []
    other_status = Reply(False, "422 bad_reference", missing.text)
    assert same_as_missing(other_status, "massivedynamic.com", missing, "nowhere.example")[0].startswith("LEAK")
    other_text = Reply(False, "404 customer_not_found", "No customer matches 'support:360010' (Massive Dynamic).")
    assert same_as_missing(other_text, "support:360010", missing, "nowhere.example")[0].startswith("LEAK")
    assert same_as_missing(Reply(True, "200", "{}"), "x", missing, "y")
    assert normal("thread 0b0e4a1e-3f7c-4c39-9d59-0a4f7a3c2b11 at 2026-01-15T12:00:00Z in 0.3 s", "x") == \
        "thread ID at TIME in DURATION"
    # suggestions are cut up to their own "?": a question asked after them stays in both texts
    ask = " Who is the customer you are talking to? Give their email."
    hidden_ask = Reply(False, "exit 1", "No customer matches 'acme.io'. Did you mean: Acme Corp?" + ask)
    missing_ask = Reply(False, "exit 1", "No customer matches 'nowhere.example'." + ask)
    assert same_as_missing(hidden_ask, "acme.io", missing_ask, "nowhere.example") == []
    cut_short = Reply(False, "exit 1", "No customer matches 'acme.io'. Did you mean: Acme Corp?")
    assert same_as_missing(cut_short, "acme.io", missing_ask, "nowhere.example")[0].startswith("LEAK")


def test_what_identifies_a_hidden_customer_and_nothing_a_visible_one_shares(world):
    _, baseline, ids, *_ = world
    md = ids["massivedynamic.com"]
    assert {"Massive Dynamic", "massivedynamic.com", "support:360010", "billing:cus_0000010",
            "Feature request: EU-only data processing toggle"} <= md
    banned = hidden_needles(DANA, ids, baseline)
    assert "Massive Dynamic" in banned and "support:360010" in banned
    assert "Acme Corp" not in banned and "acme.com" not in banned  # hers
    seen = json.dumps([[baseline[r].name, baseline[r].slices] for r in DANA.visible], ensure_ascii=False)
    assert not any(n in seen for n in banned)
    assert hidden_needles(ADMIN, ids, baseline) == {}


def test_entry_points_option():
    assert entry_points_option(None) == DEFAULT_ENTRY_POINTS == ("cli", "http", "mcp")
    assert entry_points_option("all") == ENTRY_POINTS
    assert entry_points_option("none") == ()
    assert entry_points_option("http, MCP,http") == ("http", "mcp")
    with pytest.raises(ValueError, match="unknown entry point 'grpc'"):
        entry_points_option("grpc")


def test_the_settings_travel_to_a_server_process_whole(world):
    settings = world[0]
    import os

    saved = dict(os.environ)
    try:
        os.environ.update(settings_env(settings))
        assert Settings() == settings
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_the_report_has_a_table_per_entry_point(tmp_path):
    def case(entry: str, name: str, leaks: float, **metrics: float) -> CaseResult:
        scores = [{"key": "leaks", "score": leaks, "comment": ""}, {"key": "access_policy", "score": 1.0,
                                                                    "comment": ""},
                  *({"key": k, "score": v, "comment": "medians …"} for k, v in metrics.items())]
        return CaseResult("access", name, 1, leaks == 0, scores, 5.0, 0, note="medians …" if metrics else "",
                          entry=entry)

    report = EvalReport("r", "offline", 1, ["access"], [
        case("runner", "a", 0), case("http", "http: context x", 1), case("http", "http: timing t", 0,
                                                                          hidden_median_ms=3.0, missing_median_ms=2.9),
        CaseResult("access", "mcp: entry point", 1, False, [{"key": "entry_points_covered", "score": 0.0,
                                                             "comment": "did not start"}], 0.0, 0, entry="mcp")])
    md, _ = write_report(report, tmp_path)
    text = md.read_text(encoding="utf-8")
    assert "## Access by entry point" in text
    assert "| HTTP API | 2 | 1 | 1 | 0 |" in text and "| MCP (HTTP, bearer) | 1 | 0 | 0 | 1 |" in text
    assert "- http: timing t: medians …" in text
    assert {k: ok for k, *_, ok in report.gate()}["entry_points_covered"] is False


# ------------------------------------------------------------------ a leaking entry point is caught
class LeakyDriver:
    """An entry point that answers a hidden customer with its name, and a hidden ticket with 403."""

    name, ops = "leaky", ("context", "ticket")

    def __init__(self, baseline: dict[str, ap.Baseline], visible: frozenset[str]):
        self.baseline, self.visible = baseline, visible

    def context(self, who: str, ref: str) -> Reply:
        if ref in self.baseline:
            base = self.baseline[ref]
            if ref in self.visible:
                return Reply(True, "200", json.dumps({"name": base.name}))
            return Reply(False, "404 customer_not_found", f"No customer matches {ref!r} ({base.name} is not yours).")
        return Reply(False, "404 customer_not_found", f"No customer matches {ref!r}.")

    def ticket(self, who: str, ticket_id: str) -> Reply:
        if ticket_id == ap.ENTRY["missing_ticket"]:
            return Reply(False, "404 ticket_not_found", f"no ticket {ticket_id}")
        return Reply(False, "403 forbidden", f"ticket {ticket_id} is another owner's")


def test_a_leaking_entry_point_fails_the_probes(world):
    _, baseline, *_ = world
    found = problems_of(entry_point_probes(LeakyDriver(baseline, DANA.visible), ctx(world, "leaky"), [DANA]))
    md = found["leaky: context account_exec:dana.scully × massivedynamic.com"]
    assert any(p.startswith("LEAK hidden massivedynamic.com: 'Massive Dynamic'") for p in md)
    assert any("answers" in p for p in md)  # not what a missing customer gets
    assert any(p.startswith("LEAK") and "403" in p for p in found[
        "leaky: ticket #1012 account_exec:dana.scully × massivedynamic.com"])
    assert "leaky: context account_exec:dana.scully × acme.com" not in found  # hers, and named


# ------------------------------------------------------------------ the real entry points
def test_the_cli_entry_point_one_visible_and_one_hidden_customer(world):
    """The installed `custctx` in process, every operation, for one of Dana's customers and one she may
    not see."""
    cli = CliDriver(InProcessCli(world[0]))
    assert problems_of(entry_point_probes(cli, ctx(world, "cli"), [DANA], ["acme.com", "massivedynamic.com"])) == {}


@pytest.mark.slow
def test_a_real_custctx_process_answers_a_hidden_customer_like_a_missing_one(world):
    settings = world[0]
    proc = cli_subprocess(settings, "context", "massivedynamic.com", "--format", "json", "--as", DANA.label)
    gone = cli_subprocess(settings, "context", MISSING_CUSTOMER, "--format", "json", "--as", DANA.label)
    assert same_as_missing(Reply(proc.code == 0, f"exit {proc.code}", proc.stdout + "\n" + proc.stderr),
                           "massivedynamic.com", Reply(False, f"exit {gone.code}", gone.stdout + "\n" + gone.stderr),
                           MISSING_CUSTOMER) == []


@pytest.mark.slow
def test_the_cli_entry_point_zero_problems(world):
    """The installed `custctx` in process: every operation × every story customer as an account executive
    who sees four of them and one who sees none."""
    nobody = next(e for e in ap.EXPECT if e.label == "account_exec:nobody")
    cli = CliDriver(InProcessCli(world[0]))
    assert problems_of(entry_point_probes(cli, ctx(world, "cli"), [DANA, nobody])) == {}


@pytest.mark.slow
def test_the_http_and_mcp_servers_zero_problems(world, tmp_path):
    """`custctx serve api` and `custctx serve mcp --transport http`, real processes on loopback, an API key
    per principal: every operation × every story customer for three principals."""
    settings, *_, keys, home = world
    for kind, make in (("http", HttpDriver), ("mcp", McpDriver)):
        with served(kind, settings, home / "keys.json", tmp_path / kind) as base, closing(make(base, keys)) as d:
            assert problems_of(entry_point_probes(d, ctx(world, kind), [DANA, SAM, ADMIN])) == {}, kind


@pytest.mark.slow
def test_the_langgraph_server_zero_problems(world, tmp_path):
    """`langgraph dev` on langgraph.json (our auth): the assistant on new threads and on the admin's threads
    (another owner's: 404, as a thread that does not exist), the triage and review graphs."""
    pytest.importorskip("langgraph_api")
    settings, *_, keys, home = world
    with served("langgraph", settings, home / "keys.json", tmp_path / "lg") as base, \
            closing(LangGraphDriver(base, keys)) as d:
        assert problems_of(entry_point_probes(d, ctx(world, "langgraph"), [DANA, SAM, ADMIN])) == {}


def test_the_langgraph_config_is_where_the_eval_looks():
    from evals.access_servers import LANGGRAPH_CONFIG

    assert json.loads(Path(LANGGRAPH_CONFIG).read_text(encoding="utf-8"))["auth"]["path"].startswith(
        "agent.interfaces.langgraph_auth")


def test_custctx_eval_refuses_an_unknown_entry_point_in_one_line(tmp_path):
    cli = InProcessCli(Settings(home=tmp_path / "home"))
    r = cli("eval", "--suite", "access", "--entry-points", "grpc", "--out", str(tmp_path))
    assert r.code == 2
    assert r.stderr.strip().splitlines() == ["error: unknown entry point 'grpc'; entry points: cli, http, mcp, "
                                             "langgraph, all, none"]
