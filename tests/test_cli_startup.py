"""The CLI starts fast: loading it imports none of the heavy libraries (they load inside the
commands that use them), the command modules never import the app that assembles them, and
``--help`` still lists every command. No timing is asserted here: ``custctx bench`` reports
start-up times beside their floor."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys

import pytest

import agent.interfaces.cli as cli_package
import agent.interfaces.cli.app as cli_app
from evals.bench.run import bench_env, bench_settings
from tools.settings import Settings

from .test_cli import custctx

HEAVY = ("langgraph", "langchain_core", "langchain_openai", "openai", "fastapi", "mcp", "sqlalchemy", "uvicorn",
         "starlette", "pydantic_settings")
COMMANDS = ("seed", "context", "sources", "note", "audit", "bench", "eval", "refresh", "event", "ask", "chat", "triage",
            "review", "demo", "book", "serve", "mappings")
COMMAND_MODULES = sorted(m.name for m in pkgutil.iter_modules(cli_package.__path__) if m.name not in ("app", "common"))


def fresh_python(code: str) -> str:
    """stdout of ``code`` run by a new interpreter (nothing imported by this test process)."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_loading_the_cli_imports_no_heavy_library():
    loaded = fresh_python(
        "import json, sys, agent.interfaces.cli.app\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {set(HEAVY)!r})))")
    assert json.loads(loaded) == []


def test_dependencies_point_one_way():
    """app -> command modules -> common: no command module imports the app, common imports none."""
    assert set(COMMAND_MODULES) >= {"audit", "bench", "context", "evals", "refresh", "serve", "workflows"}
    loaded = fresh_python(
        "import json, sys\n"
        "def cli(): return sorted(m.rsplit('.', 1)[1] for m in sys.modules if m.startswith('agent.interfaces.cli.'))\n"
        "import agent.interfaces.cli.common\n"
        "after_common = cli()\n"
        f"for name in {COMMAND_MODULES!r}:\n"
        "    __import__('agent.interfaces.cli.' + name)\n"
        "print(json.dumps([after_common, cli()]))")
    after_common, after_commands = json.loads(loaded)
    assert after_common == ["common"]
    assert after_commands == sorted([*COMMAND_MODULES, "common"])


@pytest.mark.parametrize("how", ["script", "module"])
def test_help_lists_every_command(tmp_path, how):
    if how == "script":
        proc = custctx(tmp_path, "--help")
    else:  # python -m runs the app as __main__: the commands must still be registered on it
        env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTCTX_")}
        proc = subprocess.run([sys.executable, "-m", "agent.interfaces.cli.app", "--help"], capture_output=True,
                              text=True, env={**env, "CUSTCTX_HOME": str(tmp_path)}, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    listed = re.findall(r"^│ (\w+) ", proc.stdout, flags=re.M)
    assert listed == list(COMMANDS)
    assert not (tmp_path / "warehouse.sqlite").exists()  # --help touches no data


def test_user_error_classes_name_their_defining_modules():
    """A module that only re-exports a class may not be loaded when the error is raised."""
    for module, name in (*cli_app.MODEL_ERRORS, *cli_app.DATA_ERRORS):
        cls = getattr(importlib.import_module(module), name)
        assert isinstance(cls, type) and issubclass(cls, Exception), f"{module}.{name}"
        assert cls.__module__ == module, f"{name} is defined in {cls.__module__}, not {module}"
    assert cli_app._loaded((("agent.interfaces.cli.common", "Format"), ("no.such.module", "Error"))) == ()


def test_bench_startup_runs_under_the_bench_settings(tmp_path, monkeypatch):
    for key in [k for k in os.environ if k.startswith("CUSTCTX_")]:
        monkeypatch.delenv(key)
    for key, value in bench_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    assert Settings() == bench_settings(tmp_path)
