"""Start-up: ``custctx`` commands in fresh processes beside the floor of any Typer command line."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from evals.bench.common import Progress, Row, percentile
from evals.bench.warehouse import bench_env

STARTUP_RUNS = 7  # fresh processes per start-up command (3 on a test-sized book)
STARTUP_FLOOR = (sys.executable, "-c", "import typer, rich")
#: What Typer's rich help costs by itself: a two-command app's ``--help`` (for reference).
BARE_TYPER_HELP = (sys.executable, "-c", "import typer\napp = typer.Typer(add_completion=False)\n"
                   "@app.command()\ndef a() -> None:\n    'A.'\n@app.command()\ndef b() -> None:\n    'B.'\napp()",
                   "--help")
STARTUP_CUSTOMER = "acme.com"


def custctx_command() -> list[str]:
    """How a user starts ``custctx`` with this interpreter: its console script, else ``-m``."""
    script = Path(sys.executable).with_name("custctx")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "agent.interfaces.cli.app"]


def run_processes(commands: dict[str, Sequence[str]], runs: int, env: dict[str, str],
                  progress: Progress | None = None) -> dict[str, list[float]]:
    """Milliseconds of ``runs`` fresh processes of every command, interleaved (the order turned
    round every other run, so each sees the same caches and load), after one untimed round
    (byte code compiled, files cached, the identity index current).

    Raises:
        RuntimeError: a command failed (its figures would time an error message).
    """
    names = list(commands)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(runs + 1):
        for name in names[::-1] if i % 2 else names:
            t0 = time.perf_counter()
            proc = subprocess.run(commands[name], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, check=False)
            ms = (time.perf_counter() - t0) * 1000
            if proc.returncode:
                raise RuntimeError(f"{' '.join(commands[name])} exited {proc.returncode}: {proc.stderr.strip()}")
            if i:
                times[name].append(ms)
        if progress:
            progress("start-up runs", i, runs)
    return times


def measure_startup(out_dir: Path, runs: int, progress: Progress | None = None, url: str | None = None
                    ) -> list[Row]:
    """``custctx --help`` and ``custctx context acme.com`` (warm state), each in fresh processes
    beside the floor of a Typer command line (a process importing typer and rich), and for
    reference a bare two-command Typer app's ``--help``."""
    cli = custctx_command()
    args = {"help": ["--help"], "context": ["context", STARTUP_CUSTOMER]}
    times = run_processes({"floor": STARTUP_FLOOR, "bare_help": BARE_TYPER_HELP,
                           **{name: [*cli, *a] for name, a in args.items()}}, runs,
                          {**os.environ, **bench_env(out_dir, url)}, progress)
    floor, bare = percentile(times["floor"], 50), percentile(times["bare_help"], 50)
    baselines = {"help": f"python -c 'import typer, rich': p50 {floor:.0f} ms (a bare Typer app's --help: "
                         f"p50 {bare:.0f} ms, {bare / floor:.2g}×)",
                 "context": f"python -c 'import typer, rich': p50 {floor:.0f} ms"}
    rows = []
    for name, measure, goal, limit_ms in (
            ("help", "Start-up: custctx --help", "≤ 2× the floor", 2 * floor),
            ("context", f"Start-up: custctx context {STARTUP_CUSTOMER} (warm state)", "≤ 1 s", 1000.0)):
        p50, fastest = percentile(times[name], 50), min(times[name])
        rows.append(Row(measure, f"p50 {p50:.0f} ms (fastest {fastest:.0f} ms)", baselines[name],
                        round(p50 / floor, 2) if floor else None, goal, p50 <= limit_ms,
                        {"p50_ms": round(p50, 1), "min_ms": round(fastest, 1), "floor_p50_ms": round(floor, 1),
                         "floor_min_ms": round(min(times["floor"]), 1), "bare_typer_help_p50_ms": round(bare, 1),
                         "runs": runs, "command": shlex.join(["custctx", *args[name]])}))
    return rows
