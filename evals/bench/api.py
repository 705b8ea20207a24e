"""``custctx bench --api``: the HTTP API under load beside a bare FastAPI app, in the same run.

Ours is the product's own server (``custctx serve api``, a process of its own, as deployed) on
the benchmark's warm state. The floor is a FastAPI app with nothing in it but one route that
returns, from a dict, the very JSON ours answered for each customer (``evals.bench.api_floor``),
run by uvicorn with the same options (``SERVER_OPTIONS``, the same number of workers).

The load generator (``evals.bench.loadgen``) runs in a process of its own: ``CONCURRENCY``
requests in flight, each on a keep-alive connection opened before the clock starts, a request's
latency timed from its write to the last byte of its answer, at a cost of about 0.1 ms of CPU a
request (reported: ``generator_cpu_ms_per_request``). Both servers get an untimed warm-up, then
the same sequence of warm context requests in ``ROUNDS`` alternating rounds (the order turned
round every other round), so both see the same machine load. Each server's CPU time per request
(its processes, from ``/proc``) is reported beside the throughput: on a shared machine it moves
less than the throughput does. Afterwards every audit record the requests owe (a row check and
one per slice) is counted in the audit log.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from evals.bench.common import Progress, Row, percentile
from evals.bench.startup import custctx_command
from tools.settings import Settings

CONCURRENCY = 50
API_REQUESTS = 4_000  # per server, over all rounds
ROUNDS = 4  # alternating ours / floor rounds
WORKERS = 1  # server processes of each server (``--workers``)
#: Both servers run with these (docs/SERVING.md, Throughput): the audit log records every read.
SERVER_OPTIONS = ("--no-access-log",)
API_SLICES = ("crm.account", "crm.contacts", "billing.status", "product.usage")
API_USER = "bench.api"
API_KEY = "bench-api-key"  # a development key file: the key itself, hashed on load
START_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 60.0


@dataclass
class LoadResult:
    """One server's figures over every round."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0
    first_error: str | None = None
    generator_cpu_s: float = 0.0  # the load generator's own CPU time
    server_cpu_s: float = 0.0  # the server's (its processes'), when /proc tells

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def per_request_ms(self, seconds: float) -> float | None:
        return round(seconds * 1000 / self.ok, 3) if self.ok and seconds else None


@dataclass
class Served:
    """A running server: its base URL and process id."""

    base: str
    pid: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` and its children (a server's workers); 0
    where ``/proc`` does not tell."""
    try:
        pids = [pid, *(int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
        ticks = 0
        for p in pids:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


@contextmanager
def server(command: Sequence[str], env: dict[str, str], port: int, log: Path) -> Iterator[Served]:
    """A server process started with ``command``, until its ``/healthz`` answers."""
    import httpx

    base = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(list(command), env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:  # the benchmark polls; tests never time anything
                if proc.poll() is not None:
                    raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}: see {log}")
                try:
                    if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{' '.join(command)} did not start within {START_TIMEOUT_S:.0f} s: see {log}")
                time.sleep(0.1)
            yield Served(base, proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def load(base: str, paths: Sequence[str], concurrency: int, into: LoadResult,
         headers: dict[str, str] | None = None, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
    """Send every request of ``paths`` with ``concurrency`` in flight from the load generator's own
    process (``evals.bench.loadgen``); add the figures to ``into``."""
    spec = json.dumps({"paths": list(paths), "headers": {"Authorization": f"Bearer {API_KEY}"}
                       if headers is None else headers})
    proc = subprocess.run([sys.executable, "-m", "evals.bench.loadgen", base, str(concurrency), str(timeout_s)],
                          input=spec, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"the load generator exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    got = json.loads(proc.stdout)
    into.latencies_ms.extend(got["latencies_ms"])
    into.errors += got["errors"]
    into.seconds += got["seconds"]
    into.generator_cpu_s += got["cpu_seconds"]
    into.first_error = into.first_error or got["first_error"]


def load_server(served: Served, paths: Sequence[str], concurrency: int, into: LoadResult) -> None:
    """:func:`load`, adding the server's CPU time over the load to ``into``."""
    before = process_cpu_s(served.pid)
    load(served.base, paths, concurrency, into)
    into.server_cpu_s += process_cpu_s(served.pid) - before


def _audit_count(settings: Settings) -> int:
    from tools.access.audit import audit_log, audit_log_table, audit_url

    c = audit_log_table.c
    with audit_log(audit_url(settings)).engine.connect() as conn:
        return conn.execute(select(func.count()).where(c.tenant == settings.tenant, c.user_name == API_USER)
                            ).scalar() or 0


def measure_api(settings: Settings, env: dict[str, str], out_dir: Path, customer_ids: Sequence[str],
                requests: int = API_REQUESTS, concurrency: int = CONCURRENCY,
                progress: Progress | None = None, workers: int = WORKERS, rounds: int = ROUNDS) -> Row:
    """The API's warm context endpoint at ``concurrency`` beside the bare-FastAPI floor.

    ``env``: the ``CUSTCTX_*`` variables of the benchmark's settings; ``customer_ids``: the
    customers requested, in order (cycled); ``workers``: server processes of each server."""
    import httpx

    keys = out_dir / "api-keys.json"
    keys.write_text(json.dumps({API_KEY: {"user": API_USER, "role": "support_agent"}}), encoding="utf-8")
    env = {**os.environ, **env, "CUSTCTX_API_KEYS_FILE": str(keys)}
    options = [*SERVER_OPTIONS, "--workers", str(workers)]
    query = f"?slices={','.join(API_SLICES)}"
    distinct = list(dict.fromkeys(customer_ids))
    paths = [f"/v1/customers/{cid}/context{query}" for cid in customer_ids]
    paths = (paths * (requests // max(1, len(paths)) + 1))[:requests]
    ours, floor, warm = LoadResult(), LoadResult(), LoadResult()
    port = free_port()
    with server([*custctx_command(), "serve", "api", "--port", str(port), *options], env, port,
                out_dir / "api-ours.log") as mine:
        answers = {}
        with httpx.Client(base_url=mine.base, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as client:
            for cid in distinct:  # each answer once (the floor serves exactly these)
                resp = client.get(f"/v1/customers/{cid}/context{query}")
                resp.raise_for_status()
                answers[cid] = resp.json()
        floor_json = out_dir / "api-floor.json"
        floor_json.write_text(json.dumps(answers), encoding="utf-8")
        before = _audit_count(settings)
        floor_port = free_port()
        with server([sys.executable, "-m", "evals.bench.api_floor", str(floor_port), str(floor_json), *options], env,
                    floor_port, out_dir / "api-floor.log") as bare:
            warmup = paths[:max(concurrency, min(len(paths), 4 * concurrency))]
            load(bare.base, warmup, concurrency, LoadResult())  # untimed: connections, caches, every worker
            load(mine.base, warmup, concurrency, warm)
            chunk = -(-len(paths) // rounds)
            for i in range(rounds):
                part = paths[i * chunk:(i + 1) * chunk]
                order = [(bare, floor), (mine, ours)]
                for where, into in order[::-1] if i % 2 else order:
                    load_server(where, part, concurrency, into)
                if progress:
                    progress("API load", i + 1, rounds)
        recorded = _audit_count(settings) - before
    expected = (ours.ok + warm.ok) * (1 + len(API_SLICES))  # a row check and one record per slice
    return _row(ours, floor, recorded, expected, concurrency, len(distinct), workers)


def _row(ours: LoadResult, floor: LoadResult, recorded: int, expected: int, concurrency: int,
         customers: int, workers: int) -> Row:
    def text(r: LoadResult) -> str:
        cpu = r.per_request_ms(r.server_cpu_s)
        return (f"{r.throughput:,.0f} req/s, p50 {percentile(r.latencies_ms, 50):.1f} ms, "
                f"p99 {percentile(r.latencies_ms, 99):.1f} ms, {r.errors} errors"
                + (f", server CPU {cpu:.2f} ms/request" if cpu else ""))

    share = ours.throughput / floor.throughput if floor.throughput else 0.0
    p99 = percentile(ours.latencies_ms, 99)
    met = share >= 0.5 and p99 <= 100 and ours.errors == 0 and recorded == expected
    setup = f"{workers} worker{'s' if workers > 1 else ''}, {' '.join(SERVER_OPTIONS)}"
    return Row(f"API warm context, concurrency {concurrency} (HTTP over loopback)",
               f"{text(ours)}; audit records {recorded:,} of {expected:,} ({setup})",
               f"bare FastAPI app serving the same JSON from a dict: {text(floor)}", round(share, 3),
               "≥ 50% of the floor's throughput, p99 ≤ 100 ms, 0 errors, every audit record present", met,
               {"requests": ours.ok + ours.errors, "customers": customers, "concurrency": concurrency,
                "workers": workers, "server_options": list(SERVER_OPTIONS),
                "throughput": round(ours.throughput, 1), "p50_ms": percentile(ours.latencies_ms, 50), "p99_ms": p99,
                "errors": ours.errors, "first_error": ours.first_error,
                "server_cpu_ms_per_request": ours.per_request_ms(ours.server_cpu_s),
                "floor_throughput": round(floor.throughput, 1),
                "floor_p50_ms": percentile(floor.latencies_ms, 50), "floor_p99_ms": percentile(floor.latencies_ms, 99),
                "floor_errors": floor.errors, "floor_server_cpu_ms_per_request": floor.per_request_ms(floor.server_cpu_s),
                "generator_cpu_ms_per_request": round((ours.generator_cpu_s + floor.generator_cpu_s) * 1000
                                                      / max(1, ours.ok + floor.ok), 3),
                "audit_records": recorded, "audit_expected": expected, "slices": list(API_SLICES)})
