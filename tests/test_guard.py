"""The tool guard, deterministically: a fake clock, no real sleeps."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError, ProgrammingError

from tools.guard import SourceGuard, SourceTimeout, TransientSourceError, guarded_sleep
from tools.settings import GuardSettings
from tools.sources.base import SliceNotFound
from tools.sources.faults import Fault, FaultSpecError, parse_faults
from tools.sources.registry import engine_for


class FakeClock:
    """Time moves only when someone sleeps (or when told to)."""

    def __init__(self, tick: float = 0.0):
        self.t, self.tick, self.sleeps = 0.0, tick, []
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            self.t += self.tick
            return self.t

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.t += seconds


def guard(clock=None, **kw) -> SourceGuard:
    return SourceGuard(GuardSettings(**kw), clock or FakeClock())


def failing(times: int, exc: BaseException, result="ok"):
    calls = {"n": 0}

    def fn():
        calls["n"] += 1
        if calls["n"] <= times:
            raise exc
        return result

    return fn, calls


DOWN = OperationalError("select 1", {}, Exception("connection refused"))


def test_transient_errors_are_retried_with_exponential_backoff():
    clock = FakeClock()
    fn, calls = failing(2, DOWN)
    result, outcome, _ = guard(clock, backoff_initial_s=0.2).call("billing", "billing.status", fn)
    assert (result, outcome.status, outcome.attempts, calls["n"]) == ("ok", "ok", 3, 3)
    first, second = clock.sleeps
    assert 0.2 <= first <= 0.4 and 0.4 <= second <= 0.6  # 0.2·2^k plus up to 0.2 of jitter


def test_exhausted_retries_become_unavailable_with_the_last_error():
    fn, calls = failing(99, DOWN)
    _, outcome, _ = guard(attempts=3).call("billing", "billing.status", fn)
    assert (outcome.status, outcome.attempts, calls["n"]) == ("unavailable", 3, 3)
    assert "connection refused" in outcome.error


@pytest.mark.parametrize("exc, status", [
    (SliceNotFound("no billing record"), "not_found"),
    (ProgrammingError("select nope", {}, Exception("no such column: nope")), "unavailable"),
    (ValueError("bad input"), "unavailable"),
])
def test_permanent_errors_are_not_retried(exc, status):
    clock = FakeClock()
    fn, calls = failing(99, exc)
    _, outcome, _ = guard(clock).call("billing", "billing.status", fn, not_found=(SliceNotFound,))
    assert (outcome.status, calls["n"], clock.sleeps) == (status, 1, [])


def test_breaker_opens_after_consecutive_failures_and_probes_later():
    clock = FakeClock()
    g = guard(clock, attempts=1, breaker_failures=3, breaker_reset_s=30)
    fn, calls = failing(3, DOWN)
    for _ in range(3):
        assert g.call("crm", "crm.account", fn)[1].status == "unavailable"
    assert g.breaker("crm").state == "open"
    _, outcome, _ = g.call("crm", "crm.account", fn)
    assert outcome.status == "circuit_open" and calls["n"] == 3  # the dead source was not touched
    assert "next probe in 30 s" in outcome.error
    clock.sleep(30)
    result, outcome, _ = g.call("crm", "crm.account", fn)  # the probe succeeds
    assert (result, outcome.status, g.breaker("crm").state, calls["n"]) == ("ok", "ok", "closed", 4)


def test_failed_probe_reopens_the_breaker():
    clock = FakeClock()
    g = guard(clock, attempts=1, breaker_failures=2, breaker_reset_s=10)
    fn, calls = failing(99, DOWN)
    g.call("crm", "x", fn), g.call("crm", "x", fn)
    clock.sleep(10)
    assert g.call("crm", "x", fn)[1].status == "unavailable" and calls["n"] == 3
    assert g.breaker("crm").state == "open"
    assert g.call("crm", "x", fn)[1].status == "circuit_open" and calls["n"] == 3


def test_half_open_breaker_lets_one_probe_through():
    b = guard(breaker_failures=1, breaker_reset_s=5).breaker("crm")
    b.record(False, now=0)
    assert [b.allow(5), b.allow(5), b.allow(6)] == [True, False, False]


def test_not_found_does_not_count_against_the_breaker():
    g = guard(attempts=1, breaker_failures=1)
    fn, _ = failing(99, SliceNotFound("none"))
    for _ in range(3):
        g.call("crm", "crm.account", fn, not_found=(SliceNotFound,))
    assert g.breaker("crm").state == "closed"


def test_slow_call_times_out_at_the_deadline_not_after_the_delay():
    clock = FakeClock()

    def slow():
        guarded_sleep(10)
        return "late"

    result, outcome, exc = guard(clock).call("product", "product.usage", slow, timeout_s=2)
    assert result is None and outcome.status == "timeout" and isinstance(exc, SourceTimeout)
    assert clock.sleeps == [2]  # waited out the budget only
    assert outcome.error == "no answer within 2 s"


def test_timeouts_are_not_retried():
    clock = FakeClock()
    calls = {"n": 0}

    def slow():
        calls["n"] += 1
        guarded_sleep(5)

    guard(clock, attempts=3).call("product", "product.usage", slow, timeout_s=1)
    assert calls["n"] == 1


def test_sqlite_query_is_interrupted_at_the_deadline(tmp_path):
    # Each clock reading advances time by 1 s: the progress handler soon sees the
    # deadline passed and SQLite aborts the (otherwise very long) query.
    eng = engine_for(f"sqlite:///{tmp_path / 'slow.sqlite'}")

    def long_query():
        with eng.connect() as conn:
            return conn.execute(text(
                "with recursive n(i) as (select 1 union all select i + 1 from n where i < 100000000) "
                "select count(*) from n")).scalar()

    _, outcome, exc = guard(FakeClock(tick=1.0)).call("support", "support.summary", long_query, timeout_s=5)
    assert outcome.status == "timeout" and "interrupted" in str(exc)


def test_per_source_concurrency_is_bounded():
    g = guard(per_source_concurrency=2)
    in_flight, peak, lock = [0], [0], threading.Lock()
    pair = threading.Barrier(2, timeout=10)  # both slots must be usable at once

    def read():
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        pair.wait()
        with lock:
            in_flight[0] -= 1
        return "ok"

    results: list = []
    threads = [threading.Thread(target=lambda: results.append(g.call("crm", "x", read)[1].status))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["ok"] * 4 and peak[0] == 2


def test_fault_specs_parse_and_bad_ones_say_why():
    assert parse_faults("billing=down, product=slow:3s,support=flaky:0.5,crm=corrupt,chat=slow:250ms") == {
        "billing": Fault("down"), "product": Fault("slow", seconds=3.0), "support": Fault("flaky", rate=0.5),
        "crm": Fault("corrupt"), "chat": Fault("slow", seconds=0.25)}
    assert parse_faults(None) == {} and parse_faults("") == {}
    for bad in ("billing", "warehouse=down", "billing=sideways", "support=flaky:2", "product=slow:fast"):
        with pytest.raises(FaultSpecError, match="bad fault"):
            parse_faults(bad)


def test_transient_source_error_is_retried():
    fn, calls = failing(1, TransientSourceError("injected"))
    assert guard().call("billing", "x", fn)[1].attempts == 2 and calls["n"] == 2


def test_unreachable_database_is_retried_then_unavailable():
    eng = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")

    def read():
        with eng.connect():
            return "never"

    clock = FakeClock()
    _, outcome, _ = guard(clock, attempts=2).call("crm", "crm.account", read)
    assert outcome.status == "unavailable" and outcome.attempts == 2 and len(clock.sleeps) == 1
