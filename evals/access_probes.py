"""Access-control probes over evals/datasets/access.yaml: what each principal may see of
each story customer, and the checks that find a leak, a missing mask or a missing audit
record — through the context read path and through the other entry points (tickets by id,
threads continued by another principal, events, and the timing of hidden vs missing
references). Used by the `access` eval suite (evals/access_suite.py) and by tests/test_access_probes.py."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tools.access.audit import audit_log
from tools.access.policy import Refused, marker
from tools.access.principal import Principal
from tools.settings import OPTIONAL_SOURCES
from tools.slices import SLICE_MODELS, SLICE_NAMES

if TYPE_CHECKING:
    from agent.runs import Runner

DATASET = yaml.safe_load((Path(__file__).parent / "datasets" / "access.yaml").read_text(encoding="utf-8"))
CUSTOMERS: list[dict[str, Any]] = DATASET["customers"]
REFS = [c["ref"] for c in CUSTOMERS]
TENANT = "probes"


@dataclass(frozen=True)
class Expect:
    """One principal's expectations, from the dataset."""

    role: str
    user: str
    visible: frozenset[str]
    forbidden: frozenset[str]
    masked: dict[str, tuple[str, ...]]
    refresh: bool = False

    @property
    def label(self) -> str:
        return f"{self.role}:{self.user}"

    def principal(self, interface: str = "cli") -> Principal:
        return Principal(TENANT, self.user, self.role, interface=interface)


def expectations() -> list[Expect]:
    out = []
    for p in DATASET["principals"]:
        role, _, user = p["as"].partition(":")
        visible = frozenset(REFS if p["visible"] == "all" else p["visible"])
        assert visible <= set(REFS) and set(p["forbidden"]) <= set(SLICE_NAMES), p["as"]
        out.append(Expect(role, user, visible, frozenset(p["forbidden"]),
                          {k: tuple(v) for k, v in (p.get("masked") or {}).items()}, bool(p.get("refresh"))))
    return out


EXPECT = expectations()


# ------------------------------------------------------------ what may not appear
def concrete(data: Any, path: str, prefix: str = "") -> list[tuple[str, Any]]:
    """(concrete path, value) of every value at ``path`` (``contacts.phone``) in slice JSON."""
    key, _, rest = path.partition(".")
    if not isinstance(data, dict) or key not in data:
        return []
    here = f"{prefix}.{key}" if prefix else key
    value = data[key]
    if not rest:
        return [(here, value)]
    if isinstance(value, list):
        return [x for i, item in enumerate(value) for x in concrete(item, rest, f"{here}[{i}]")]
    return concrete(value, rest, here)


def at(data: Any, path: str) -> Any:
    for key, index in re.findall(r"([A-Za-z_0-9]+)(?:\[(\d+)\])?", path):
        data = data[key]
        if index:
            data = data[int(index)]
    return data


def value_needles(v: Any) -> list[str]:
    if isinstance(v, dict) and v.get("last4"):  # a payment method
        return [f"•{v['last4']}", f'"last4": "{v["last4"]}"']
    if isinstance(v, str):
        return [v]
    if isinstance(v, int | float) and not isinstance(v, bool):
        return [f"{v:,.2f}", json.dumps(v)] + ([f"{v:,.0f}"] if v >= 10_000 else [])
    return []


def strings(data: Any) -> set[str]:
    if isinstance(data, str):
        return {data}
    if isinstance(data, dict):
        return {s for v in data.values() for s in strings(v)}
    if isinstance(data, list):
        return {s for v in data for s in strings(v)}
    return set()


@dataclass
class Baseline:
    """A customer as the admin sees it: what a narrower role must not see."""

    customer_id: str
    name: str
    slices: dict[str, dict[str, Any]]  # slice JSON without provenance


def needles(base: Baseline, exp: Expect) -> dict[str, str]:
    """needle → why it must not appear in what ``exp``'s principal is shown."""
    out: dict[str, str] = {}
    allowed_text = json.dumps({n: d for n, d in base.slices.items() if n not in exp.forbidden}, ensure_ascii=False)
    for name in exp.forbidden & set(base.slices):
        for s in strings(base.slices[name]):
            # text (subjects, bodies, deal names, headlines, addresses), not ids or timestamps that
            # other slices' provenance legitimately shares
            if len(s) >= 8 and (" " in s or "@" in s) and s not in allowed_text and s not in base.name:
                out[s] = f"forbidden {name}"
    # what the role may legitimately see: its slices with the masked values taken out (Massive
    # Dynamic pays yearly: its invoices show the amount its contract value also is)
    legit = json.loads(allowed_text)
    for name, paths in exp.masked.items():
        for path in paths:
            for where, _ in concrete(legit.get(name) or {}, path):
                holder_path, _, key = where.rpartition(".")
                (at(legit[name], holder_path) if holder_path else legit[name])[key] = None
    legit_text = json.dumps(legit, ensure_ascii=False)
    for name, paths in exp.masked.items():
        for path in paths:
            for where, v in concrete(base.slices.get(name) or {}, path):
                found = value_needles(v)
                if not any(n in legit_text for n in found):  # in any of its renderings
                    out.update({n: f"masked {name}.{where}" for n in found})
    return out


def expected_masks(base: Baseline, exp: Expect) -> dict[str, set[str]]:
    return {name: {where for p in paths for where, v in concrete(base.slices.get(name) or {}, p) if v is not None}
            for name, paths in exp.masked.items() if name in base.slices and name not in exp.forbidden}


def check_view(view: dict[str, Any], base: Baseline, exp: Expect, texts: list[str]) -> list[str]:
    """Problems with what a visible customer's context shows ``exp``'s principal (empty: none)."""
    problems = []
    shown = set(view["slices"])
    want = set(base.slices) - exp.forbidden
    if shown != want:
        problems.append(f"slices {sorted(shown ^ want)} differ from the expectation")
    forbidden = {g["slice"] for g in view["gaps"] if g["kind"] == "forbidden"}
    if forbidden != set(exp.forbidden):
        problems.append(f"forbidden gaps {sorted(forbidden)} != {sorted(exp.forbidden)}")
    for name, paths in expected_masks(base, exp).items():
        got = set(view["provenance"][name]["masked_fields"])
        if got != paths:
            problems.append(f"{name} masked {sorted(got)}, expected {sorted(paths)}")
        for path in paths:
            if at(view["slices"][name], path) != marker(exp.role):
                problems.append(f"{name}.{path} is not shown masked")
    for name in set(view["provenance"]) - set(exp.masked):
        if view["provenance"][name]["masked_fields"]:
            problems.append(f"{name} masked although the role may see it")
    text = "\n".join([json.dumps(view, ensure_ascii=False), *texts])
    problems += [f"LEAK {why}: {n!r}" for n, why in needles(base, exp).items() if n in text]
    return problems


def hidden_like_missing(text: str, missing: str, ref: str, missing_ref: str, base: Baseline, exp: Expect) -> bool:
    """A hidden customer's error reads like a missing one's: same sentence, the hidden name nowhere,
    and any suggestions (closest names, as a missing name gets) only of customers the principal sees."""
    text, _, suggested = text.partition(" Did you mean: ")
    visible_names = {c["name"] for c in CUSTOMERS if c["ref"] in exp.visible}
    names = [n.strip() for n in suggested.rstrip("?").split(",") if n.strip()]
    return (text.replace(ref, "X") == missing.partition(" Did you mean: ")[0].replace(missing_ref, "X")
            and base.name not in text and all(n in visible_names for n in names))


def audited(settings, customer_id: str, since, interface: str, exp: Expect) -> list:
    return [x for x in audit_log(settings.state_db_url).query(TENANT, customer_id, since, limit=None)
            if x.interface == interface and x.role == exp.role and x.user_name == exp.user]


def every_slice(exp: Expect) -> list[str]:
    """What "every slice" reads for ``exp``'s principal on the embedded fixtures: the catalogue but the
    slices of an optional source (commerce: not connected there) — except those the role may not
    read, which come back forbidden whatever is connected."""
    return [n for n in SLICE_NAMES if SLICE_MODELS[n].source not in OPTIONAL_SOURCES or n in exp.forbidden]


def check_audit(recs: list, exp: Expect, visible: bool, reads: int = 1) -> list[str]:
    """Every slice read has its record; a row filter adds its row check; a hidden customer only that."""
    rows = 1 if exp.role in ("support_agent", "account_exec") else 0
    if not visible:
        ok = len(recs) == 1 and recs[0].decision == "denied" and recs[0].detail.startswith("row check")
        return [] if ok else [f"audit: {len(recs)} records for a hidden customer"]
    per_slice = Counter(x.slice for x in recs if not (x.detail or "").startswith("row check"))
    problems = []
    if per_slice != Counter({n: reads for n in every_slice(exp)}):
        problems.append(f"audit: records per slice {dict(per_slice)}")
    if sum((x.detail or "").startswith("row check") for x in recs) != rows:
        problems.append("audit: row check missing or repeated")
    if {x.slice for x in recs if x.decision == "denied"} != set(exp.forbidden):
        problems.append("audit: denied records do not match the forbidden slices")
    return problems


# ------------------------------------------------------------ the other entry points
ENTRY = DATASET["entry_points"]


@dataclass
class Probe:
    """One probe of an entry point: problems (``LEAK …`` ones are leaks), audit problems, its time,
    and informational figures (the timing probe's medians)."""

    case: str
    problems: list[str]
    audit: list[str]
    ms: float
    metrics: dict[str, float] = field(default_factory=dict)
    note: str = ""


def _leaks(text: str, base: Baseline, exp: Expect) -> list[str]:
    return [f"LEAK {why}: {n!r}" for n, why in needles(base, exp).items() if n in text]


def _hidden_audit(settings: Any, base: Baseline, since: Any, interface: str, exp: Expect) -> list[str]:
    """A hidden customer's records: at most its row check, nothing read."""
    read = [x for x in audited(settings, base.customer_id, since, interface, exp)
            if not (x.detail or "").startswith("row check")]
    return [f"audit: {len(read)} slice record(s) for a hidden customer"] if read else []


def story_tickets(runner: Runner, baseline: dict[str, Baseline]) -> dict[str, str]:
    """One support-source ticket id per story customer that has one (its requester's customer, as
    the runner's admin sees it): from the open queue, then the labelled triage tickets."""
    from agent.graphs.triage import ticket_customer
    from tools.embedded.triage import load_triage_tickets
    from tools.sources.tickets import TicketNotFound

    scope = runner.request()
    by_id = {b.customer_id: ref for ref, b in baseline.items()}
    found: dict[str, str] = {}
    candidates = [t.id for t in runner.open_tickets(scope=scope)] + [str(t["id"]) for t in load_triage_tickets()]
    for tid in candidates:
        try:
            ticket = runner.ticket(str(tid), scope=scope)
        except TicketNotFound:
            continue
        owner = ticket_customer(scope, ticket)
        if owner is not None and (ref := by_id.get(owner[1].customer_id)) and ref not in found:
            found[ref] = str(tid)
    return found


def ticket_probes(runner: Runner, baseline: dict[str, Baseline], tickets: dict[str, str]) -> Iterator[Probe]:
    """Every principal × every story customer's ticket by id: a visible one is triaged for its own
    customer (no leak in the result), a hidden one raises the not-found error of a missing ticket
    after reading nothing of the customer, and a visible one with another visible customer named
    is not found either. A role denied support.tickets may not look tickets up at all (refused
    before anything is read: a ticket's subject is a support.tickets record)."""
    from tools.sources.base import utcnow
    from tools.sources.tickets import TicketNotFound

    for exp in EXPECT:
        try:
            runner.ticket(ENTRY["missing_ticket"], scope=runner.request(exp.principal("runner")))
            missing = ""
        except (TicketNotFound, Refused) as exc:
            missing = str(exc).replace(ENTRY["missing_ticket"], "X")
        for ref, tid in tickets.items():
            base, since, t0 = baseline[ref], utcnow(), time.perf_counter()
            scope = runner.request(exp.principal("runner"))
            problems: list[str] = []
            try:
                ticket = runner.ticket(tid, scope=scope)
            except Refused:
                if "support.tickets" not in exp.forbidden:
                    problems.append(f"ticket {tid} refused to a role that may read support.tickets")
                recs = audited(runner.settings, base.customer_id, since, "runner", exp)
                audit = [f"audit: {len(recs)} record(s) for a refused lookup"] if recs else []
                yield Probe(f"ticket {exp.label} × {ref} (#{tid})", problems, audit, (time.perf_counter() - t0) * 1000)
                continue
            except TicketNotFound as exc:
                if ref in exp.visible:
                    problems.append(f"visible ticket {tid} not found")
                elif str(exc).replace(tid, "X") != missing:
                    problems.append(f"hidden ticket {tid}: {exc} differs from a missing ticket's error")
                audit = _hidden_audit(runner.settings, base, since, "runner", exp)
            else:
                if ref not in exp.visible or "support.tickets" in exp.forbidden:
                    problems.append(f"ticket {tid} returned to {exp.label}")
                res = runner.triage(ticket.model_dump(mode="json"), scope=scope)
                if res.get("error") or (res.get("customer") or {}).get("name") != base.name:
                    problems.append(f"ticket {tid} triaged as {res.get('error') or res.get('customer')}")
                problems += _leaks(json.dumps(res, ensure_ascii=False, default=str), base, exp)
                recs = audited(runner.settings, base.customer_id, since, "runner", exp)
                audit = [] if {x.slice for x in recs} >= set(res.get("slices_used") or []) else \
                    ["audit: a slice the triage used has no record"]
                other = next((r for r in REFS if r in exp.visible and r != ref), None)
                if other is not None:
                    try:
                        runner.ticket(tid, other, scope=scope)
                        problems.append(f"ticket {tid} of {ref} found as {other}'s")
                    except TicketNotFound as exc:
                        if str(exc).replace(tid, "X") != missing:
                            problems.append(f"ticket {tid} named with {other}: {exc}")
            yield Probe(f"ticket {exp.label} × {ref} (#{tid})", problems, audit, (time.perf_counter() - t0) * 1000)


def thread_probes(runner: Runner, baseline: dict[str, Baseline]) -> Iterator[Probe]:
    """A conversation an admin started about each story customer, continued by every principal: one who
    sees the customer gets an answer about it; one who does not gets exactly what a thread that does
    not exist gives (its customer never named, nothing read, nothing added to the thread)."""
    from tools.sources.base import utcnow

    admin = Principal(TENANT, "root", "admin", interface="runner")
    threads = {}
    for ref in REFS:
        threads[ref] = f"probe-{uuid.uuid4().hex[:12]}"
        runner.ask("What's their billing status?", ref, threads[ref], principal=admin)
    for exp in EXPECT:
        for ref in REFS:
            base, since, t0 = baseline[ref], utcnow(), time.perf_counter()
            scope = runner.request(exp.principal("runner"))
            named = runner.thread_customer(threads[ref], scope)
            res = runner.ask("and their usage?", None, threads[ref], scope=scope)
            problems: list[str] = []
            if ref in exp.visible:
                audit = []
                if named != base.name or res.get("error") or (res.get("customer") or {}).get("name") != base.name:
                    problems.append(f"visible thread: named {named!r}, error {res.get('error')!r}")
                problems += _leaks(json.dumps(res, ensure_ascii=False, default=str), base, exp)
            else:
                gone = runner.ask("and their usage?", None, f"probe-none-{uuid.uuid4().hex[:12]}",
                                  scope=runner.request(exp.principal("runner")))
                same = {k: v for k, v in res.items() if k != "thread_id"} == \
                    {k: v for k, v in gone.items() if k != "thread_id"}
                if named is not None or not same:
                    problems.append(f"hidden thread: named {named!r}, answered {res.get('error')!r}")
                if base.name in json.dumps(res, ensure_ascii=False, default=str) or ref in str(res.get("error")):
                    problems.append("LEAK hidden thread names its customer")
                audit = _hidden_audit(runner.settings, base, since, "runner", exp)
            yield Probe(f"thread {exp.label} × {ref}", problems, audit, (time.perf_counter() - t0) * 1000)


def event_probes(runner: Runner, baseline: dict[str, Baseline]) -> Iterator[Probe]:
    """An event for every story customer sent by every principal: refused before anything is resolved
    for a role without ``refresh``; else refreshed for a customer it sees (every read audited as the
    caller, none as the refresh job) and not found for one it does not."""
    from tools.identity import CustomerNotFound
    from tools.sources.base import utcnow

    for exp in EXPECT:
        for ref in REFS:
            base, since, t0 = baseline[ref], utcnow(), time.perf_counter()
            problems: list[str] = []
            try:
                runner.event("ticket.created", ref, principal=exp.principal("http"))
                outcome = "refreshed"
            except Refused:
                outcome = "refused"
            except CustomerNotFound:
                outcome = "not found"
            want = "refused" if not exp.refresh else "refreshed" if ref in exp.visible else "not found"
            if outcome != want:
                problems.append(f"event: {outcome}, expected {want}")
            recs = [x for x in audit_log(runner.settings.state_db_url).query(TENANT, base.customer_id, since,
                                                                              limit=None)]
            mine = audited(runner.settings, base.customer_id, since, "http", exp)
            audit = []
            if len(mine) != len(recs):
                audit.append(f"audit: {len(recs) - len(mine)} record(s) not under the caller")
            if want == "refreshed" and not mine:
                audit.append("audit: the refresh has no record")
            if want == "refused" and recs:
                audit.append("audit: a refused event read something")
            yield Probe(f"event {exp.label} × {ref}", problems, audit, (time.perf_counter() - t0) * 1000)


def concrete_ref(runner: Runner, ref: str) -> str:
    """A timing pair's reference: ``billing-id-of:REF`` is REF's billing id (``billing:cus_…``)."""
    if ref.startswith("billing-id-of:"):
        return "billing:" + runner.resolve(ref.partition(":")[2])[0].anchors["billing"]
    return ref
