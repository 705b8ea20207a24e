"""``custctx mappings check``: every configured mapping against the tables it maps."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from agent.interfaces.cli.common import Format, FormatOpt, fail, out

commands = typer.Typer(help="Source mappings: check them against your warehouse.", no_args_is_help=True)

SourcesOpt = Annotated[list[str] | None, typer.Option(
    "--source", "-s", help="Check only this source (repeatable; default: every connected source).")]


@commands.command()
def check(
    source: SourcesOpt = None,
    sample: Annotated[int, typer.Option(min=1, max=10_000, help="Rows per entity read through the conversions.")] = 20,
    shared_limit: Annotated[int, typer.Option(
        "--shared-limit", min=1,
        help="An identity key value held by more customers than this is refused (a shared domain).")] = 10,
    format: FormatOpt = Format.markdown,
) -> None:
    """Check every connected source's mapping against its database.

    Tables, columns and expressions, a sample of rows through the conversions, identity keys
    shared by many customers (refused unless the key says account_domain: true), fields left
    unmapped. One line per problem, "file: key: what is wrong"; notes (what is left unmapped)
    start with "note:". Exit 1 when there is a problem, 0 when there are notes only.
    """
    from agent.bootstrap import ensure_warehouse
    from tools.identity_graph import FREEMAIL
    from tools.settings import SOURCE_NAMES, Settings
    from tools.sources.health import check_mappings

    settings = Settings()
    unknown = [s for s in source or () if s not in SOURCE_NAMES]
    if unknown:
        raise fail(f"unknown source {unknown[0]!r}; the sources are {', '.join(SOURCE_NAMES)}", 2)
    ensure_warehouse(settings)  # the embedded fixture warehouse, when in use, is checked as seeded
    reports = check_mappings(settings, source or None, sample=sample, shared_limit=shared_limit,
                             free_domains=FREEMAIL)
    if not reports:
        raise fail("no source is connected: set CUSTCTX_SOURCES__<SOURCE>__URL (and __MAPPING)", 1)
    if format is Format.json:
        print(json.dumps([{
            "source": r.source, "file": r.file, "system": r.system, "entities": r.entities, "fields": r.fields,
            "sampled_rows": r.sampled, "ok": not r.errors,
            "problems": [{"level": p.level, "file": p.file, "key": p.key, "message": p.message, "line": p.line}
                         for p in r.problems],
        } for r in reports], indent=2, ensure_ascii=False))
    else:
        for r in reports:
            errors = len(r.errors)
            verdict = f"{errors} problem{'s' if errors != 1 else ''}" if errors else "ok"
            out.print(f"{r.source}: {r.file or '-'} {verdict} ({r.entities} entities, {r.fields} fields, "
                      f"{r.sampled} sample rows read)")
            for p in r.errors:
                out.print(p.line)
            for p in r.notes:
                out.print(f"note: {p.line}")
    if any(r.errors for r in reports):
        raise typer.Exit(1)


@commands.command()
def docs(
    write: Annotated[bool, typer.Option("--write", help="Replace the reference section of docs/MAPPINGS.md.")] = False,
    check: Annotated[bool, typer.Option("--check", help="Exit 1 when docs/MAPPINGS.md is out of date.")] = False,
) -> None:
    """Print the mapping reference generated from the code: every entity and field each reader
    reads (required or optional, type, windows, ordering, accepted values) and how each built-in
    mapping fills it — the reference section of docs/MAPPINGS.md."""
    from tools.mapping import docs as reference

    code = reference.main([*(["--write"] if write else []), *(["--check"] if check else [])])
    if code:
        raise typer.Exit(code)
