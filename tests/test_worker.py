"""The refresh worker (tools/refresh/worker.py): `custctx serve worker` as a real process against
PostgreSQL sources — changes at the source reach memory and the book within the cadence, a NOTIFY
refreshes at once — and job leases that keep several workers from running one job twice."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tools.booktable import BookQuery, find_customers
from tools.embedded.generate import AS_OF, seed
from tools.identity import IdentityIndex
from tools.memory import ContextMemory, open_store
from tools.refresh.worker import (
    DEFAULT_CADENCES,
    WorkerConfigError,
    cadences,
    claim,
    finish,
    worker_status,
)
from tools.settings import SOURCE_NAMES, Settings, SourceConfig, WorkerSettings
from tools.sources.registry import dispose_engines

from .test_mcp import custctx_cmd, server_env

SHORT = 1.0  # seconds: billing's and support's cadence in the worker test
WAIT_S = 90.0  # the bound on every wait (a loaded CI machine; the cadence itself is 1 s)


def wait_for(what: str, probe: Callable[[], Any], *procs: subprocess.Popen) -> Any:
    """Poll ``probe`` until it returns something truthy, at most WAIT_S (the workers must not have died)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if any(proc.poll() is not None for proc in procs):
            raise AssertionError(f"a worker exited: {[proc.returncode for proc in procs]}")
        got = probe()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"not within {WAIT_S:.0f} s: {what}")


def execute(url: str, *statements: str) -> None:
    eng = create_engine(url)
    try:
        with eng.begin() as conn:
            for s in statements:
                conn.execute(text(s))
    finally:
        eng.dispose()


def bump(tbl: str) -> str:
    """A sync timestamp newer than every row of the table (what an ELT load stamps a changed row with)."""
    return f"(SELECT max(_fivetran_synced) FROM {tbl}) + interval '1 minute'"


@pytest.mark.slow
def test_the_worker_process_refreshes_postgresql_sources_within_the_cadence(pg_server, tmp_path):
    url = pg_server.create_database()
    seed(url, customers=5)
    cadence = {s: 3600 for s in SOURCE_NAMES} | {"billing": SHORT, "support": SHORT}
    settings = Settings(home=tmp_path, embedded=False, as_of=AS_OF, state_url=f"sqlite:///{tmp_path}/state.sqlite",
                        sources={s: SourceConfig(url=url) for s in SOURCE_NAMES},
                        worker=WorkerSettings(cadences=cadence))
    env = {**server_env(tmp_path), "CUSTCTX_EMBEDDED": "false", "CUSTCTX_AS_OF": AS_OF.isoformat(),
           "CUSTCTX_STATE_URL": settings.state_db_url,
           "CUSTCTX_SOURCES": json.dumps({s: {"url": url} for s in SOURCE_NAMES}),
           "CUSTCTX_WORKER__CADENCES": json.dumps(cadence)}
    log = (tmp_path / "worker.log").open("w")  # a file, not a pipe: the worker's log never blocks it
    procs: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        procs.append(subprocess.Popen(custctx_cmd("serve", "worker"), env=env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=log, text=True))
        return procs[-1]

    proc = start()
    try:
        def job_runs() -> dict[str, int]:
            return {j.job: j.runs for j in worker_status(settings)}

        wait_for("every source's first run", lambda: all(job_runs().get(f"source:{s}", 0) >= 1
                                                         for s in SOURCE_NAMES), proc)
        first = {j.job: j for j in worker_status(settings)}
        assert all(first[f"source:{s}"].last_error is None for s in ("crm", "billing", "support")), first
        # A second worker: billing keeps its cadence, the hourly sources are not refreshed again.
        second = start()
        billing_runs = job_runs()["source:billing"]
        wait_for("billing runs on", lambda: job_runs()["source:billing"] >= billing_runs + 3, proc, second)
        assert all(job_runs()[f"source:{s}"] == 1 for s in SOURCE_NAMES if cadence[s] == 3600), job_runs()
        index = IdentityIndex.for_settings(settings)
        acme = index.resolve("acme.com")[0].customer_id
        with open_store(settings.state_db_url) as store:
            memory = ContextMemory.of(store, settings)

            def held(name: str) -> Any:
                got = memory.get(acme, name)
                return got.slice if got else None

            assert held("billing.status").status == "past_due"
            open_before = held("support.summary").open_tickets
            assert [e.name for e in find_customers(settings, BookQuery(risk="billing_issue", tier="enterprise"))
                    .entries] == ["Acme Corp"]

            # The billing system: Acme paid; the help desk: one of Acme's closed tickets is reopened.
            execute(url, f"UPDATE subscription SET status = 'active', _fivetran_synced = {bump('subscription')} "
                         "WHERE customer_id = 'cus_0000001'",
                    f"UPDATE customer SET delinquent = false, _fivetran_synced = {bump('customer')} "
                    "WHERE id = 'cus_0000001'",
                    f"UPDATE ticket SET status = 'open', _fivetran_synced = {bump('ticket')} WHERE id = 10001")
            wait_for("Acme's billing status in memory", lambda: held("billing.status").status == "current", *procs)
            wait_for("Acme's reopened ticket in memory",
                     lambda: held("support.summary").open_tickets == open_before + 1, *procs)
            wait_for("Acme's book row", lambda: not find_customers(
                settings, BookQuery(risk="billing_issue", tier="enterprise")).entries, *procs)

            # NOTIFY from the warehouse: the CRM's cadence is an hour, the notification is at once.
            execute(url, f"UPDATE company SET property_plan_name = 'Enterprise Max', "
                         f"_fivetran_synced = {bump('company')} WHERE id = 1001",
                    "NOTIFY custctx_refresh, '{\"source\": \"crm\"}'")
            wait_for("the notified CRM refresh", lambda: held("crm.account").plan == "Enterprise Max", *procs)

        wait_for("the notified run's record", lambda: job_runs()["source:crm"] >= 2, *procs)
        status = {j.job: j for j in worker_status(settings)}
        assert status["source:billing"].runs >= 2 and status["source:billing"].next_run is not None
        assert all(status[f"source:{s}"].failures == 0 for s in ("crm", "billing", "support"))
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        try:
            assert [p.wait(timeout=60) for p in procs] == [0] * len(procs)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            log.close()
        dispose_engines()
    text_log = (tmp_path / "worker.log").read_text()
    assert "started" in text_log and "refreshed billing" in text_log and "Traceback" not in text_log


def test_a_job_runs_once_per_cadence_however_many_workers(tmp_path):
    settings = Settings(home=tmp_path, embedded=False, state_url=f"sqlite:///{tmp_path}/state.sqlite")
    assert claim(settings, "source:billing", "worker-a", 60, 300)
    assert not claim(settings, "source:billing", "worker-b", 60, 300)  # leased by a
    finish(settings, "source:billing", "worker-a", 60, None, 3)
    assert not claim(settings, "source:billing", "worker-b", 60, 300)  # free, but done within the cadence
    assert claim(settings, "source:billing", "worker-b", 60, 300, force=True)  # a NOTIFY: due now
    finish(settings, "source:billing", "worker-b", 60, "billing: connection refused", 0)
    [job] = worker_status(settings)
    assert (job.status, job.runs, job.failures, job.last_error) == ("error", 2, 1, "billing: connection refused")
    assert claim(settings, "source:support", "worker-a", 1e-9, 1e-6)
    assert claim(settings, "source:support", "worker-b", 1e-9, 300)  # a's lease ran out (it died mid-run)


def test_cadences_default_to_the_catalogue_and_refuse_unknown_sources(tmp_path):
    assert DEFAULT_CADENCES["billing"] == 86400 and DEFAULT_CADENCES["product"] == 900
    assert DEFAULT_CADENCES["crm"] == 3600 and DEFAULT_CADENCES["support"] == 300  # support is read live
    settings = Settings(home=tmp_path, embedded=False, sources={"billing": SourceConfig(url="sqlite://")},
                        worker=WorkerSettings(cadences={"billing": 5}))
    assert cadences(settings) == {"billing": 5.0}
    with pytest.raises(WorkerConfigError, match="unknown source"):
        cadences(settings.model_copy(update={"worker": WorkerSettings(cadences={"biling": 5})}))


def test_worker_health_is_shown_by_custctx_sources(tmp_path):
    from typer.testing import CliRunner

    from agent.interfaces.cli.app import app

    settings = Settings(home=tmp_path, embedded=False, state_url=f"sqlite:///{tmp_path}/state.sqlite")
    env = {"CUSTCTX_HOME": str(tmp_path), "CUSTCTX_EMBEDDED": "false", "CUSTCTX_STATE_URL": settings.state_db_url}
    never = CliRunner().invoke(app, ["sources"], env=env)
    assert never.exit_code == 0 and "Refresh worker: never ran" in never.stdout
    assert claim(settings, "source:billing", "worker-a", 60, 300)
    finish(settings, "source:billing", "worker-a", 60, "billing: connection refused", 0)
    shown = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["sources"], env=env)
    assert shown.exit_code == 0, shown.stderr
    assert "source:billing" in shown.stdout and "error" in shown.stdout and "connection refused" in shown.stdout
