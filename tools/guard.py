"""The one guard around every source call: deadline, retries, circuit breaker, concurrency.

* **Deadline.** Each call has a budget (``timeout_s``, retries included). It is
  enforced inside the database — SQLite's progress handler, PostgreSQL's
  ``statement_timeout`` — and by injected slowness, so a slow query is interrupted
  rather than waited out. Past the deadline the call becomes a ``timeout`` gap.
* **Retries** with exponential backoff and jitter (tenacity, entered only after a first
  attempt failed: the happy path pays for one call, not a retry machine), on
  transient errors only: connection failures, operational errors, injected outages.
  Not-found, malformed mappings and bad input are never retried.
* **Misconfiguration** — SQL the database refuses because the mapping or the URL is
  wrong (no such column or table, a syntax error, no such database, bad credentials):
  one attempt, never retried, not held against the breaker (the database answered),
  logged once per source and message, and marked ``misconfigured`` in the outcome.
* **Circuit breaker** per source: after ``breaker_failures`` consecutive failed
  calls the source is not touched for ``breaker_reset_s``; then one probe call is
  let through, and its outcome closes or re-opens the breaker.
* **Bounded concurrency**: at most ``per_source_concurrency`` reads in flight per
  source (and the caller's pool bounds the total).

Time comes from an injectable :class:`Clock`, so tests run without real sleeps.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    OperationalError,
    ProgrammingError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from tools.settings import GuardSettings


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class RealClock:
    monotonic = staticmethod(time.monotonic)
    sleep = staticmethod(time.sleep)


class TransientSourceError(RuntimeError):
    """A failure worth retrying (an outage, a dropped connection)."""


class SourceTimeout(TimeoutError):
    """The call's deadline passed."""


class MalformedSource(RuntimeError):
    """The source answered, but every row it had for the customer was malformed."""


@dataclass(frozen=True)
class Deadline:
    clock: Clock
    at: float

    def remaining(self) -> float:
        return self.at - self.clock.monotonic()

    def passed(self) -> bool:
        return self.remaining() <= 0


DEADLINE: ContextVar[Deadline | None] = ContextVar("custctx_deadline", default=None)


def deadline_passed() -> bool:
    d = DEADLINE.get()
    return d is not None and d.passed()


def guarded_sleep(seconds: float) -> None:
    """Sleep on the call's clock, but never past its deadline (then time out)."""
    d = DEADLINE.get()
    if d is None:
        RealClock.sleep(seconds)
        return
    remaining = d.remaining()
    d.clock.sleep(max(0.0, min(seconds, remaining)))
    if seconds >= remaining:
        raise SourceTimeout(f"no answer within the deadline (needed {seconds:g} s)")


# SQLSTATE classes and codes of a configuration the database refuses (PostgreSQL and any
# driver that reports SQLSTATE): 42 syntax error or access rule violation (42703 undefined
# column, 42P01 undefined table, 42601 syntax error, 42883 undefined function, 42501 no
# privilege), 3D000 no such database, 3F000 no such schema, 28 bad credentials.
_CONFIG_SQLSTATES = ("42", "3D000", "3F000", "28")
# The same refusals as SQLite words them (sqlite3 gives no codes for them), and libpq at connect.
_CONFIG_MESSAGES = re.compile(
    r"no such (column|table|function|module)|syntax error|ambiguous column name|unable to open database file"
    r"|wrong number of arguments to function|misuse of (aggregate|window) function|has no column named"
    r"|no such collation sequence"
    # PostgreSQL's refusals at connect time, which carry no SQLSTATE
    r'|database "[^"]*" does not exist|role "[^"]*" does not exist|password authentication failed',
    re.IGNORECASE)


def misconfiguration(exc: BaseException) -> str | None:
    """The one-line reason when ``exc`` is the database refusing a mapping's SQL or the
    source's URL (a configuration error: retrying cannot help), else None."""
    if not isinstance(exc, DBAPIError) or exc.connection_invalidated:
        return None
    orig = exc.orig
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if isinstance(state, str) and state:
        return summarize(exc) if state.startswith(_CONFIG_SQLSTATES) else None
    if isinstance(exc, ProgrammingError) or _CONFIG_MESSAGES.search(str(orig)):
        return summarize(exc)
    return None


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, SourceTimeout | MalformedSource):
        return False
    if misconfiguration(exc) is not None:
        return False
    if isinstance(exc, TransientSourceError | OperationalError | DisconnectionError | PoolTimeout):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


# ------------------------------------------------------------------ breaker
BreakerState = Literal["closed", "open", "half_open"]


@dataclass
class CircuitBreaker:
    failures_to_open: int
    reset_s: float
    state: BreakerState = "closed"
    failures: int = 0
    opened_at: float = 0.0
    probing: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def allow(self, now: float) -> bool:
        with self._lock:
            if self.state == "closed":
                return True
            if self.state == "open" and now - self.opened_at >= self.reset_s:
                self.state, self.probing = "half_open", False
            if self.state == "half_open" and not self.probing:
                self.probing = True  # exactly one probe at a time
                return True
            return False

    def record(self, ok: bool, now: float) -> None:
        with self._lock:
            if ok:
                self.state, self.failures, self.probing = "closed", 0, False
                return
            self.failures += 1
            if self.state == "half_open" or self.failures >= self.failures_to_open:
                self.state, self.opened_at, self.probing = "open", now, False

    def retry_in(self, now: float) -> float:
        return max(0.0, self.reset_s - (now - self.opened_at))


# ------------------------------------------------------------------ outcome
@dataclass
class CallOutcome:
    """What one guarded call did, for the source report."""

    source: str
    slice: str
    status: Literal["ok", "memory", "not_found", "unavailable", "timeout", "circuit_open"]
    latency_ms: float
    attempts: int = 0
    error: str | None = None
    #: The failure is the source's configuration (its mapping or URL), not the source:
    #: ``status`` is ``unavailable``, ``error`` the database's one line; never retried.
    misconfigured: bool = False


def summarize(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


log = logging.getLogger(__name__)
MISCONFIGURED_TEMPLATE = ("{source} source is misconfigured: {error} (check its mapping and URL: "
                          "`custctx mappings check`); not retried")
_reported: set[tuple[str, str]] = set()
_reported_lock = threading.Lock()


def _report_once(source: str, error: str) -> None:
    """Log a configuration error the first time this process meets it (every read of a
    misconfigured source fails alike; one line says it)."""
    with _reported_lock:
        if (source, error) in _reported:
            return
        _reported.add((source, error))
    log.warning(MISCONFIGURED_TEMPLATE.format(source=source, error=error))


class SourceGuard:
    """Runs source calls under the deadline / retry / breaker / concurrency policy."""

    def __init__(self, settings: GuardSettings, clock: Clock | None = None):
        self.settings = settings
        self.clock: Clock = clock or RealClock()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._semaphores: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()

    def breaker(self, source: str) -> CircuitBreaker:
        with self._lock:
            if source not in self._breakers:
                self._breakers[source] = CircuitBreaker(self.settings.breaker_failures, self.settings.breaker_reset_s)
            return self._breakers[source]

    def _retry(self, fn: Callable[[], Any], first: Exception, deadline: Deadline, tries: list[int]) -> Any:
        """After a first attempt failed with ``first``: tenacity's retries (exponential backoff with
        jitter, transient errors only, within the deadline), ``first`` counted as attempt one and
        every attempt counted in ``tries[0]``. Returns the result; raises the last error."""
        pending: list[Exception] = [first]
        retrying = Retrying(
            stop=stop_after_attempt(self.settings.attempts),
            wait=wait_exponential_jitter(multiplier=self.settings.backoff_initial_s, max=self.settings.backoff_max_s,
                                         jitter=self.settings.backoff_initial_s),
            retry=retry_if_exception(lambda e: is_transient(e) and not deadline.passed()),
            sleep=lambda s: guarded_sleep(s),
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                if pending:  # attempt one already happened: its error decides whether to retry
                    raise pending.pop()
                tries[0] += 1
                result = fn()
        return result

    def _slot(self, source: str) -> threading.BoundedSemaphore:
        sem = self._semaphores.get(source)
        if sem is None:
            with self._lock:
                sem = self._semaphores.setdefault(
                    source, threading.BoundedSemaphore(self.settings.per_source_concurrency))
        return sem

    def call(self, source: str, slice_name: str, fn: Callable[[], Any], timeout_s: float | None = None,
                not_found: tuple[type[BaseException], ...] = ()) -> tuple[Any, CallOutcome, BaseException | None]:
        """Run ``fn`` guarded. Returns (result or None, outcome, the final exception if any)."""
        start = self.clock.monotonic()
        breaker = self.breaker(source)

        def outcome(status, attempts=0, error=None, misconfigured=False) -> CallOutcome:  # noqa: ANN001
            return CallOutcome(source, slice_name, status, round((self.clock.monotonic() - start) * 1000, 2),
                               attempts, error, misconfigured)

        if not breaker.allow(start):
            msg = (f"circuit open after {breaker.failures} failed calls; "
                   f"next probe in {breaker.retry_in(start):.0f} s")
            return None, outcome("circuit_open", 0, msg), None
        deadline = Deadline(self.clock, start + (timeout_s or self.settings.timeout_s))
        token = DEADLINE.set(deadline)
        attempts = 0
        try:
            with self._slot(source):
                tries = [1]
                try:  # the happy path: one call, no retry machinery
                    result = fn()
                except Exception as first:  # noqa: BLE001 - judged by the retry rule below
                    try:
                        result = self._retry(fn, first, deadline, tries)
                    finally:
                        attempts = tries[0]
                attempts = tries[0]
            breaker.record(True, self.clock.monotonic())
            return result, outcome("ok", attempts), None
        except not_found as exc:
            breaker.record(True, self.clock.monotonic())
            return None, outcome("not_found", attempts, str(exc)), exc
        except (SourceTimeout, SQLAlchemyError, TransientSourceError, MalformedSource) as exc:
            if (problem := misconfiguration(exc)) is not None:
                # The database answered: the breaker is for sources that do not.
                breaker.record(True, self.clock.monotonic())
                _report_once(source, problem)
                return None, outcome("unavailable", attempts, f"misconfigured: {problem}", misconfigured=True), exc
            breaker.record(False, self.clock.monotonic())
            if isinstance(exc, SourceTimeout) or deadline.passed():
                budget = timeout_s or self.settings.timeout_s
                return None, outcome("timeout", attempts, f"no answer within {budget:g} s"), exc
            return None, outcome("unavailable", attempts, summarize(exc)), exc
        except Exception as exc:  # noqa: BLE001 - a reader bug or garbage the mapping did not foresee
            # Reported, not swallowed: the gap and the source report carry the error.
            breaker.record(False, self.clock.monotonic())
            return None, outcome("unavailable", attempts, f"{type(exc).__name__}: {summarize(exc)}"), exc
        finally:
            DEADLINE.reset(token)
