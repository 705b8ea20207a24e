"""The refresh worker (``custctx serve worker``): refreshes on each source's cadence, and at once
when a PostgreSQL source NOTIFYs.

**Schedule.** One APScheduler (3.x) interval job per connected source, every
``cadence(source)`` seconds (``CUSTCTX_WORKER__CADENCES``; defaults :data:`DEFAULT_CADENCES`,
from the TTLs of the DESIGN catalogue: a source is looked at as often as its
shortest-lived slice expires). A job is an incremental refresh of that source
(``refresh_incremental(sources=[source])``: watermarks, only the changed customers; the
first run reads the source in full), which ends, as every refresh does, with the book rows
of the customers it refreshed (``tools.booktable``). Jobs run one at a time in a worker (one executor thread).

**Several workers.** Every job run first takes the job's lease: one row per (tenant, job)
in the ``worker_job`` table of the state database, taken with one conditional UPDATE
(free, or expired, and due: not finished by anyone within the cadence). So with N workers
each source is refreshed once per cadence, by whichever worker gets there first; a worker
that dies mid-run frees the job when its lease (``CUSTCTX_WORKER__LEASE_S``) ends. The
refreshes themselves are idempotent (slices and book rows are replaced, watermarks only
advance), so a run repeated after a lost lease does no harm.

**LISTEN/NOTIFY.** For every connected source whose URL is PostgreSQL, the worker holds one
connection per database that ``LISTEN``s on ``CUSTCTX_WORKER__CHANNEL`` (``custctx_refresh``).
The ELT job or the warehouse sends, after a load (no trigger needed)::

    NOTIFY custctx_refresh, '{"source": "billing"}';                          -- that source's job now
    NOTIFY custctx_refresh, '{"event": "invoice.paid", "customer": "billing:cus_123"}';  -- one customer

A notification for a source runs its job at once (still under the lease, not waiting for
the cadence); one naming an event and a customer is an event refresh of that customer.

**Health.** The ``worker_job`` rows keep per job the last start, finish and success, the
next run, the run and failure counts and the last error; :func:`worker_status` reads them
for ``custctx sources`` and ``/healthz``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from tools.guard import summarize
from tools.identity import IdentityIndex
from tools.memory import ContextMemory
from tools.refresh.jobs import event_slices, refresh_event, refresh_incremental
from tools.settings import DEFAULT_TTLS, SOURCE_NAMES, Settings
from tools.slices import SLICE_MODELS
from tools.sources.base import utcnow
from tools.sources.registry import engine_for

log = logging.getLogger("custctx.worker")

#: Cadence of a source whose slices are all read live (TTL 0: support): the book's view of it.
LIVE_SOURCE_CADENCE_S = 300.0


def _default_cadence(source: str) -> float:
    ttls = [DEFAULT_TTLS[n] for n, m in SLICE_MODELS.items() if m.source == source and n in DEFAULT_TTLS]
    positive = [t for t in ttls if t > 0]
    return float(min(positive)) if positive else LIVE_SOURCE_CADENCE_S


DEFAULT_CADENCES: dict[str, float] = {s: _default_cadence(s) for s in SOURCE_NAMES}
"""Seconds between scheduled refreshes per source: its shortest slice TTL (support: 5 minutes)."""


class WorkerConfigError(ValueError):
    """The worker cannot start with these settings; the message names the setting."""


def cadences(settings: Settings) -> dict[str, float]:
    """Each connected source's cadence (settings over the defaults)."""
    given = settings.worker.cadences
    unknown = sorted(set(given) - set(SOURCE_NAMES))
    if unknown:
        raise WorkerConfigError(f"CUSTCTX_WORKER__CADENCES names unknown source(s) {', '.join(unknown)}; "
                                f"the sources are {', '.join(SOURCE_NAMES)}")
    bad = sorted(s for s, v in given.items() if not v > 0)
    if bad:
        raise WorkerConfigError(f"CUSTCTX_WORKER__CADENCES: a cadence is seconds > 0, not {given[bad[0]]} "
                                f"for {bad[0]}")
    return {s: float(given.get(s, DEFAULT_CADENCES[s])) for s in SOURCE_NAMES if settings.source(s).url}


# ------------------------------------------------------------------ job leases and health
worker_state = MetaData()
worker_job = Table(
    "worker_job", worker_state,
    Column("tenant", String(100), primary_key=True),
    Column("job", String(60), primary_key=True),  # "source:<name>"
    Column("holder", String(200)),
    Column("lease_until", DateTime),
    Column("cadence_s", Integer),
    Column("last_started", DateTime),
    Column("last_finished", DateTime),
    Column("last_ok", DateTime),
    Column("next_run", DateTime),
    Column("runs", Integer, nullable=False, default=0),
    Column("failures", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("last_customers", Integer),
)


def _now() -> datetime:
    return utcnow().replace(tzinfo=None)


_created: set[str] = set()


def _engine(settings: Settings):  # noqa: ANN202
    eng = engine_for(settings.state_db_url)
    if settings.state_db_url not in _created:  # once per process and URL: /healthz reads this
        worker_state.create_all(eng)
        _created.add(settings.state_db_url)
    return eng


def claim(settings: Settings, job: str, holder: str, cadence_s: float, lease_s: float, *,
          force: bool = False) -> bool:
    """Take the job's lease if it is free (or expired) and the job is due (``force``: due now)."""
    eng, now = _engine(settings), _now()
    t = worker_job.c
    try:
        with eng.begin() as conn:
            conn.execute(insert(worker_job).values(tenant=settings.tenant, job=job, runs=0, failures=0))
    except IntegrityError:
        pass  # another worker made the row first
    due = now - timedelta(seconds=cadence_s * 0.9)  # a little early: interval timers drift
    stmt = (update(worker_job)
            .where(t.tenant == settings.tenant, t.job == job,
                   (t.lease_until.is_(None)) | (t.lease_until < now) | (t.holder == holder))
            .values(holder=holder, lease_until=now + timedelta(seconds=lease_s), last_started=now,
                    cadence_s=int(cadence_s)))
    if not force:
        stmt = stmt.where((t.last_finished.is_(None)) | (t.last_finished <= due))
    with eng.begin() as conn:
        return conn.execute(stmt).rowcount == 1


def finish(settings: Settings, job: str, holder: str, cadence_s: float, error: str | None,
           customers: int) -> None:
    """Release the lease and record the run."""
    now, t = _now(), worker_job.c
    values: dict[str, Any] = {"holder": None, "lease_until": None, "last_finished": now,
                              "next_run": now + timedelta(seconds=cadence_s), "runs": t.runs + 1,
                              "last_error": error, "last_customers": customers}
    if error is None:
        values["last_ok"] = now
    else:
        values["failures"] = t.failures + 1
    with _engine(settings).begin() as conn:
        conn.execute(update(worker_job).where(t.tenant == settings.tenant, t.job == job, t.holder == holder)
                     .values(**values))


@dataclass
class JobStatus:
    job: str
    status: str  # ok | error | running | never
    last_started: datetime | None
    last_finished: datetime | None
    last_ok: datetime | None
    next_run: datetime | None
    runs: int
    failures: int
    last_error: str | None
    holder: str | None

    def as_dict(self, with_error: bool = True) -> dict[str, Any]:
        out = {k: (v.isoformat() + "Z" if isinstance(v, datetime) else v) for k, v in self.__dict__.items()}
        if not with_error:
            out.pop("last_error")
            out.pop("holder")
        return out


def worker_status(settings: Settings) -> list[JobStatus]:
    """Every job a worker ran for this tenant (empty: no worker ever ran)."""
    try:
        with _engine(settings).connect() as conn:
            rows = conn.execute(select(worker_job).where(worker_job.c.tenant == settings.tenant)
                                .order_by(worker_job.c.job)).all()
    except SQLAlchemyError:
        return []
    now = _now()
    out = []
    for r in rows:
        running = r.lease_until is not None and r.lease_until > now
        status = "running" if running else "never" if r.last_finished is None else \
            "error" if r.last_error else "ok"
        out.append(JobStatus(r.job, status, r.last_started, r.last_finished, r.last_ok, r.next_run, r.runs or 0,
                             r.failures or 0, r.last_error, r.holder))
    return out


# ------------------------------------------------------------------ the worker
class Worker:
    """One worker process's scheduler and listeners (start, then stop; or :meth:`run` until stopped)."""

    def __init__(self, settings: Settings, memory: ContextMemory, *, holder: str | None = None):
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        self.settings, self.memory = settings, memory
        self.cadences = cadences(settings)
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self.stop_event = threading.Event()
        self._lock = threading.Lock()  # one refresh at a time in this worker (scheduled or notified)
        self.scheduler = BackgroundScheduler(executors={"default": ThreadPoolExecutor(1)}, timezone="UTC",
                                             job_defaults={"coalesce": True, "max_instances": 1,
                                                           "misfire_grace_time": None})
        self._threads: list[threading.Thread] = []

    def run_source(self, source: str, *, force: bool = False) -> bool:
        """One scheduled (or notified) refresh of a source, if this worker gets its lease."""
        job, cadence = f"source:{source}", self.cadences[source]
        if not claim(self.settings, job, self.holder, cadence, self.settings.worker.lease_s, force=force):
            return False
        error, customers = None, 0
        try:
            with self._lock:
                report = refresh_incremental(self.settings, self.memory, sources=[source])  # + the book rows
                customers = len(report.refreshed)
            log.info("refreshed %s: %d customer(s), %d slice(s) written in %.1f s", source, customers,
                     report.slices_written, report.seconds)
            problems = [report.failed_sources.get(source)] if report.failed_sources.get(source) else []
            if report.failures:
                problems.append(f"{report.failures} slice read(s) failed")
            error = "; ".join(p for p in problems if p) or None
        except Exception as exc:  # noqa: BLE001 - a failing run is recorded and retried next cadence
            error = summarize(exc)
            log.warning("refresh of %s failed: %s", source, error)
        finally:
            finish(self.settings, job, self.holder, cadence, error, customers)
        return True

    def on_notify(self, payload: str) -> None:
        """A NOTIFY on the channel: ``{"source": S}`` / ``S`` runs S's job now; ``{"event": K,
        "customer": REF}`` refreshes one customer."""
        try:
            data = json.loads(payload) if payload.strip().startswith("{") else {"source": payload.strip()}
        except ValueError:
            log.warning("ignored a notification that is not JSON: %.80s", payload)
            return
        if not isinstance(data, dict):
            return
        if data.get("event") and data.get("customer"):
            try:
                event_slices(str(data["event"]))
                ref = IdentityIndex.for_settings(self.settings).resolve(str(data["customer"]))[0]
                with self._lock:
                    refresh_event(self.settings, self.memory, str(data["event"]), ref.customer_id)
            except (ValueError, LookupError, SQLAlchemyError) as exc:
                log.warning("ignored notification %.80s: %s", payload, summarize(exc))
        elif str(data.get("source")) in self.cadences:
            self.run_source(str(data["source"]), force=True)
        else:
            log.warning("ignored notification for %.40s (not a connected source)", data.get("source"))

    def _listen(self, url: str) -> None:
        import psycopg

        conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        while not self.stop_event.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {self.settings.worker.channel}")  # the channel is validated by settings
                    while not self.stop_event.is_set():
                        for n in conn.notifies(timeout=0.5):
                            self.on_notify(n.payload)
            except psycopg.Error as exc:
                log.warning("LISTEN on %s failed (%s); retrying", make_url(url).render_as_string(), summarize(exc))
                self.stop_event.wait(2.0)

    def listen_urls(self) -> list[str]:
        """The PostgreSQL databases of the connected sources (one listener each)."""
        urls: dict[str, str] = {}
        for source in self.cadences:
            url = self.settings.source(source).url or ""
            try:
                u = make_url(url)
            except Exception:  # noqa: BLE001 - a malformed URL is the reader's error to report
                continue
            if u.get_backend_name() == "postgresql":
                urls.setdefault(u.set(drivername="postgresql").render_as_string(hide_password=False), url)
        return list(urls.values())

    def start(self) -> None:
        now = utcnow()
        for source, seconds in self.cadences.items():
            self.scheduler.add_job(self.run_source, "interval", seconds=seconds, args=[source],
                                   id=f"source:{source}", next_run_time=now)
        self.scheduler.start()
        if self.settings.worker.listen:
            for url in self.listen_urls():
                t = threading.Thread(target=self._listen, args=(url,), name="custctx-listen", daemon=True)
                t.start()
                self._threads.append(t)

    def stop(self) -> None:
        self.stop_event.set()
        self.scheduler.shutdown(wait=True)
        for t in self._threads:
            t.join(timeout=5)

    def run(self, ready: Callable[[], None] | None = None) -> None:
        """Start, then wait until :attr:`stop_event` is set (a signal handler sets it), then stop."""
        self.start()
        if ready is not None:
            ready()
        self.stop_event.wait()
        self.stop()
