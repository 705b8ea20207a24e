"""The book of accounts and the batch review runner: selection, resumable output,
failures, crashes, bounded concurrency and memory."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from agent.bootstrap import ready
from agent.brief import render_brief
from agent.reviews import FAILURES, INDEX_DB, INDEX_MD, review_paths, run_reviews, slugify
from tools.book import AccountEntry, BookError, count_accounts, list_accounts
from tools.context.assembly import assemble_context
from tools.context.scope import ReadScope
from tools.context.view import reference_view
from tools.embedded.generate import seed_salesforce
from tools.identity import normalize_name
from tools.settings import SourceConfig

from .conftest import settings_for

SKILL_SECTIONS = ("### Relationship Snapshot", "### Key Contacts", "### Commercial Summary",
                  "### Recent Activity", "### Open Items", "### Context from", "### Missing Context")


def names(entries) -> list[str]:
    return [e.name for e in entries]


class CountingReview:
    """The real review path (context → skill brief + reference JSON), counting its calls."""

    def __init__(self, r, fail_for: str | None = None, crash_for: str | None = None,
                 crash: type[BaseException] = KeyboardInterrupt):
        self.r, self.fail_for, self.crash_for, self.crash = r, fail_for, crash_for, crash
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, entry: AccountEntry) -> tuple[str, dict]:
        with self._lock:
            self.calls.append(entry.name)
        if entry.name == self.fail_for:
            raise RuntimeError(f"review graph failed for {entry.name}\nsecond line of detail")
        if entry.name == self.crash_for:
            raise self.crash()
        c = assemble_context(ReadScope.build(self.r.settings, self.r.clock), self.r.index.get(entry.customer_id))
        return render_brief(c), reference_view(c)


@pytest.fixture
def dana(sqlite_ready) -> list[AccountEntry]:
    """A small real book: Dana Scully's active accounts."""
    return list(list_accounts(sqlite_ready.settings, owner="dana.scully"))


def finished(out: Path) -> set[str]:
    return {p.stem for p in out.glob("*--*.json") if p.with_suffix(".md").exists()}


# ------------------------------------------------------------------ the book
def test_all_lists_every_customer_in_name_order_and_leaves_churned_out(sqlite_ready):
    s = sqlite_ready.settings
    everyone = list(list_accounts(s, include_churned=True))
    active = list(list_accounts(s))
    with sqlite_ready.index.engine.connect() as conn:
        indexed = conn.exec_driver_sql("select count(*) from identity_customer").scalar()
    assert len(everyone) == indexed == 53  # 13 story + 40 background customers
    assert [normalize_name(n) for n in names(everyone)] == sorted(normalize_name(n) for n in names(everyone))
    churned = {e.name for e in everyone if e.status == "churned"}
    assert "Soylent" in churned and "Soylent" not in names(active)
    assert len(active) == len(everyone) - len(churned)
    by_name = {e.name: e for e in everyone}
    assert by_name["Hooli"].status == "active" and by_name["Hooli"].owner is None  # billing only
    assert by_name["Hooli"].segment == "mid_market"  # tier from billing MRR 2 500
    assert by_name["Cyberdyne Systems"].status == "prospect" and "Cyberdyne Systems" in names(active)
    assert by_name["Société Tyrell"].segment == "self_serve"


def test_book_agrees_with_the_per_customer_context(sqlite_ready):
    """Owner, tier and churn status from the bulk queries equal what the readers derive."""
    for e in list_accounts(sqlite_ready.settings, include_churned=True):
        c = assemble_context(ReadScope.build(sqlite_ready.settings, sqlite_ready.clock), sqlite_ready.index.get(e.customer_id), ["crm.account", "billing.status"])
        account, billing = c.get("crm.account"), c.get("billing.status")
        assert e.segment == c.traits.tier, e
        assert e.owner == (account.owner if account else None), e
        churned = account.status == "churned" if account else bool(billing and billing.status == "canceled")
        assert (e.status == "churned") == churned, e


def test_owner_filter(sqlite_ready):
    s = sqlite_ready.settings
    dana = list(list_accounts(s, owner="dana.scully"))
    assert {"Acme Corp", "Umbrella Health"} <= set(names(dana))
    assert "Massive Dynamic" not in names(dana) and "Soylent" not in names(dana)  # walter's; churned
    assert all(e.owner == "dana.scully" and e.status != "churned" for e in dana)
    assert list(list_accounts(s, owner="Dana.Scully")) == dana
    assert names(list_accounts(s, owner="dana.scully@example.test")) == names(dana)  # an email's local part
    assert "Soylent" in names(list_accounts(s, owner="dana.scully", include_churned=True))
    assert list(list_accounts(s, owner="nobody.here")) == []
    assert count_accounts(s, owner="dana.scully") == len(dana)


def test_segment_filter_matches_crm_segment_or_derived_tier(sqlite_ready):
    s = sqlite_ready.settings
    enterprise = names(list_accounts(s, segment="enterprise"))
    assert {"Acme Corp", "Umbrella Health", "Wayne Enterprises", "Massive Dynamic"} <= set(enterprise)
    assert not {"Globex", "Initech", "Hooli", "Cyberdyne Systems"} & set(enterprise)
    assert names(list_accounts(s, segment="ENTERPRISE")) == enterprise
    mid = names(list_accounts(s, segment="Mid Market"))
    assert {"Globex", "Stark Industries", "Hooli"} <= set(mid)  # Hooli: no CRM, tier from billing
    assert names(list_accounts(s, segment="mid-market")) == mid
    assert names(list_accounts(s, segment="enterprise", owner="dana.scully")) == \
        [n for n in enterprise if n in names(list_accounts(s, owner="dana.scully"))]
    assert list(list_accounts(s, segment="strategic")) == []


def test_without_a_crm_filters_are_refused_and_all_still_lists(sqlite_warehouse, tmp_path):
    settings = settings_for(sqlite_warehouse, tmp_path)
    settings.sources["crm"] = SourceConfig(url=sqlite_warehouse, enabled=False)
    ready(settings)
    with pytest.raises(BookError, match=r"^--owner needs a connected CRM source"):
        list_accounts(settings, owner="dana.scully")
    with pytest.raises(BookError, match=r"^--segment needs a connected CRM source"):
        list_accounts(settings, segment="enterprise")
    everyone = names(list_accounts(settings))
    assert {"Acme Corp", "Hooli", "Globex"} <= set(everyone)
    assert "Soylent" not in everyone  # billing canceled and no CRM record: churned
    assert "Soylent" in names(list_accounts(settings, include_churned=True))


def test_missing_identity_index_is_a_one_line_error(sqlite_warehouse, tmp_path):
    settings = settings_for(sqlite_warehouse, tmp_path)
    with pytest.raises(BookError, match="identity index"):
        next(list_accounts(settings))


def test_salesforce_segments_and_owners(sqlite_warehouse, tmp_path):
    sf_url = f"sqlite:///{tmp_path / 'salesforce.sqlite'}"
    seed_salesforce(sf_url)
    settings = settings_for(sqlite_warehouse, tmp_path)
    settings.sources["crm"] = SourceConfig(url=sf_url, mapping="salesforce")
    ready(settings)
    assert names(list_accounts(settings, owner="dana.scully")) == ["Acme Corp"]
    assert {"Acme Logistics", "Société Tyrell"} <= set(names(list_accounts(settings, segment="Self Serve")))
    assert "Acme Corp" in names(list_accounts(settings, segment="enterprise"))


# ------------------------------------------------------------------ file names
def test_slugs_are_filesystem_safe_and_stable():
    assert slugify("Société Tyrell") == "societe-tyrell"
    assert slugify("Ünïcödé / AG | Co: \"Ltd\"") == "unicode-ag-co-ltd"
    assert slugify("東京") == "customer"
    assert len(slugify("x" * 300)) <= 60
    e = AccountEntry("c_0123456789ab", "Société Tyrell", "self_serve", None, "active")
    md, js = review_paths(Path("/out"), e)
    assert (md.name, js.name) == ("societe-tyrell--c_0123456789ab.md", "societe-tyrell--c_0123456789ab.json")
    assert review_paths(Path("/out"), e) == (md, js)


# ------------------------------------------------------------------ the runner
def test_run_writes_skill_review_and_json_per_account(sqlite_ready, dana, tmp_path):
    tyrell = next(e for e in list_accounts(sqlite_ready.settings) if e.name == "Société Tyrell")
    book = [*dana, tyrell]
    review, seen = CountingReview(sqlite_ready), []
    report = run_reviews(iter(book), review, tmp_path, concurrency=3,
                         progress=lambda done, total: seen.append((done, total)), total=len(book))
    assert (report.selected, report.written, report.skipped, report.failed) == (len(book), len(book), 0, [])
    assert seen == [(i, len(book)) for i in range(1, len(book) + 1)]
    for e in book:
        md, js = review_paths(tmp_path, e)
        text = md.read_text(encoding="utf-8")
        assert all(h in text for h in SKILL_SECTIONS), md
        assert text.startswith(f"## Customer Context: {e.name}")
        data = json.loads(js.read_text(encoding="utf-8"))
        assert data["customer_id"] == e.customer_id and data["customer"]["name"] == e.name
    assert (tmp_path / f"societe-tyrell--{tyrell.customer_id}.md").exists()
    index = (tmp_path / INDEX_MD).read_text(encoding="utf-8")
    acme = next(e for e in dana if e.name == "Acme Corp")
    assert f"| [Acme Corp](acme-corp--{acme.customer_id}.md) | at risk | enterprise | dana.scully |" in index
    assert "[Société Tyrell](societe-tyrell--" in index
    assert not list(tmp_path.glob(".custctx-*"))  # no temporary files left behind


def test_second_run_skips_and_force_rewrites(sqlite_ready, dana, tmp_path):
    first = CountingReview(sqlite_ready)
    run_reviews(dana, first, tmp_path)
    assert sorted(first.calls) == sorted(names(dana))
    md = review_paths(tmp_path, dana[0])[0]
    md.write_text("edited by hand\n", encoding="utf-8")

    again = CountingReview(sqlite_ready)
    report = run_reviews(dana, again, tmp_path)
    assert again.calls == [] and (report.written, report.skipped) == (0, len(dana))
    assert md.read_text(encoding="utf-8") == "edited by hand\n"

    forced = CountingReview(sqlite_ready)
    report = run_reviews(dana, forced, tmp_path, force=True)
    assert sorted(forced.calls) == sorted(names(dana)) and report.written == len(dana)
    assert md.read_text(encoding="utf-8").startswith("## Customer Context:")


def test_one_failing_account_does_not_stop_the_batch(sqlite_ready, dana, tmp_path):
    review = CountingReview(sqlite_ready, fail_for="Umbrella Health")
    report = run_reviews(dana, review, tmp_path, concurrency=2)
    umbrella = next(e for e in dana if e.name == "Umbrella Health")
    assert report.failed == [(umbrella.customer_id, "RuntimeError: review graph failed for Umbrella Health")]
    assert report.written == len(dana) - 1
    assert finished(tmp_path) == {review_paths(tmp_path, e)[1].stem for e in dana if e is not umbrella}
    assert not review_paths(tmp_path, umbrella)[0].exists()
    logged = [json.loads(line) for line in (tmp_path / FAILURES).read_text(encoding="utf-8").splitlines()]
    assert [(x["customer_id"], x["name"]) for x in logged] == [(umbrella.customer_id, "Umbrella Health")]
    assert "## Failed in this run" in (tmp_path / INDEX_MD).read_text(encoding="utf-8")

    retry = CountingReview(sqlite_ready)
    report = run_reviews(dana, retry, tmp_path)
    assert retry.calls == ["Umbrella Health"] and report.failed == [] and report.skipped == len(dana) - 1


def test_unserializable_review_fails_that_account_only(tmp_path):
    book = [AccountEntry(f"c_{i:012x}", f"Account {i}", None, None, "active") for i in range(3)]

    def review(e: AccountEntry) -> tuple[str, dict]:
        return "# review\n", {"health": "healthy", "oops": object() if e.name == "Account 1" else None}

    report = run_reviews(book, review, tmp_path)
    assert [cid for cid, _ in report.failed] == [book[1].customer_id]
    assert "not JSON-able" in report.failed[0][1]
    assert not any(p.exists() for p in review_paths(tmp_path, book[1]))


@pytest.mark.parametrize("crash", [KeyboardInterrupt, SystemExit])
def test_crash_mid_run_is_redone_next_run(sqlite_ready, dana, tmp_path, crash):
    victim = dana[1].name  # early: accounts after it are still queued or not yet pulled
    with pytest.raises(crash):
        run_reviews(dana, CountingReview(sqlite_ready, crash_for=victim, crash=crash), tmp_path, concurrency=2)
    assert not any(p.exists() for p in review_paths(tmp_path, dana[1]))
    assert not list(tmp_path.glob(".custctx-*"))
    missing = {e.name for e in dana if review_paths(tmp_path, e)[1].stem not in finished(tmp_path)}
    assert victim in missing

    resumed = CountingReview(sqlite_ready)
    report = run_reviews(dana, resumed, tmp_path)
    assert set(resumed.calls) == missing and report.skipped == len(dana) - len(missing)
    assert len(finished(tmp_path)) == len(dana)
    index = (tmp_path / INDEX_MD).read_text(encoding="utf-8")
    assert all(f"[{e.name}](" in index for e in dana)  # including those written before the crash


def test_half_written_account_is_not_finished(sqlite_ready, dana, tmp_path):
    md_only, json_only = dana[0], dana[1]
    review_paths(tmp_path, md_only)[0].write_text("## Customer Context: half\n", encoding="utf-8")
    review_paths(tmp_path, json_only)[1].write_text("{}", encoding="utf-8")
    leftover = tmp_path / ".custctx-abandoned.tmp"
    leftover.write_text("partial", encoding="utf-8")
    old = time.time() - 7200
    os.utime(leftover, (old, old))

    review = CountingReview(sqlite_ready)
    report = run_reviews(dana, review, tmp_path)
    assert sorted(review.calls) == sorted(names(dana)) and report.skipped == 0
    assert "Relationship Snapshot" in review_paths(tmp_path, md_only)[0].read_text(encoding="utf-8")
    assert not leftover.exists()


def test_forced_rewrite_cut_short_leaves_the_account_unfinished(monkeypatch, tmp_path):
    import agent.reviews as reviews

    book = [AccountEntry(f"c_{i:012x}", f"Account {i}", None, None, "active") for i in range(2)]
    run_reviews(book, lambda e: ("# old\n", {"health": "healthy"}), tmp_path)
    real_write = reviews._atomic_write

    def disk_full_on_json(path: Path, text: str) -> None:
        if path == review_paths(tmp_path, book[0])[1]:
            raise OSError(28, "No space left on device")
        real_write(path, text)

    monkeypatch.setattr(reviews, "_atomic_write", disk_full_on_json)
    report = run_reviews(book, lambda e: ("# new\n", {"health": "at risk"}), tmp_path, force=True)
    assert report.failed == [(book[0].customer_id, "OSError: [Errno 28] No space left on device")]
    md, js = review_paths(tmp_path, book[0])
    assert md.read_text(encoding="utf-8") == "# new\n" and not js.exists()  # new markdown, no JSON: not done
    monkeypatch.setattr(reviews, "_atomic_write", real_write)
    calls: list[str] = []
    run_reviews(book, lambda e: (calls.append(e.name), ("# new\n", {"health": "at risk"}))[1], tmp_path)
    assert calls == ["Account 0"]

def test_index_is_rebuilt_from_the_review_files(sqlite_ready, dana, tmp_path):
    run_reviews(dana, CountingReview(sqlite_ready), tmp_path)
    (tmp_path / INDEX_DB).write_bytes(b"lost in a crash")  # not a database any more
    (tmp_path / INDEX_MD).unlink()
    gone = review_paths(tmp_path, dana[0])
    gone[0].unlink()  # half a review: not listed (and redone)
    report = run_reviews(dana[1:], CountingReview(sqlite_ready), tmp_path)
    assert report.skipped == len(dana) - 1
    index = (tmp_path / INDEX_MD).read_text(encoding="utf-8")
    assert "| [Umbrella Health](umbrella-health--" in index and "| at risk | enterprise | dana.scully |" in index
    listed = [line.split("](")[0].removeprefix("| [") for line in index.splitlines() if line.startswith("| [")]
    assert listed == sorted(names(dana[1:]), key=str.casefold)
    assert f"_{len(dana) - 1} accounts reviewed;" in index


def test_renamed_account_is_listed_once_with_its_newest_review(tmp_path):
    def review(e: AccountEntry) -> tuple[str, dict]:
        return f"# {e.name}\n", {"customer": {"name": e.name, "tier": "self_serve"}, "health": "healthy"}

    run_reviews([AccountEntry("c_000000000001", "Old Name", None, None, "active")], review, tmp_path)
    run_reviews([AccountEntry("c_000000000001", "New Name", None, None, "active")], review, tmp_path)
    index = (tmp_path / INDEX_MD).read_text(encoding="utf-8")
    assert "[New Name](new-name--c_000000000001.md)" in index and "Old Name" not in index
    assert "_1 account reviewed;" in index

def test_in_flight_window_and_concurrency_are_bounded(tmp_path):
    concurrency, n = 3, 120
    lock = threading.Lock()
    state = {"pulled": 0, "completed": 0, "running": 0, "max_running": 0, "max_ahead": 0}

    def book():
        for i in range(n):
            with lock:
                state["pulled"] += 1
                state["max_ahead"] = max(state["max_ahead"], state["pulled"] - state["completed"])
            yield AccountEntry(f"c_{i:012x}", f"Account {i:03d}", "self_serve", "dana.scully", "active")

    def review(e: AccountEntry) -> tuple[str, dict]:
        with lock:
            state["running"] += 1
            state["max_running"] = max(state["max_running"], state["running"])
        time.sleep(0.003)
        with lock:
            state["running"] -= 1
            state["completed"] += 1
        return f"# {e.name}\n", {"customer": {"name": e.name, "tier": "self_serve"}, "health": "healthy"}

    progress: list[tuple[int, int | None]] = []
    report = run_reviews(book(), review, tmp_path, concurrency=concurrency,
                         progress=lambda d, t: progress.append((d, t)))
    assert report.written == report.selected == n and state["pulled"] == n
    assert 1 < state["max_running"] <= concurrency
    assert state["max_ahead"] <= 2 * concurrency
    assert progress == [(i, None) for i in range(1, n + 1)]
    assert len(finished(tmp_path)) == n


def test_skipped_accounts_count_in_progress(tmp_path):
    book = [AccountEntry(f"c_{i:012x}", f"Account {i}", None, None, "active") for i in range(4)]

    def review(e: AccountEntry) -> tuple[str, dict]:
        return "# r\n", {"health": "healthy"}

    run_reviews(book[:2], review, tmp_path)
    seen: list[tuple[int, int | None]] = []
    report = run_reviews(book, review, tmp_path, progress=lambda d, t: seen.append((d, t)))
    assert (report.skipped, report.written) == (2, 2)
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]  # total from len() of a list

