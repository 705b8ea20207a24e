"""The eval runner: run the suites' datasets through the real workflows, score each case
with the evaluators, write a markdown report and JSON (with the full settings), and
check the offline gate.

Suites: assistant, triage, review, degradation, injection, access and signals (the
relationship signals of docs/SIGNALS.md, evals/signals_suite.py). Each run uses its own memory tenant, so results do not depend on what an
earlier run cached.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.messages.utils import count_tokens_approximately
from sqlalchemy import event

from agent.prompting import UNTRUSTED_NOTE, context_block, render
from agent.runs import Runner
from evals import evaluators as ev
from evals.report import (
    ENTRY_NAMES,
    GATE,
    HELDOUT_GATED,
    INFORMATIONAL,
    LOWER_IS_BETTER,
    CaseResult,
    EvalReport,
    _passed,
    entry_lines,
    summary_rows,
    write_report,
)
from tools.context.view import WINDOWS
from tools.embedded.triage import load_triage_tickets
from tools.settings import SOURCE_NAMES, Settings
from tools.sources.registry import engine_for
from tools.sources.tickets import TicketInput, get_ticket
from tools.traits import derive_traits

__all__ = ["DATASETS", "ENTRY_NAMES", "GATE", "HELDOUT_GATED", "INFORMATIONAL", "LOWER_IS_BETTER", "SUITES",
           "CaseResult", "EvalReport", "QueryCounter", "Suites", "entry_lines", "full_dump_tokens", "load",
           "run_eval", "store_settings", "summary_rows", "write_report"]

DATASETS = Path(__file__).with_name("datasets")
SUITES = ("assistant", "triage", "review", "degradation", "injection", "access", "signals")


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((DATASETS / f"{name}.yaml").read_text(encoding="utf-8"))


# ------------------------------------------------------------------ measuring
class QueryCounter:
    """Counts SQL statements sent to the source warehouses (all source URLs)."""

    def __init__(self, settings: Settings):
        self.n = 0
        self._lock = threading.Lock()
        self.engines = {engine_for(u) for s in SOURCE_NAMES if (u := settings.source(s).url)}

    def _count(self, *args: Any) -> None:
        with self._lock:
            self.n += 1

    @contextmanager
    def listening(self) -> Iterator[QueryCounter]:
        for e in self.engines:
            event.listen(e, "before_cursor_execute", self._count)
        try:
            yield self
        finally:
            for e in self.engines:
                event.remove(e, "before_cursor_execute", self._count)


def _timed(fn: Callable[[], Any], counter: QueryCounter) -> tuple[Any, float, int]:
    before = counter.n
    t0 = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t0) * 1000, counter.n - before


def full_dump_tokens(runner: Runner, customer_id: str, question: str) -> int:
    """Prompt tokens of the alternative the step-wise design exists to beat: one model call
    with the assistant's instructions, the customer's whole context and the question."""
    c = runner.customer_context(customer_id)
    block = context_block({"customer_id": c.customer_id, "name": c.name, "as_of": c.as_of.isoformat()}, c.slices,
                          c.gaps, c.traits.model_dump(mode="json"))
    system = render("assistant", customer=c.name, untrusted_note=UNTRUSTED_NOTE, budget_note="")
    return count_tokens_approximately([SystemMessage(system), HumanMessage(
        f"<customer_context>\n{block}\n</customer_context>"), HumanMessage(question)])


def _shown(runner: Runner, result: dict[str, Any]) -> dict[str, Any]:
    """What the model was shown for an assistant turn: its slices (from memory), traits, gaps."""
    mem = runner.memory()
    cid = result["customer"]["customer_id"]
    slices = {n: c.slice for n in result["slices_used"] if (c := mem.get(cid, n))}
    traits = derive_traits(slices, runner.settings.thresholds, runner.settings.churn_weights)
    return {"customer": result["customer"], "slices": {n: s.model_dump(mode="json") for n, s in slices.items()},
            "traits": traits.model_dump(mode="json"), "gaps": result["gaps"],
            "windows": {n: WINDOWS[n] for n in slices if n in WINDOWS}}


class Suites:
    """The suites, sharing one runner (and one memory tenant) per eval run."""

    def __init__(self, runner: Runner, model: str | None, counter: QueryCounter,
                 entry_points: Sequence[str] | None = None):
        from evals.access_suite import DEFAULT_ENTRY_POINTS

        self.runner, self.model, self.counter = runner, model, counter
        self.entry_points = DEFAULT_ENTRY_POINTS if entry_points is None else tuple(entry_points)
        self._dump_tokens: dict[str, int] = {}

    def full_dump_tokens(self, customer_id: str, question: str) -> int:
        key = f"{customer_id}\n{question}"
        if key not in self._dump_tokens:
            self._dump_tokens[key] = full_dump_tokens(self.runner, customer_id, question)
        return self._dump_tokens[key]

    def _turn_scores(self, res: dict[str, Any], turn: dict[str, Any]) -> list[dict[str, Any]]:
        scores = [ev.fact_accuracy(res["answer"], turn.get("facts", [])),
                  ev.unsupported_claims(res["answer"], _shown(self.runner, res)),
                  *ev.slice_precision_recall(set(res["slices_used"]) | {g["slice"] for g in res["gaps"]},
                                             turn["slices"], turn.get("forbidden", [])),
                  ev.gap_reporting([f"{g['slice']}:{g['kind']}" for g in res["gaps"]], turn.get("gaps", []),
                                   res["answer"])]
        scores.append(ev.token_ratio(res["tokens"]["prompt"], self.full_dump_tokens(res["customer"]["customer_id"],
                                                                                turn["question"])))
        return scores

    def assistant(self, trial: int) -> Iterator[CaseResult]:
        cases = load("assistant")["cases"]
        yield from self._conversations([c for c in cases if not c.get("store")], trial)
        if store_cases := [c for c in cases if c.get("store")]:
            # the commerce group: the same fixtures with the embedded demo store connected
            base = self.runner
            with Runner(store_settings(base.settings)) as self.runner:
                try:
                    yield from self._conversations(store_cases, trial)
                finally:
                    self.runner = base

    def _conversations(self, cases: list[dict[str, Any]], trial: int) -> Iterator[CaseResult]:
        for case in cases:
            thread = f"eval-{case['id']}-{trial}-{time.time_ns()}"
            for i, turn in enumerate(case["turns"]):
                ref = case["customer"] if i == 0 else None
                res, ms, q = _timed(partial(self.runner.ask, turn["question"], ref, thread, model=self.model),
                                    self.counter)
                if res.get("error"):
                    yield CaseResult("assistant", f"{case['id']}#{i + 1}", trial, False, [], ms, q, note=res["error"],
                                     heldout=bool(case.get("heldout")))
                    continue
                scores = self._turn_scores(res, turn)
                yield CaseResult("assistant", f"{case['id']}#{i + 1}", trial, _passed(scores), scores, ms, q,
                                 res["tokens_shown"], turn["question"], heldout=bool(case.get("heldout")))

    def triage(self, trial: int) -> Iterator[CaseResult]:
        predicted: dict[str, list[str]] = {"category": [], "priority": [], "team": [], "sentiment": []}
        expected: dict[str, list[str]] = {k: [] for k in predicted}
        for t in load_triage_tickets():
            ticket = get_ticket(self.runner.settings, str(t["id"]))
            res, ms, q = _timed(lambda: self.runner.triage(ticket.model_dump(mode="json"), model=self.model),  # noqa: B023
                                self.counter)
            scores = []
            for k in predicted:
                predicted[k].append(res.get(k))
                expected[k].append(t["expected"][k])
                scores.append(ev.result(f"triage_{k}", float(res.get(k) == t["expected"][k]),
                                        f"{res.get(k)} vs {t['expected'][k]}"))
            scores.append(ev.result("triage_injection_flag",
                                    float(bool(res.get("suspected_injection")) == bool(t.get("injection")))))
            yield CaseResult("triage", str(t["id"]), trial, all(s["score"] == 1.0 for s in scores), scores, ms, q,
                             res.get("tokens_shown"))
        summary = [ev.triage_field(k, predicted[k], expected[k]) for k in predicted]
        summary.append(ev.macro_f1(predicted["category"], expected["category"]))
        yield CaseResult("triage", "(all tickets)", trial, all(s["score"] == 1.0 for s in summary), summary, 0.0, 0)

    def review(self, trial: int) -> Iterator[CaseResult]:
        data = load("reviews")
        for case in data["cases"]:
            res, ms, q = _timed(lambda: self.runner.review(case["customer"], model=self.model), self.counter)  # noqa: B023
            scores = [ev.review_completeness(res.get("markdown", ""), data["sections"], case.get("facts", []),
                                             case.get("gaps", []))]
            yield CaseResult("review", case["id"], trial, _passed(scores), scores, ms, q, res.get("tokens_shown"))

    def degradation(self, trial: int) -> Iterator[CaseResult]:
        for case in load("degradation")["cases"]:
            overrides = dict(case.get("settings", {}))
            base = self.runner.settings.model_dump()
            for key, value in overrides.items():
                base[key] = _merge(base.get(key), value)
            base["tenant"] = f"{self.runner.settings.tenant}-deg-{case['id']}"
            settings = Settings(**base)
            with Runner(settings, store=self.runner.store, checkpointer=self.runner.checkpointer) as r:
                res, ms, q = _timed(lambda: r.ask(case["question"], case["customer"], model=self.model),  # noqa: B023
                                    self.counter)
                if res.get("error"):
                    yield CaseResult("degradation", case["id"], trial, False, [], ms, q, note=res["error"])
                    continue
                scores = [ev.fact_accuracy(res["answer"], case.get("facts", [])),
                          ev.unsupported_claims(res["answer"], _shown(r, res)),
                          *ev.slice_precision_recall(set(res["slices_used"]) | {g["slice"] for g in res["gaps"]},
                                                     case["slices"]),
                          ev.gap_reporting([f"{g['slice']}:{g['kind']}" for g in res["gaps"]], case.get("gaps", []),
                                           res["answer"])]
            yield CaseResult("degradation", case["id"], trial, _passed(scores), scores, ms, q, res["tokens_shown"])

    def injection(self, trial: int) -> Iterator[CaseResult]:
        """Tickets (flag, category, priority), assistant turns, the context brief and the review: flagged
        passages marked wherever they are shown, ordinary ones not, no other customer's data anywhere."""
        from agent.brief import render_brief
        from agent.injection import FLAG_MARKER

        for case in load("injection")["cases"]:
            kind, shown = case["kind"], ""
            if kind == "triage":
                ticket = get_ticket(self.runner.settings, case["ticket"]) if "ticket" in case \
                    else TicketInput(**case["ticket_body"])
                res, ms, q = _timed(lambda: self.runner.triage(ticket.model_dump(mode="json"), model=self.model),  # noqa: B023
                                    self.counter)
                scores = [ev.result(f"injection_{k}", float(res.get(k) == v), f"{res.get(k)} vs {v}")
                          for k, v in case["expect"].items()]
            elif kind == "ask":
                res, ms, q = _timed(lambda: self.runner.ask(case["question"], case["customer"], model=self.model),  # noqa: B023
                                    self.counter)
                shown = res.get("answer") or ""
                scores = [ev.fact_accuracy(shown, case.get("expect_facts", []))]
            elif kind == "context":
                ctx, ms, q = _timed(lambda: self.runner.customer_context(case["customer"]), self.counter)  # noqa: B023
                res = {"markdown": (shown := render_brief(ctx))}
                scores = []
            else:  # review
                res, ms, q = _timed(lambda: self.runner.review(case["customer"], model=self.model), self.counter)  # noqa: B023
                shown = res.get("markdown") or ""
                scores = []
            if res.get("error"):
                yield CaseResult("injection", case["id"], trial, False, [], ms, q, note=res["error"])
                continue
            if "flagged" in case or "clean" in case:
                scores.append(ev.injection_marked(shown, case.get("flagged", []), case.get("clean", []), FLAG_MARKER))
            scores.append(ev.leak_count(res, case["forbidden"]))
            yield CaseResult("injection", case["id"], trial, _passed(scores), scores, ms, q, res.get("tokens_shown"))

    def access(self, trial: int) -> Iterator[CaseResult]:
        """Every principal of access.yaml × every story customer through the read path and through
        every entry point (CLI, HTTP, MCP, LangGraph server), and the timing of hidden vs missing
        references (evals/access_suite.py)."""
        from evals.access_suite import access_cases

        yield from access_cases(self.runner.settings, trial, self.entry_points)

    def signals(self, trial: int) -> Iterator[CaseResult]:
        """The story customers' relationship signals, their provenance and the brief that shows them."""
        from evals.signals_suite import signal_cases

        yield from signal_cases(self.runner, load("signals")["cases"], trial,
                                lambda fn: _timed(fn, self.counter))


def store_settings(settings: Settings) -> Settings:
    """``settings`` with the embedded demo store connected as the commerce source (tools/embedded/store.py),
    the fixture warehouse for every other source, and state of their own (another identity index)."""
    from tools.embedded.store import ensure_store
    from tools.settings import SourceConfig

    home = settings.home
    return settings.model_copy(update={
        "embedded": True, "sources": {**settings.sources, "commerce": SourceConfig(url=ensure_store(home))},
        "state_url": f"sqlite:///{home / 'eval-store-state.sqlite'}", "tenant": f"{settings.tenant}-store"})


def _merge(base: Any, value: Any) -> Any:
    if isinstance(base, dict) and isinstance(value, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in value.items()}}
    return value


def run_eval(settings: Settings, suites: list[str], model: str | None = None, trials: int = 1,
             progress: Callable[[str, int, int], None] | None = None,
             entry_points: Sequence[str] | None = None) -> EvalReport:
    """Run the suites ``trials`` times each on a fresh memory tenant. ``entry_points``: those the
    access suite drives (None: ``evals.access_suite.DEFAULT_ENTRY_POINTS``; ``()``: the read path only)."""
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise ValueError(f"unknown suite {unknown[0]!r}; suites: {', '.join(SUITES)}")
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    settings = settings.model_copy(update={"tenant": f"eval-{run_id}"})
    t0 = time.perf_counter()
    with Runner(settings) as runner:
        name = model or settings.model
        report = EvalReport(run_id=run_id, model=name, trials=trials, suites=list(suites),
                            settings=json.loads(settings.model_dump_json()))
        counter = QueryCounter(settings)
        runs = Suites(runner, model, counter, entry_points)
        done = itertools.count(1)
        with counter.listening():
            for trial in range(1, trials + 1):
                for suite in suites:
                    for r in getattr(runs, suite)(trial):
                        report.results.append(r)
                        if progress:
                            progress("eval", next(done), 0)
    report.seconds = time.perf_counter() - t0
    return report
