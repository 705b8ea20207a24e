"""``custctx ask | chat | triage | review``: the three workflows from the command line."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from agent.interfaces.cli.common import (
    AsOpt,
    Format,
    FormatOpt,
    access_or_exit,
    err,
    fail,
    out,
    progress_bar,
    resolve_or_exit,
)

if TYPE_CHECKING:
    from agent.runs import Runner

NO_THREAD = "give --customer (email, domain, id or name), or --thread of an existing conversation"
#: No minimum viable context (no customer): the assistant asks, one clear question (issue 18), never an error.
# (no example customer in it: a fixture's name here would read as a leak to whoever may not see it)
ASK_WHO = ("Who is the customer, and what is the conversation about? Give their email, domain or company name "
           "with --customer, and ask what you are discussing with them.")

#: An unknown (or hidden: the same words) customer in a conversation: ask who it is, on the same line.
ASK_WHICH = "Who is the customer you are talking to? Give their email, domain or company id."

ModelOpt = Annotated[str | None, typer.Option(
    "--model", help='"offline" (default) or an OpenAI-compatible model name (needs OPENAI_API_KEY).')]

commands = typer.Typer()


def _runner(as_: str | None = None, **settings: Any) -> Runner:
    """A Runner whose runs read as ``--as ROLE[:USER]`` (else the default principal); ``settings``
    are options given on the command line (they beat the environment)."""
    from agent.bootstrap import ready
    from agent.run_context import remember
    from agent.runs import Runner
    from tools.settings import Settings

    with progress_bar() as update:
        r = ready(Settings(**settings) if settings else None, progress=update)
    remember(r)
    return Runner(r.settings, principal=access_or_exit(as_, r.settings).principal)


def _footer(result: dict[str, Any]) -> str:
    used = ", ".join(f"{c['slice']} ({c.get('system') or c['source']})" for c in result.get("citations", []))
    steps = len(result.get("plan") or [])
    return (f"_Slices used: {', '.join(result.get('slices_used') or []) or 'none'} · cited: {used or 'none'} · "
            f"{steps} planning step{'s' if steps != 1 else ''} · model {result.get('model')}_")


def _print_turn(result: dict[str, Any], format: Format) -> None:
    if format is Format.json:
        print(json.dumps(result, indent=2, ensure_ascii=False, default=str))
    else:
        out.print(result.get("answer") or "", markup=False)
        out.print("")
        out.print(_footer(result), markup=False)


@commands.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question, e.g. \"What's their billing status?\"")],
    customer: Annotated[str | None, typer.Option(
        "--customer", "-c", help="Customer email, domain, id or name (optional on an existing thread).")] = None,
    thread: Annotated[str | None, typer.Option(
        "--thread", "-t", help="Conversation thread to continue (default: a new one).")] = None,
    format: FormatOpt = Format.markdown,
    model: ModelOpt = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Read slices live, not from long-term memory.")] = False,
    as_: AsOpt = None,
) -> None:
    """Ask the support assistant one question about a customer; answers cite their slices."""
    from agent.runs import new_thread_id
    from tools.context.read import resolve

    if not question.strip():
        raise fail("the question is empty", 2)
    with _runner(as_) as runner:
        scope = runner.request(fresh=fresh)  # one request: resolved here, not again by the graph
        if customer:
            resolve_or_exit(lambda q: resolve(scope, q), customer, format, ask=ASK_WHICH)
        elif not thread or runner.thread_customer(thread, scope) is None:  # a hidden thread: as if none
            err.print(ASK_WHO, markup=False)  # a question, not an error line; exit 2: the input is incomplete
            raise typer.Exit(2)
        result = runner.ask(question, customer, thread or new_thread_id(), scope=scope, model=model, fresh=fresh)
    if result.get("error"):
        raise fail(result["error"], 1)
    _print_turn(result, format)
    err.print(f"thread {result['thread_id']} (continue with --thread {result['thread_id']})", markup=False)


@commands.command()
def chat(
    customer: Annotated[str | None, typer.Option("--customer", "-c", help="Customer to talk about.")] = None,
    thread: Annotated[str | None, typer.Option("--thread", "-t", help="Thread to resume.")] = None,
    model: ModelOpt = None,
    format: FormatOpt = Format.markdown,
    as_: AsOpt = None,
) -> None:
    """Interactive chat about one customer; the thread persists (resume it with --thread)."""
    from agent.runs import new_thread_id
    from tools.context.read import resolve

    with _runner(as_) as runner:
        scope = runner.request()
        known = runner.thread_customer(thread, scope) if thread else None  # a hidden thread's: None, never named
        if customer:
            ref, _ = resolve_or_exit(lambda q: resolve(scope, q), customer, format)
            if thread and (refused := runner.thread_refusal(thread, customer, scope)):
                raise fail(refused, 1)
            name = ref.name
        elif known:
            name = known
        else:  # no customer yet: ask who it is (one question), then talk about the one named
            err.print(ASK_WHO, markup=False)
            try:
                customer = input("customer> " if sys.stdin.isatty() else "").strip()
            except EOFError:
                customer = ""
            if not customer:
                return
            name = resolve_or_exit(lambda q: resolve(scope, q), customer, format, ask=ASK_WHICH)[0].name
        thread = thread or new_thread_id()
        interactive = sys.stdin.isatty()
        err.print(f"Chatting about {name} (thread {thread}). /exit or an empty line ends; "
                  f"resume later with --thread {thread}.", markup=False)
        first = True
        while True:
            try:
                line = input("you> " if interactive else "")
            except EOFError:
                break
            if not line.strip() or line.strip() in ("/exit", "/quit", "exit", "quit"):
                break
            result = runner.ask(line, customer if first else None, thread, model=model)
            first = False
            if result.get("error"):
                err.print(f"error: {result['error']}", markup=False)
                continue
            _print_turn(result, format)
            out.print("")


# ---------------------------------------------------------------------- triage
def _decision_markdown(d: dict[str, Any]) -> list[str]:
    who = d.get("customer", {}).get("name", "?")
    lines = [f"### Ticket #{d.get('ticket_id') or '(file)'} — {who}",
             f"- **{d['category']}** · **{d['priority']}** · team {d['team']} · SLA {d['sla_hours']} h · "
             f"sentiment {d['sentiment']} · confidence {d['confidence']:.2f}"]
    if d.get("suspected_injection"):
        lines.append(f"- **Suspected prompt injection** ({', '.join(d.get('injection_signals') or [])}): "
                     "the ticket text was treated as data and not acted upon.")
    lines.append(f"- Rationale: {d.get('rationale')}")
    lines += [f"- Evidence [{e['slice']}]: {e['fact']}" for e in d.get("evidence", [])]
    lines += [f"- Missing context: {g['slice']} ({g['kind']})" for g in d.get("gaps", [])]
    return lines


@commands.command("triage")
def triage_cmd(
    ticket: Annotated[str | None, typer.Option("--ticket", help="A ticket id in the support source.")] = None,
    file: Annotated[Path | None, typer.Option("--file", help="A ticket as JSON: subject, description, "
                                                             "requester_email, ...")] = None,
    open_: Annotated[bool, typer.Option("--open", help="Triage every open ticket.")] = False,
    limit: Annotated[int | None, typer.Option(help="With --open: at most this many tickets.")] = None,
    customer: Annotated[str | None, typer.Option(
        "--customer", "-c", help="The customer, when the ticket's requester does not identify it.")] = None,
    format: FormatOpt = Format.markdown,
    model: ModelOpt = None,
    as_: AsOpt = None,
) -> None:
    """Triage tickets: category, priority P1-P4, sentiment, team, SLA, injection flag, evidence."""
    from tools.access.policy import Refused
    from tools.context.read import resolve
    from tools.sources.tickets import (
        TicketInput,
        TicketNotFound,
        TicketSourceUnavailable,
        ticket_from_file,
    )

    if sum(x is not None and x is not False for x in (ticket, file, open_)) != 1:
        raise fail("give exactly one of --ticket ID, --file PATH or --open", 2)
    with _runner(as_) as runner:
        # One request: the customer and every ticket's customer are resolved and row-checked once, and a
        # ticket of a customer the principal may not see is not found (by id) or left out (the queue).
        scope = runner.request()
        if customer:
            resolve_or_exit(lambda q: resolve(scope, q), customer, format)
        try:
            tickets: Iterable[TicketInput]
            if file is not None:
                tickets = [ticket_from_file(file)]
            elif ticket is not None:
                tickets = [runner.ticket(ticket, customer, scope=scope)]
            else:
                tickets = runner.open_tickets(limit, customer, scope=scope)
        except (TicketNotFound, TicketSourceUnavailable, Refused, ValueError) as exc:
            raise fail(str(exc).splitlines()[0], 1) from None
        results, failed = [], 0
        for t in tickets:
            res = runner.triage(t.model_dump(mode="json"), customer, scope=scope, model=model)
            if res.get("error"):
                failed += 1
                res = {"ticket_id": t.id, "error": res["error"]}
            results.append(res)
    _print_triage(results, format, many=open_)
    if failed and not open_:
        raise typer.Exit(1)


def _print_triage(results: list[dict[str, Any]], format: Format, many: bool) -> None:
    if format is Format.json:
        print(json.dumps(results if many else results[0], indent=2, ensure_ascii=False, default=str))
        return
    if many:
        from rich.table import Table

        table = Table("ticket", "customer", "category", "priority", "team", "SLA", "sentiment", "injection",
                      box=None, pad_edge=False)
        for d in results:
            if d.get("error"):
                table.add_row(str(d.get("ticket_id")), f"error: {d['error']}", "", "", "", "", "", "")
                continue
            table.add_row(str(d.get("ticket_id")), d["customer"]["name"], d["category"], d["priority"], d["team"],
                          f"{d['sla_hours']} h", d["sentiment"], "yes" if d.get("suspected_injection") else "")
        out.print(table)
        out.print(f"{len(results)} tickets triaged.")
        return
    d = results[0]
    if d.get("error"):
        err.print(f"error: {d['error']}", markup=False)
        return
    out.print("\n".join(_decision_markdown(d)), markup=False)


# ---------------------------------------------------------------------- review
@commands.command()
def review(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the reviews (markdown + JSON).")],
    customer: Annotated[str | None, typer.Option("--customer", "-c", help="One account.")] = None,
    segment: Annotated[str | None, typer.Option(help="Accounts of a segment / tier, e.g. enterprise.")] = None,
    owner: Annotated[str | None, typer.Option(help="Accounts an owner holds, e.g. dana.scully.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every active account.")] = False,
    include_churned: Annotated[bool, typer.Option("--include-churned", help="Also churned accounts.")] = False,
    concurrency: Annotated[int, typer.Option(min=1, max=32, help="Accounts reviewed at once.")] = 4,
    force: Annotated[bool, typer.Option("--force", help="Redo accounts already reviewed in --out.")] = False,
    model: ModelOpt = None,
    rate: Annotated[float | None, typer.Option(
        "--rate", min=0.001, help="At most this many model requests per second, shared by the concurrent "
        "reviews (default: CUSTCTX_MODEL_REQUESTS_PER_SECOND; unset: no limit).")] = None,
    as_: AsOpt = None,
) -> None:
    """Write one account review per account (the skill's structure, markdown + JSON); resumable."""
    from agent.models import ModelError, chat_model
    from agent.reviews import run_reviews
    from tools.book import AccountEntry, BookError, list_accounts

    if sum(bool(x) for x in (customer, segment, owner, all_)) != 1:
        raise fail("give exactly one of --customer, --segment, --owner or --all", 2)
    model_failed = False
    with _runner(as_, **({"model_requests_per_second": rate} if rate else {})) as runner:
        chat_model(runner.settings, model)  # an unusable model setting stops here (exit 2), not once per account
        if customer:
            ref, _ = resolve_or_exit(runner.resolve, customer)
            entries: Any = [AccountEntry(customer_id=ref.customer_id, name=ref.name, segment=None, owner=None,
                                         status=None)]
            total: int | None = 1
        else:
            try:
                entries = list_accounts(runner.settings, segment=segment, owner=owner,
                                        include_churned=include_churned)
            except BookError as exc:
                raise fail(str(exc), 2) from None
            entries, total = _visible_entries(runner, entries), None

        def one(entry: AccountEntry) -> tuple[str, dict]:
            nonlocal model_failed
            try:
                res = runner.review(entry.customer_id, model=model)
            except ModelError:
                model_failed = True  # the account fails (retried on the next run); the exit says why
                raise
            if res.get("error"):
                raise RuntimeError(res["error"])
            data = {"customer_id": entry.customer_id, "name": entry.name, "summary": res["summary"],
                    "review": res["review"], "plan": res["plan"], "slices_used": res["slices_used"],
                    "gaps": res["gaps"], "model": res["model"]}
            return res["markdown"], data

        with progress_bar() as update:
            report = run_reviews(entries, one, out_dir, concurrency=concurrency, force=force,
                                 progress=(lambda done, tot: update("reviews", done, tot or done)) if update else None,
                                 total=total)
    out.print(f"{report.written} reviews written, {report.skipped} already done, {len(report.failed)} failed "
              f"({report.selected} accounts selected) in {report.seconds:.1f} s → {report.out_dir}", markup=False)
    for cid, msg in report.failed[:10]:
        err.print(f"  failed {cid}: {msg}", markup=False)
    if report.failed:
        raise typer.Exit(4 if model_failed else 1)  # 4: the model gave no answer (README's exit codes)


def _visible_entries(runner: Runner, entries: Any) -> Any:
    """The book as the runner's principal may see it: accounts its row filter hides are left
    out (not listed as failures: they do not exist for it)."""
    from tools.context.read import visible

    scope = runner.request()
    if scope.access is None or not scope.access.filters_rows:
        return entries
    return (e for e in entries if (c := runner.index.get(e.customer_id)) is not None and visible(scope, c))


# ------------------------------------------------------------------------ demo
@commands.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Where the demo writes its account review.")] = Path(
        "custctx-demo"),
    model: ModelOpt = None,
    as_: AsOpt = None,
) -> None:
    """End-to-end demo on the embedded default: a support conversation, ticket triage, a review."""
    from rich.markup import escape

    from agent.reviews import run_reviews
    from agent.runs import new_thread_id
    from tools.access.policy import Refused
    from tools.book import AccountEntry
    from tools.sources.tickets import TicketNotFound

    with _runner(as_) as runner:
        thread = new_thread_id()
        out.print(f"[bold]1. Support assistant[/bold] — a conversation about Acme Corp (thread {escape(thread)})",
                  markup=True)
        for i, q in enumerate(("What's their billing status?", "and their usage?", "What's going on with them?")):
            res = runner.ask(q, "acme.com" if i == 0 else None, thread, model=model)
            out.print(f"\n[cyan]you>[/cyan] {escape(q)}", markup=True)
            if res.get("error"):  # e.g. --as a role that may not see Acme Corp
                out.print(f"error: {res['error']}", markup=False)
                continue
            _print_turn(res, Format.markdown)
        out.print("\n[bold]2. Ticket triage[/bold] — the same 'card declined' text from two customers, "
                  "and a prompt injection", markup=True)
        for ticket_id in ("1001", "1015", "1010"):
            try:  # read as the principal may: another owner's ticket is not found for an account executive
                d = runner.triage(runner.ticket(ticket_id).model_dump(mode="json"), model=model)
            except (TicketNotFound, Refused) as exc:
                d = {"error": str(exc)}
            out.print("")
            out.print(f"### Ticket #{ticket_id} — error: {d['error']}" if d.get("error")
                      else "\n".join(_decision_markdown(d)), markup=False)
        out.print(f"\n[bold]3. Account review[/bold] — Acme Corp, written to {escape(str(out_dir))}/", markup=True)
        ref, _ = resolve_or_exit(runner.resolve, "acme.com")

        def one(entry: AccountEntry) -> tuple[str, dict]:
            res = runner.review(entry.customer_id, model=model)
            return res["markdown"], {"customer_id": entry.customer_id, "name": entry.name, **{
                k: res[k] for k in ("summary", "review", "plan", "slices_used", "gaps", "model")}}

        report = run_reviews([AccountEntry(ref.customer_id, ref.name, None, None, None)], one, out_dir, force=True)
    md = next(out_dir.glob("acme-corp--*.md"))
    out.print(md.read_text(encoding="utf-8").split("### Relationship Snapshot")[0], markup=False)
    out.print(f"Full review: {md} ({report.written} written). Next: custctx review --all --out reviews/",
              markup=False)
