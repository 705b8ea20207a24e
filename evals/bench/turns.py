"""The assistant's turns: prompt tokens beside one call with the full-context dump, on the fixture
customers and on the large customer, and the graph's time outside source queries."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import event

from evals.bench.common import Progress, Row, percentile
from tools.embedded.large import LargeCustomer
from tools.settings import SOURCE_NAMES, Settings
from tools.sources.registry import engine_for


class SqlClock:
    """Time spent inside SQL statements on the source warehouses (all threads)."""

    def __init__(self, settings: Settings):
        self.engines = {engine_for(u) for s in SOURCE_NAMES if (u := settings.source(s).url)}
        self.ms = 0.0
        self._started: dict[int, float] = {}
        self._lock = threading.Lock()

    def _before(self, *_: Any) -> None:
        self._started[threading.get_ident()] = time.perf_counter()

    def _after(self, *_: Any) -> None:
        t0 = self._started.pop(threading.get_ident(), None)
        if t0 is not None:
            with self._lock:
                self.ms += (time.perf_counter() - t0) * 1000

    @contextmanager
    def listening(self) -> Iterator[SqlClock]:
        for e in self.engines:
            event.listen(e, "before_cursor_execute", self._before)
            event.listen(e, "after_cursor_execute", self._after)
        try:
            yield self
        finally:
            for e in self.engines:
                event.remove(e, "before_cursor_execute", self._before)
                event.remove(e, "after_cursor_execute", self._after)


@dataclass
class TokenSample:
    """One assistant question: what the turn sent vs. one call with the whole context."""

    kind: str
    shown: int  # prompt tokens of every model call of the turn (the result's tokens.prompt)
    full: int  # one call: instructions, the customer's whole context, the question
    compact: int  # the same call with the context as compact JSON (no indentation)


def compact_dump_tokens(runner: Any, customer_id: str, question: str) -> int:
    """``full_dump_tokens`` with the context block as compact JSON: the dump without the
    indentation ``safe_json`` gives it (the tool results the turn sends are compact)."""
    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_core.messages.utils import count_tokens_approximately

    from agent.prompting import UNTRUSTED_NOTE, context_block, render

    c = runner.customer_context(customer_id)
    block = context_block({"customer_id": c.customer_id, "name": c.name, "as_of": c.as_of.isoformat()}, c.slices,
                          c.gaps, c.traits.model_dump(mode="json"))
    text = json.dumps(json.loads(block), ensure_ascii=False, separators=(",", ":"))
    text = text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    system = render("assistant", customer=c.name, untrusted_note=UNTRUSTED_NOTE, budget_note="")
    return count_tokens_approximately([SystemMessage(system), HumanMessage(
        f"<customer_context>\n{text}\n</customer_context>"), HumanMessage(question)])


def token_sample(runner: Any, res: dict[str, Any], kind: str, question: str) -> TokenSample:
    """An answered turn's prompt tokens beside the full dump's, for the same customer and question."""
    from evals.runner import full_dump_tokens

    cid = res["customer"]["customer_id"]
    return TokenSample(kind, res["tokens"]["prompt"], full_dump_tokens(runner, cid, question),
                       compact_dump_tokens(runner, cid, question))


def token_row(measure: str, samples: Sequence[TokenSample], goal: tuple[float, str], checked: str,
              problems: Sequence[str], figures: dict[str, Any]) -> Row:
    """The token row: medians, the total-over-total ratio, the ratio by question kind; met when
    the ratio is within the goal's share and no answer had a problem (``checked`` says how
    many answers passed, the goal's text what they must do)."""
    goal_share, goal_check = goal
    shown, full = [s.shown for s in samples], [s.full for s in samples]
    ratio = sum(shown) / sum(full) if sum(full) else 0.0
    compact = sum(s.compact for s in samples)
    by_kind = {}
    for kind in dict.fromkeys(s.kind for s in samples):
        mine = [s for s in samples if s.kind == kind]
        k_shown, k_full = sum(s.shown for s in mine), sum(s.full for s in mine)
        by_kind[kind] = {"questions": len(mine), "shown_total": k_shown, "full_total": k_full,
                         "ratio": round(k_shown / k_full, 3) if k_full else None}
    kinds = ", ".join(f"{k} {v['ratio']:.2f}" for k, v in by_kind.items() if v["ratio"] is not None)
    return Row(measure,
               f"{percentile(shown, 50):,.0f} (median of {len(samples)} questions, every model call of the turn; "
               f"by kind: {kinds}; {checked})",
               f"{percentile(full, 50):,.0f} (median, one call with the full-context dump; as compact JSON: "
               f"ratio {sum(shown) / compact if compact else 0:.3f})",
               round(ratio, 3), f"≤ {goal_share:.0%} of the full dump, {goal_check}",
               bool(samples) and ratio <= goal_share and not problems,
               {"questions": len(samples), "shown_total": sum(shown), "full_total": sum(full),
                "full_total_compact": compact, "ratio_compact": round(sum(shown) / compact, 3) if compact else None,
                "median_shown": percentile(shown, 50), "median_full": percentile(full, 50), "by_kind": by_kind,
                "problems": list(problems)[:20], **figures})


def bench_cases(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The assistant eval's cases about customers of the benchmark's warehouse: not the commerce
    ones (``store: true``), which ask about the embedded demo store the warehouse does not have."""
    return [c for c in data["cases"] if not c.get("store")]


def measure_turns(settings: Settings, progress: Progress | None) -> list[Row]:
    """Every assistant eval question about a customer of the benchmark's warehouse (not the
    commerce ones, asked of the demo store), one turn each on a thread of its own: the prompt tokens of
    all the turn's model calls vs. one call that dumps the customer's full context, whether the
    answer states the eval's facts, and the time outside source queries."""
    from agent.runs import Runner
    from evals import evaluators as ev
    from evals.runner import load

    data = load("assistant")
    kinds = {tuple(v): k for k, v in data["slice_sets"].items()}
    samples: list[TokenSample] = []
    problems: list[str] = []
    turn_ms: list[float] = []
    outside_ms: list[float] = []
    cases = bench_cases(data)
    with Runner(settings) as runner, SqlClock(settings).listening() as sql:
        for i, case in enumerate(cases, 1):
            for n, turn in enumerate(case["turns"], 1):
                thread = f"bench-{case['id']}-{n}"
                before, t0 = sql.ms, time.perf_counter()
                res = runner.ask(turn["question"], case["customer"], thread)
                ms = (time.perf_counter() - t0) * 1000
                if res.get("error"):
                    problems.append(f"{case['id']}#{n}: error {res['error']}")
                    continue
                turn_ms.append(ms)
                outside_ms.append(ms - (sql.ms - before))
                samples.append(token_sample(runner, res, kinds.get(tuple(turn["slices"]), "other"), turn["question"]))
                facts = ev.fact_accuracy(res["answer"], turn.get("facts", []))
                if facts["score"] < 1.0:
                    problems.append(f"{case['id']}#{n}: {facts['comment']}")
            if progress:
                progress("assistant questions", i, len(cases))
    asked = sum(len(c["turns"]) for c in cases)
    return [
        token_row("Tokens per assistant question (fixture customers)", samples, (0.35, "eval facts correct"),
                  f"eval facts correct in {asked - len(problems)}/{asked}", problems, {"asked": asked}),
        Row("Graph overhead per assistant turn", f"p50 {percentile(outside_ms, 50):.1f} ms outside source queries",
            f"turn p50 {percentile(turn_ms, 50):.1f} ms", None, "informational", None,
            {"turns": len(turn_ms), "outside_p50_ms": percentile(outside_ms, 50),
             "outside_p99_ms": percentile(outside_ms, 99), "turn_p50_ms": percentile(turn_ms, 50),
             "turn_p99_ms": percentile(turn_ms, 99)}),
    ]


def measure_large(settings: Settings, spec: LargeCustomer, progress: Progress | None) -> Row:
    """The large customer, one question of each kind: the turn's prompt tokens vs. the full dump;
    each answer must cite every slice it read, state the expected facts and have no error."""
    from agent.runs import Runner
    from evals.bench.large import answer_problems, describe, dump_by_slice, large_questions

    questions = large_questions(spec)
    samples: list[TokenSample] = []
    problems: list[str] = []
    with Runner(settings) as runner:
        dump = dump_by_slice(runner.customer_context(spec.domain).slices)
        for i, q in enumerate(questions, 1):
            res = runner.ask(q.question, spec.domain, f"bench-large-{q.kind}")
            problems += answer_problems(res, q)
            if not res.get("error"):
                samples.append(token_sample(runner, res, q.kind, q.question))
            if progress:
                progress("large-customer questions", i, len(questions))
    failed = {p.split(":")[0] for p in problems}  # a problem starts with its question's kind
    return token_row(f"Tokens per question, large customer ({describe(spec)})", samples,
                     (0.10, "answers cite the slices read, no error"),
                     f"answers citing every slice read, with the expected facts: "
                     f"{len(questions) - len(failed)}/{len(questions)}", problems,
                     {"customer": spec.domain, "sizes": asdict(spec), "dump_tokens_by_slice": dump})
