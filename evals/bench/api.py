"""``custctx bench --api``: the HTTP API under load beside a bare FastAPI app, in the same run.

Ours is the product's own server (``custctx serve api``, a process of its own, as deployed) on
the benchmark's warm state. The floor is a FastAPI app with nothing in it but one route that
returns, from a dict, the very JSON ours answered for each customer (``evals.bench.api_floor``),
run by uvicorn with the same settings. A bounded load generator (``CONCURRENCY`` requests in
flight, one keep-alive connection each, httpx on asyncio) sends each server the same sequence
of warm context requests over loopback, in alternating rounds, and records latency and errors.
Afterwards every audit record the measured requests owe (a row check and one per slice) is
counted in the audit log.
"""

from __future__ import annotations

import asyncio
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
ROUNDS = 2  # alternating ours / floor rounds
API_SLICES = ("crm.account", "crm.contacts", "billing.status", "product.usage")
API_USER = "bench.api"
API_KEY = "bench-api-key"  # a development key file: the key itself, hashed on load
START_TIMEOUT_S = 120.0


@dataclass
class LoadResult:
    """One server's figures over every round."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0
    first_error: str | None = None

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(command: Sequence[str], env: dict[str, str], port: int, log: Path) -> Iterator[str]:
    """A server process started with ``command``, until its ``/healthz`` (or ``/``) answers."""
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
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _drive(base: str, paths: Sequence[str], concurrency: int, into: LoadResult) -> None:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    queue = iter(paths)
    async with httpx.AsyncClient(base_url=base, limits=limits, headers=headers, timeout=60) as client:
        async def worker() -> None:
            for path in queue:  # one shared iterator: at most `concurrency` requests in flight
                t0 = time.perf_counter()
                try:
                    resp = await client.get(path)
                    ok = resp.status_code == 200
                    why = None if ok else f"HTTP {resp.status_code}: {resp.text[:200]}"
                except httpx.HTTPError as exc:
                    ok, why = False, f"{type(exc).__name__}: {exc}"
                if ok:
                    into.latencies_ms.append((time.perf_counter() - t0) * 1000)
                else:
                    into.errors += 1
                    into.first_error = into.first_error or why

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        into.seconds += time.perf_counter() - t0


def load(base: str, paths: Sequence[str], concurrency: int, into: LoadResult) -> None:
    """Send every request of ``paths`` with ``concurrency`` in flight; add the figures to ``into``."""
    asyncio.run(_drive(base, paths, concurrency, into))


def _audit_count(settings: Settings) -> int:
    from tools.access.audit import audit_log, audit_log_table, audit_url

    c = audit_log_table.c
    with audit_log(audit_url(settings)).engine.connect() as conn:
        return conn.execute(select(func.count()).where(c.tenant == settings.tenant, c.user_name == API_USER)
                            ).scalar() or 0


def measure_api(settings: Settings, env: dict[str, str], out_dir: Path, customer_ids: Sequence[str],
                requests: int = API_REQUESTS, concurrency: int = CONCURRENCY,
                progress: Progress | None = None) -> Row:
    """The API's warm context endpoint at ``concurrency`` beside the bare-FastAPI floor.

    ``env``: the ``CUSTCTX_*`` variables of the benchmark's settings; ``customer_ids``: the
    customers requested, in order (cycled)."""
    import httpx

    keys = out_dir / "api-keys.json"
    keys.write_text(json.dumps({API_KEY: {"user": API_USER, "role": "support_agent"}}), encoding="utf-8")
    env = {**os.environ, **env, "CUSTCTX_API_KEYS_FILE": str(keys)}
    query = f"?slices={','.join(API_SLICES)}"
    distinct = list(dict.fromkeys(customer_ids))
    paths = [f"/v1/customers/{cid}/context{query}" for cid in customer_ids]
    paths = (paths * (requests // max(1, len(paths)) + 1))[:requests]
    ours, floor = LoadResult(), LoadResult()
    port = free_port()
    with server([*custctx_command(), "serve", "api", "--port", str(port)], env, port, out_dir / "api-ours.log") as base:
        answers = {}
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as client:
            for cid in distinct:  # warm: each answer once (the floor serves exactly these)
                resp = client.get(f"/v1/customers/{cid}/context{query}")
                resp.raise_for_status()
                answers[cid] = resp.json()
        floor_json = out_dir / "api-floor.json"
        floor_json.write_text(json.dumps(answers), encoding="utf-8")
        before = _audit_count(settings)
        floor_port = free_port()
        with server([sys.executable, "-m", "evals.bench.api_floor", str(floor_port), str(floor_json)], env,
                    floor_port, out_dir / "api-floor.log") as floor_base:
            load(floor_base, paths[:concurrency], concurrency, LoadResult())  # warm-up of both
            load(base, paths[:concurrency], concurrency, LoadResult())
            warmup = min(concurrency, len(paths))
            chunk = -(-len(paths) // ROUNDS)
            for i in range(ROUNDS):
                part = paths[i * chunk:(i + 1) * chunk]
                order = [(floor_base, floor), (base, ours)]
                for where, into in order[::-1] if i % 2 else order:
                    load(where, part, concurrency, into)
                if progress:
                    progress("API load", i + 1, ROUNDS)
        recorded = _audit_count(settings) - before
    expected = (ours.ok + warmup) * (1 + len(API_SLICES))  # a row check and one record per slice
    return _row(ours, floor, recorded, expected, concurrency, len(distinct))


def _row(ours: LoadResult, floor: LoadResult, recorded: int, expected: int, concurrency: int,
         customers: int) -> Row:
    def text(r: LoadResult) -> str:
        return (f"{r.throughput:,.0f} req/s, p50 {percentile(r.latencies_ms, 50):.1f} ms, "
                f"p99 {percentile(r.latencies_ms, 99):.1f} ms, {r.errors} errors")

    share = ours.throughput / floor.throughput if floor.throughput else 0.0
    p99 = percentile(ours.latencies_ms, 99)
    met = share >= 0.5 and p99 <= 100 and ours.errors == 0 and recorded == expected
    return Row(f"API warm context, concurrency {concurrency} (HTTP over loopback)",
               f"{text(ours)}; audit records {recorded:,} of {expected:,}",
               f"bare FastAPI app serving the same JSON from a dict: {text(floor)}", round(share, 3),
               "≥ 50% of the floor's throughput, p99 ≤ 100 ms, 0 errors, every audit record present", met,
               {"requests": ours.ok + ours.errors, "customers": customers, "concurrency": concurrency,
                "throughput": round(ours.throughput, 1), "p50_ms": percentile(ours.latencies_ms, 50), "p99_ms": p99,
                "errors": ours.errors, "first_error": ours.first_error,
                "floor_throughput": round(floor.throughput, 1),
                "floor_p50_ms": percentile(floor.latencies_ms, 50), "floor_p99_ms": percentile(floor.latencies_ms, 99),
                "floor_errors": floor.errors, "audit_records": recorded, "audit_expected": expected,
                "slices": list(API_SLICES)})
