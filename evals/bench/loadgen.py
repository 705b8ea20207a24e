"""The bounded load generator of ``custctx bench --api``: HTTP/1.1 GETs over loopback with a fixed
number of requests in flight, each on a keep-alive connection of its own.

It runs in a process of its own (``python -m evals.bench.loadgen``, standard library only, uvloop
when installed) so that neither the benchmark's large heap (a garbage collection pause would stop
every timer at once) nor a general-purpose client's per-request work is in the figures: a request
costs the generator about 0.1 ms of CPU (an httpx client at concurrency 50 cost 5.5 ms), and its
latency is timed from the write of the request to the last byte of the answer. The connections are opened before the clock starts (a client
keeps its connections); a connection the server closes is opened again, inside the request's
time.

Protocol: ``python -m evals.bench.loadgen BASE_URL CONCURRENCY TIMEOUT_S`` reads a JSON object
``{"paths": [...], "headers": {...}}`` on stdin and writes ``{"latencies_ms": [...], "errors": n,
"seconds": s, "cpu_seconds": s, "first_error": text | null}`` on stdout. Only a 200 is an answer;
anything else (a status, a reset, a timeout) is an error, never a latency.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit


class _Connection:
    """One keep-alive connection: a request written, its answer read to the last byte."""

    def __init__(self, host: str, port: int, head: bytes) -> None:
        self.host, self.port, self.head = host, port, head
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def get(self, path: str) -> tuple[int, bytes]:
        """(status, body) of ``GET path``; raises OSError / asyncio errors / ValueError."""
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        self.writer.write(b"GET " + path.encode("ascii") + self.head)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        fields = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                fields[name.strip().lower()] = value.strip()
        if "content-length" in fields:
            body = await self.reader.readexactly(int(fields["content-length"]))
        elif fields.get("transfer-encoding", "").lower() == "chunked":
            body = await self._chunked()
        else:
            raise ValueError(f"HTTP {status} answer without a length")
        if fields.get("connection", "").lower() == "close":
            self.close()
        return status, body

    async def _chunked(self) -> bytes:
        assert self.reader is not None
        parts: list[bytes] = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")  # no trailers are sent to us
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)


async def drive(base: str, paths: Sequence[str], concurrency: int, headers: dict[str, str],
                timeout_s: float = 60.0) -> dict[str, Any]:
    """Every request of ``paths`` sent once, at most ``concurrency`` in flight (a shared queue)."""
    url = urlsplit(base)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head = f" HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode("latin-1")
    conns = [_Connection(host, port, head) for _ in range(max(1, min(concurrency, len(paths))))]
    await asyncio.gather(*(c.open() for c in conns))
    latencies: list[float] = []
    result: dict[str, Any] = {"latencies_ms": latencies, "errors": 0, "seconds": 0.0, "first_error": None}
    queue: Iterator[str] = iter(paths)

    async def worker(conn: _Connection) -> None:
        for path in queue:  # one shared iterator: at most `concurrency` requests in flight
            t0 = time.perf_counter()
            why = None
            try:
                async with asyncio.timeout(timeout_s):
                    status, body = await conn.get(path)
                if status != 200:
                    why = f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}"
            except (OSError, EOFError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    TimeoutError) as exc:
                conn.close()  # the next request opens a fresh connection
                why = f"{type(exc).__name__}: {exc}"
            if why is None:
                latencies.append((time.perf_counter() - t0) * 1000)
            else:
                result["errors"] += 1
                result["first_error"] = result["first_error"] or why
        conn.close()

    t0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(c) for c in conns))
    result["seconds"] = time.perf_counter() - t0
    result["cpu_seconds"] = time.process_time() - cpu0  # the generator's own cost, for the report
    return result


def run(base: str, paths: Sequence[str], concurrency: int, headers: dict[str, str],
        timeout_s: float = 60.0) -> dict[str, Any]:
    """:func:`drive` on a fresh event loop (uvloop's when installed)."""
    factory = None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(drive(base, paths, concurrency, headers, timeout_s))


def main(argv: Sequence[str]) -> None:
    base, concurrency, timeout_s = argv[1], int(argv[2]), float(argv[3])
    spec = json.load(sys.stdin)
    json.dump(run(base, spec["paths"], concurrency, spec.get("headers", {}), timeout_s), sys.stdout)


if __name__ == "__main__":
    import gc

    gc.disable()  # a short-lived process: no collection pause inside a timed request
    main(sys.argv)
