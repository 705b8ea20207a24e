"""What every ``custctx`` command shares: the consoles, option types, one-line failures,
the progress bar, and turning ``--as`` and customer references into answers or exits.

Only typer, rich and the standard library are imported here at module level, so that
``custctx --help`` and a command's start-up pay nothing for what they do not use; the
product's modules are imported inside the helpers that need them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from rich.text import Text

    from tools.access.gate import Access
    from tools.settings import Settings
    from tools.sources.base import CustomerRef

# C0 and C1 control characters but newline and tab: a terminal acts on them (ESC starts a
# sequence that can move the cursor, retitle the window, …), so data shows them as escapes.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class TextConsole(Console):
    """A console that prints text as it is: no rich markup (``[bold]``, ``[/]`` in a customer
    name or a reference is text, never a style or a MarkupError) unless a call passes
    ``markup=True`` for its own literal styling, and control characters made visible. Every
    string reaches the terminal through ``render_str`` — ``print`` arguments and table cells alike."""

    def __init__(self, **kwargs: Any):
        super().__init__(markup=False, highlight=False, soft_wrap=True, **kwargs)

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(_CONTROL.sub(lambda m: repr(m.group())[1:-1], text), **kwargs)


err = TextConsole(stderr=True)
out = TextConsole()

ProgressCallback = Callable[[str, int, int], None]
"""``(stage, done, total)``: what long work reports its progress to."""


class Format(StrEnum):
    json = "json"
    markdown = "markdown"


FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="Output format.")]

AsOpt = Annotated[str | None, typer.Option(
    "--as", metavar="ROLE[:USER]",
    help="Read as this role and user, e.g. account_exec:dana.scully (roles: docs/ACCESS.md). "
         "Default: CUSTCTX_ROLE / CUSTCTX_USER, else admin as your login.")]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr and return the exit to raise (``raise fail(...)``)."""
    err.print(f"[red]error:[/red] {escape(message)}", markup=True)
    return typer.Exit(code)


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[ProgressCallback | None]:
    """A rich progress bar for long work; None (no callback) when output is not a terminal."""
    if not enabled or not err.is_terminal:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update


def access_or_exit(as_: str | None, settings: Settings, interface: str = "cli") -> Access:
    """The access gate of ``--as ROLE[:USER]`` (or the default principal), or exit 2 with why."""
    from tools.access.gate import Access
    from tools.access.policy import PolicyError
    from tools.access.principal import BadPrincipal, default_principal, parse_as

    try:
        principal = parse_as(as_, settings, interface) if as_ else default_principal(settings, interface)
        return Access.for_principal(settings, principal)
    except (BadPrincipal, PolicyError) as exc:
        raise fail(str(exc), 2) from None


def resolve_or_exit(resolve: Callable[[str], tuple[CustomerRef, str]], ref: str,
                    format: Format = Format.markdown, ask: str = "") -> tuple[CustomerRef, str]:
    """Resolve a customer reference with ``resolve`` (an index's, or as a principal may), or
    exit with a one-line reason (1: not found, 3: ambiguous); ``ask``: the question a
    conversation asks after "not found" (the same for a hidden customer as for a missing one)."""
    from tools.identity import AmbiguousCustomer, BadReference, CustomerNotFound

    try:
        return resolve(ref)
    except AmbiguousCustomer as exc:
        if format is Format.json:
            print(json.dumps({"error": "ambiguous", "message": str(exc),
                              "candidates": [c.__dict__ for c in exc.candidates]}, indent=2))
            raise typer.Exit(3) from None
        err.print(f"{ref!r} matches {len(exc.candidates)} customers:")
        for c in exc.candidates:
            err.print(f"  - {c.name} ({c.domain or '-'}, {c.customer_id})")
        err.print("Use a domain, an email or an id to pick one.")
        raise typer.Exit(3) from None
    except CustomerNotFound as exc:
        raise fail(f"{exc} {ask}".strip(), 1) from None
    except BadReference as exc:
        raise fail(str(exc), 1) from None
