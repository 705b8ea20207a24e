"""``custctx note``: record a fact about a customer that no connected source holds (tools/facts.py)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from agent.interfaces.cli.common import (
    AsOpt,
    Format,
    FormatOpt,
    access_or_exit,
    fail,
    out,
    resolve_or_exit,
)

commands = typer.Typer()


@commands.command()
def note(
    ref: Annotated[str, typer.Argument(help="Customer email, domain, id (e.g. crm:1001) or name.")],
    text: Annotated[str | None, typer.Argument(
        help="The fact, e.g. \"their onboarding finished last week\". Without it: list the facts kept.")] = None,
    format: FormatOpt = Format.markdown,
    as_: AsOpt = None,
) -> None:
    """Keep a fact you know about a customer (provenance user: you, now); shown in context, briefs and answers."""
    from agent.bootstrap import ready
    from tools.context.read import resolve
    from tools.context.scope import ReadScope
    from tools.facts import FactError, record_fact, user_facts

    r = ready(memory=True)
    access = access_or_exit(as_, r.settings)
    scope = ReadScope.build(r.settings, r.clock, access=access, memory=r.memory, index=r.index)
    customer, _ = resolve_or_exit(lambda q: resolve(scope, q), ref, format)
    if text is not None:
        try:
            fact = record_fact(scope, customer.customer_id, text)
        except FactError as exc:
            raise fail(str(exc), 2) from None
        if format is Format.json:
            print(json.dumps({"customer_id": customer.customer_id, "fact": fact.model_dump(mode="json")},
                             ensure_ascii=False))
        else:
            out.print(f"Noted for {customer.name}, as told by {fact.by} on {fact.at:%Y-%m-%d %H:%M} UTC: "
                      f"\"{fact.text}\"", markup=False)
        return
    facts = user_facts(scope, customer.customer_id)
    if format is Format.json:
        print(json.dumps({"customer_id": customer.customer_id, "facts": [f.model_dump(mode="json") for f in facts]},
                         ensure_ascii=False))
    elif not facts:
        out.print(f"No facts noted for {customer.name} yet.", markup=False)
    for f in facts if format is not Format.json else []:
        out.print(f"- {f.at:%Y-%m-%d} {f.by} ({f.role}): \"{f.text}\"", markup=False)
