"""The entry points as a user reaches them, for the access eval: the installed ``custctx`` command
(in-process through its console-script entry point, and as a real subprocess), and the HTTP API,
the MCP server (streamable HTTP, bearer keys) and LangGraph's server (``langgraph dev`` with the
auth of ``langgraph.json``), each a real server process on loopback started with the eval's
settings and an API key per principal.

The eval layer sits below ``agent.interfaces`` and never imports it: every entry point here is
driven from the outside, as its users drive it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import httpx

from tools.settings import Settings

LANGGRAPH_CONFIG = Path(__file__).parents[1] / "langgraph.json"
START_TIMEOUT_S = 120.0


class ServerFailed(RuntimeError):
    """An entry point's server did not come up (the message says which, and the end of its log)."""


def settings_env(settings: Settings) -> dict[str, str]:
    """``CUSTCTX_*`` variables that rebuild ``settings`` in another process (every field that is set;
    nested values as JSON, which the settings loader parses)."""
    env = {}
    for name, value in json.loads(settings.model_dump_json()).items():
        if value is not None:
            env[f"CUSTCTX_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


def child_env(settings: Settings, keys_file: Path | None = None) -> dict[str, str]:
    """This process's environment without its own ``CUSTCTX_*``, plus the eval's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTCTX_")}
    env.update(settings_env(settings), LANGGRAPH_CLI_NO_ANALYTICS="1", LANGSMITH_TRACING="false",
               PYTHONUNBUFFERED="1")
    if keys_file is not None:
        env["CUSTCTX_API_KEYS_FILE"] = str(keys_file)
    return env


def write_keys(path: Path, principals: Sequence[tuple[str, str, str]], tenant: str) -> dict[str, str]:
    """A key file (the HTTP API's format) with one key per ``(label, role, user)``; label → key."""
    keys = {label: f"eval-key-{label.replace(':', '-')}" for label, _, _ in principals}
    path.write_text(json.dumps({keys[label]: {"user": user, "role": role, "tenant": tenant}
                                for label, role, user in principals}), encoding="utf-8")
    return keys


def custctx_command() -> list[str]:
    exe = shutil.which("custctx")
    return [exe] if exe else [sys.executable, "-m", "agent.interfaces.cli.app"]


# ---------------------------------------------------------------------------- the CLI
@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


class InProcessCli:
    """The installed ``custctx`` entry point called in this process (``sys.argv``, stdout and stderr
    swapped for the call, the eval's settings as its ``CUSTCTX_*`` environment)."""

    def __init__(self, settings: Settings):
        self.env = settings_env(settings)
        self.main: Callable[[], Any] = next(iter(entry_points(group="console_scripts", name="custctx"))).load()
        self._commands: dict[int, Any] = {}

    @contextmanager
    def _command_built_once(self) -> Iterator[None]:
        """Typer turns the app into its click command on every call (half of an in-process call's
        time); the command is the same each time, so the eval builds it once."""
        import typer.main

        build = typer.main.get_command

        def cached(app: Any) -> Any:
            if id(app) not in self._commands:
                self._commands[id(app)] = (app, build(app))  # the app kept: its id stays its own
            return self._commands[id(app)][1]

        typer.main.get_command = cached  # type: ignore[assignment]
        try:
            yield
        finally:
            typer.main.get_command = build

    def __call__(self, *args: str) -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        saved_argv, saved_env = sys.argv, {k: v for k, v in os.environ.items() if k.startswith("CUSTCTX_")}
        for k in saved_env:
            del os.environ[k]
        os.environ.update(self.env)
        sys.argv = ["custctx", *args]
        code = 0
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), self._command_built_once():
                self.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.argv = saved_argv
            for k in self.env:
                os.environ.pop(k, None)
            os.environ.update(saved_env)
        return CliResult(code, out.getvalue(), err.getvalue())


def cli_subprocess(settings: Settings, *args: str) -> CliResult:
    """One real ``custctx`` process (the smoke case that the in-process calls stand for)."""
    proc = subprocess.run([*custctx_command(), *args], capture_output=True, text=True, env=child_env(settings),
                          timeout=300, stdin=subprocess.DEVNULL)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


# ---------------------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(kind: str, port: int) -> list[str]:
    if kind == "http":
        return [*custctx_command(), "serve", "api", "--port", str(port)]
    if kind == "mcp":
        return [*custctx_command(), "serve", "mcp", "--transport", "http", "--port", str(port)]
    langgraph = shutil.which("langgraph")
    if langgraph is None:
        raise ServerFailed("LangGraph's server is not installed: pip install 'langgraph-cli[inmem]' (the test extra)")
    return [langgraph, "dev", "--no-browser", "--no-reload", "--port", str(port), "--config", str(LANGGRAPH_CONFIG)]


@contextmanager
def served(kind: str, settings: Settings, keys_file: Path, workdir: Path) -> Iterator[str]:
    """Start the ``kind`` server (http, mcp, langgraph) on a free loopback port, wait until it answers
    its health check, yield its base URL, and stop it (its whole process group) afterwards."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"{kind}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(server_command(kind, port), cwd=workdir, env=child_env(settings, keys_file),
                                stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, base + ("/ok" if kind == "langgraph" else "/healthz"), log, kind)
        yield base
    finally:
        _stop(proc)


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, kind: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:  # polls the readiness endpoint; results never wait on a sleep
        if proc.poll() is not None:
            break
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
    why = f"exit {proc.returncode}" if proc.returncode is not None else "no answer in time"
    raise ServerFailed(f"the {kind} server did not start ({why}): {' | '.join(tail)}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
