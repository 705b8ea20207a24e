"""``custctx``: the command line, built from one module per command group.

Dependencies point one way: this module imports the command modules, they import
``agent.interfaces.cli.common``, nothing imports this module back. Every module of the
CLI imports only typer, rich and the standard library at load time; a command imports
the product (LangGraph, SQLAlchemy, the sources…) when it runs, so ``custctx --help`` and
a command's start-up pay only for what that command uses.
"""

from __future__ import annotations

import os
import sys

import typer

from agent.interfaces.cli import (
    audit,
    bench,
    book,
    context,
    evals,
    mappings,
    notes,
    refresh,
    serve,
    workflows,
)
from agent.interfaces.cli.common import err

app = typer.Typer(help="Customer context agent: fresh, safe, step-sized customer context.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
# Unnamed groups merge their commands into the app, in this order (the order of --help).
for group in (context.commands, notes.commands, audit.commands, bench.commands, evals.commands, refresh.commands,
              workflows.commands, book.commands):
    app.add_typer(group)
app.add_typer(serve.commands, name="serve")
app.add_typer(mappings.commands, name="mappings")

# User errors that end a command with one line instead of a traceback: (the module that
# defines the class, its name). Looked up among the modules already imported, so catching
# them imports nothing: an exception whose class was never loaded cannot have been raised.
# A model that cannot be used at all is a bad option (2); one that failed to answer, 4. The
# raw client errors are a fallback for a model not built by agent.models.chat_model.
MODEL_CONFIG_ERRORS = (("agent.models", "ModelConfigError"),)
MODEL_ERRORS = (("agent.models", "ModelError"), ("openai", "OpenAIError"),
                ("langchain_core.exceptions", "ModelError"))
EXIT_BAD_OPTION, EXIT_MODEL = 2, 4
DATA_ERRORS = (("tools.mapping.conversions", "MappingError"), ("tools.sources.faults", "FaultSpecError"),
               ("sqlalchemy.exc", "SQLAlchemyError"), ("agent.threads", "ThreadBusy"))


def _loaded(names: tuple[tuple[str, str], ...]) -> tuple[type[BaseException], ...]:
    """The exception classes of ``names`` whose modules are imported."""
    found = (getattr(sys.modules.get(module), name, None) for module, name in names)
    return tuple(cls for cls in found if isinstance(cls, type) and issubclass(cls, BaseException))


def _settings_error(exc: Exception) -> str | None:
    """The one-line description of a bad CUSTCTX_* setting, if ``exc`` is one."""
    settings = sys.modules.get("tools.settings")  # not imported: no Settings was built, none failed
    describe = getattr(settings, "settings_error", None)
    return describe(exc) if describe is not None else None


def main() -> None:
    """Entry point: user errors become one line on stderr, never a traceback (unless CUSTCTX_DEBUG).

    Exit codes: 1 data errors (and the commands' own: unknown customer), 2 bad option, a bad
    CUSTCTX_* setting or an unusable model setting, 3 ambiguous reference (the commands'),
    4 the model gave no answer.
    """
    try:
        app()
    except Exception as exc:
        if os.environ.get("CUSTCTX_DEBUG"):
            raise
        if line := _settings_error(exc):
            err.print(f"error: {line}", markup=False)
            sys.exit(EXIT_BAD_OPTION)
        if isinstance(exc, _loaded(MODEL_ERRORS)):
            line = " ".join(str(exc).split()) or type(exc).__name__
            line = line if line.startswith("model ") else f"model: {line}"
            err.print(f"error: {line}", markup=False)
            sys.exit(EXIT_BAD_OPTION if isinstance(exc, _loaded(MODEL_CONFIG_ERRORS)) else EXIT_MODEL)
        if isinstance(exc, (*_loaded(DATA_ERRORS), OSError)):
            first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            err.print(f"error: {first[0] if first else type(exc).__name__}", markup=False)
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
