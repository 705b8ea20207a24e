"""Access-control probes over evals/datasets/access.yaml: what each principal may see of
each story customer, and the checks that find a leak, a missing mask or a missing audit
record. Used by the `access` eval suite and by tests/test_access_probes.py."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tools.access.audit import audit_log
from tools.access.policy import marker
from tools.access.principal import Principal
from tools.slices import SLICE_NAMES

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
                          {k: tuple(v) for k, v in (p.get("masked") or {}).items()}))
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


def check_audit(recs: list, exp: Expect, visible: bool, reads: int = 1) -> list[str]:
    """Every slice read has its record; a row filter adds its row check; a hidden customer only that."""
    rows = 1 if exp.role in ("support_agent", "account_exec") else 0
    if not visible:
        ok = len(recs) == 1 and recs[0].decision == "denied" and recs[0].detail.startswith("row check")
        return [] if ok else [f"audit: {len(recs)} records for a hidden customer"]
    per_slice = Counter(x.slice for x in recs if not (x.detail or "").startswith("row check"))
    problems = []
    if per_slice != Counter({n: reads for n in SLICE_NAMES}):
        problems.append(f"audit: records per slice {dict(per_slice)}")
    if sum((x.detail or "").startswith("row check") for x in recs) != rows:
        problems.append("audit: row check missing or repeated")
    if {x.slice for x in recs if x.decision == "denied"} != set(exp.forbidden):
        problems.append("audit: denied records do not match the forbidden slices")
    return problems
