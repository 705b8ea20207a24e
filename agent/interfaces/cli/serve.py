"""``custctx serve mcp | api | worker``: the MCP server, the HTTP API and the refresh worker (docs/SERVING.md)."""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from typing import Annotated

import typer

from agent.interfaces.cli.common import err, fail

commands = typer.Typer(help="Serve customer context to agents (MCP) and applications (HTTP API).",
                       no_args_is_help=True)
"""The ``serve`` group: ``serve mcp`` and ``serve api``."""

HostOpt = Annotated[str, typer.Option(help="Interface to listen on (127.0.0.1: this machine only).")]


class Transport(StrEnum):
    stdio = "stdio"
    http = "http"


def _warn_if_exposed(host: str, what: str) -> None:
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        err.print(f"warning: {what} listens on {host}, reachable from other machines", markup=False)


@commands.command("mcp")
def serve_mcp(
    transport: Annotated[Transport, typer.Option(
        help="stdio: for a client that launches the server (Claude Desktop, IDEs), reading as CUSTCTX_MCP__ROLE / "
             "__USER; http: streamable HTTP at http://HOST:PORT/mcp, each request reading as the principal its "
             "bearer key maps to in CUSTCTX_API_KEYS_FILE (required).")] = Transport.stdio,
    host: HostOpt = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port for --transport http.")] = 8765,
) -> None:
    """MCP server: get_customer_context, get_customer_slices, triage_ticket, generate_account_review."""
    from agent.interfaces.mcp import serve
    from agent.interfaces.service import ConfigError

    if transport is Transport.http:
        _warn_if_exposed(host, "the MCP server")
    try:
        serve("stdio" if transport is Transport.stdio else "http", host=host, port=port)
    except ConfigError as exc:
        raise fail(str(exc), 2) from None


@commands.command("api")
def serve_api(
    host: HostOpt = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Server processes sharing the port (one per core "
                                         "for throughput; docs/SERVING.md).")] = 1,
    access_log: Annotated[bool, typer.Option(help="Log a line per request (the audit log records every data "
                                             "read either way).")] = True,
) -> None:
    """HTTP API: /v1/customers/{ref}/context, /v1/triage, /v1/reviews, /v1/events, /v1/sources, /healthz."""
    from agent.interfaces.http import serve
    from agent.interfaces.service import ConfigError

    _warn_if_exposed(host, "the API")
    try:
        serve(host=host, port=port, workers=workers, access_log=access_log)
    except ConfigError as exc:
        raise fail(str(exc), 2) from None


@commands.command("worker")
def serve_worker() -> None:
    """Refresh worker: each source on its cadence (CUSTCTX_WORKER__CADENCES), and at once on a PostgreSQL
    NOTIFY; ends on SIGINT / SIGTERM. Several may run at once (a lease per job)."""
    import logging
    import signal

    from agent.bootstrap import ready
    from tools.refresh.worker import Worker, WorkerConfigError, cadences

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.ERROR)  # a run skipped while one is running: expected
    r = ready(memory=True)
    assert r.memory is not None
    try:
        worker = Worker(r.settings, r.memory)
    except WorkerConfigError as exc:
        raise fail(str(exc), 2) from None

    def stop(signum: int, frame: object) -> None:
        worker.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    plan = ", ".join(f"{s} every {int(c)} s" for s, c in cadences(r.settings).items())
    worker.run(ready=lambda: err.print(f"worker {worker.holder} started: {plan or 'no connected source'}; "
                                       f"listening on {len(worker.listen_urls())} PostgreSQL database(s)",
                                       markup=False))
    err.print("worker stopped", markup=False)
