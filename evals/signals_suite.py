"""The signals suite: the story customers' relationship signals (evals/datasets/signals.yaml,
docs/SIGNALS.md) through the read path, and the context brief that shows them.

Each case scores ``signal_accuracy``: the share of its expectations met (signal values,
absent signals, the relationship risks exactly, provenance slices with record ids, brief
facts, health). The offline gate asks for 1.0 on every case.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from agent.runs import Runner
from evals import evaluators as ev


def expectations(case: dict[str, Any], traits: Any, brief: str) -> tuple[int, list[str]]:
    """(expectations checked, the ones that failed) for one case."""
    got = {s.name: s for s in traits.signals}
    checks: list[tuple[bool, str]] = []
    for name, value in (case.get("signals") or {}).items():
        have = got[name].value if name in got else None
        checks.append((have == value, f"{name}: {have!r} vs {value!r}"))
    for name in case.get("absent") or []:
        checks.append((name not in got, f"{name} present: {got[name].value if name in got else ''!r}"))
    if "risks" in case:
        risks = [r.name for r in traits.relationship_risks]
        checks.append((risks == case["risks"], f"risks {risks} vs {case['risks']}"))
    for name, slices in (case.get("sources") or {}).items():
        src = {s.slice: s.record_ids for s in got[name].sources} if name in got else {}
        for sl in slices:
            checks.append((bool(src.get(sl)), f"{name}: no record ids from {sl}"))
    for fact in case.get("brief") or []:
        checks.append((fact in brief, f"brief lacks {fact!r}"))
    if "health" in case:
        checks.append((traits.health == case["health"], f"health {traits.health} vs {case['health']}"))
    return len(checks), [msg for ok, msg in checks if not ok]


def signal_cases(runner: Runner, cases: list[dict[str, Any]], trial: int,
                 timed: Callable[[Callable[[], Any]], tuple[Any, float, int]]) -> Iterator[Any]:
    """One result per case (evals.runner.CaseResult); ``timed(fn)``: fn's result, its latency in
    milliseconds and the source queries it made."""
    from agent.brief import render_brief
    from evals.runner import CaseResult

    for case in cases:
        ctx, ms, q = timed(lambda: runner.customer_context(case["customer"]))  # noqa: B023
        brief = render_brief(ctx)
        n, failed = expectations(case, ctx.traits, brief)
        score = ev.result("signal_accuracy", (n - len(failed)) / n if n else 1.0, "; ".join(failed))
        yield CaseResult("signals", case["id"], trial, not failed, [score], ms, q)
