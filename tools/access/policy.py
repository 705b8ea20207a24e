"""The access policy: which slices, fields and customers each role may read.

A policy is a YAML file (``tools/access/policies/default.yaml`` unless ``CUSTCTX_POLICY`` names
another; the format is in docs/ACCESS.md). Per role:

- ``slices``: ``allow`` / ``deny`` lists of slice names, source names or ``*``; a slice
  the role may not read becomes a ``forbidden`` gap;
- ``mask``: per slice, field paths whose values are withheld (``contacts.phone`` = the
  phone of every contact); a masked value is set to None in the slice and its path
  recorded in ``provenance.masked_fields``, and every rendering shows the mask marker;
- ``customers``: ``all``, or a row filter on the customer's CRM account: ``require``
  (field → value(s), all must hold; ``{user}`` / ``{tenant}`` are the principal's),
  ``exclude`` (field → value(s), none may hold) and ``without_crm_record`` (allow / deny);
- ``audit_log``: whether the role may read the audit log;
- ``refresh``: whether the role may trigger a refresh of long-term memory (``POST /v1/events``,
  ``custctx event`` / ``refresh``); the refresh then reads as that principal.

A slice's provenance may name records of another slice (``billing.status`` is built from the
open invoices and the last charge, ``support.summary`` from the tickets): a role the policy
denies that other slice does not see those record ids either (:func:`hide_shared_records`).

Everything here is pure: no source, memory or audit access (``tools/access/gate.py`` does that).
A policy is validated when loaded — an unknown slice, a field path that does not exist
or a required field under ``mask`` is an error, never a silent leak.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel

from tools.slices import SLICE_MODELS, CrmAccount, Slice

DEFAULT_POLICY = "default.yaml"
MASK_TEXT = "•••• masked (role {role})"


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the file and the problem."""


class UnknownRole(PolicyError):
    """A principal whose role the policy does not define."""


class Refused(PermissionError):
    """The principal's role may not do this; the message names the role and the permission."""


REFRESH_REFUSED = ("the {role} role may not trigger a refresh of long-term memory (the access policy's `refresh` "
                   "permission; docs/ACCESS.md)")


@dataclass(frozen=True)
class RowFilter:
    """Which customers a role sees, judged on the customer's CRM account."""

    require: dict[str, tuple[str, ...]] = field(default_factory=dict)
    exclude: dict[str, tuple[str, ...]] = field(default_factory=dict)
    without_crm_record: Literal["allow", "deny"] = "allow"

    def describe(self) -> str:
        parts = [f"{k} = {' or '.join(v)}" for k, v in self.require.items()]
        parts += [f"{k} not {' or '.join(v)}" for k, v in self.exclude.items()]
        return "; ".join(parts) + f"; no CRM record: {self.without_crm_record}"


@dataclass(frozen=True)
class RolePolicy:
    """One role's rights."""

    name: str
    description: str
    allow: tuple[str, ...]
    deny: tuple[str, ...]
    mask: dict[str, tuple[str, ...]]
    rows: RowFilter | None  # None: every customer
    audit_log: bool = False
    refresh: bool = False  # may trigger a refresh of long-term memory
    _allowed: dict[str, bool] = field(default_factory=dict, repr=False, compare=False)  # judged once per slice

    def allows(self, slice_name: str) -> bool:
        got = self._allowed.get(slice_name)
        if got is None:
            got = self._allowed[slice_name] = _matches(slice_name, self.allow) and not _matches(slice_name, self.deny)
        return got

    def readable(self) -> list[str]:
        return [n for n in SLICE_MODELS if self.allows(n)]

    def sees(self, account: CrmAccount | None, user: str, tenant: str) -> tuple[bool, str]:
        """Whether the row filter lets this customer through, and why (for the audit record)."""
        if self.rows is None:
            return True, "every customer"
        if account is None:
            ok = self.rows.without_crm_record == "allow"
            return ok, f"no CRM record: {self.rows.without_crm_record}"
        for fname, wanted in self.rows.require.items():
            values = {w.format(user=user, tenant=tenant).strip().casefold() for w in wanted}
            if _norm(getattr(account, fname)) not in values:
                return False, f"{fname} is not {' or '.join(sorted(values))}"
        for fname, unwanted in self.rows.exclude.items():
            if _norm(getattr(account, fname)) in {_norm(u) for u in unwanted}:
                return False, f"{fname} is {getattr(account, fname)}"
        return True, f"row filter passed ({self.rows.describe()})"

    def require_refresh(self) -> None:
        """Raises ``Refused`` unless this role may trigger a refresh."""
        if not self.refresh:
            raise Refused(REFRESH_REFUSED.format(role=self.name))


@dataclass(frozen=True)
class Policy:
    source: str
    roles: dict[str, RolePolicy]

    def role(self, name: str) -> RolePolicy:
        try:
            return self.roles[name]
        except KeyError:
            raise UnknownRole(f"unknown role {name!r}; the policy ({self.source}) defines: "
                              f"{', '.join(self.roles)}") from None


def _norm(v: Any) -> str | None:
    return None if v is None else str(v).strip().casefold()


def _matches(slice_name: str, patterns: tuple[str, ...]) -> bool:
    source = SLICE_MODELS[slice_name].source
    return any(p in ("*", slice_name, source, slice_name.split(".")[0]) for p in patterns)


# ------------------------------------------------------------------ loading
@cache
def load_policy(path: str | None = None) -> Policy:
    """The policy at ``path`` (a YAML file), or the packaged default; validated, cached."""
    if path:
        p = Path(path).expanduser()
        try:
            text, where = p.read_text(encoding="utf-8"), str(p)
        except OSError as exc:
            raise PolicyError(f"cannot read the access policy {p}: {exc.strerror or exc}") from None
    else:
        text = resources.files("tools.access").joinpath("policies", DEFAULT_POLICY).read_text(encoding="utf-8")
        where = f"tools/access/policies/{DEFAULT_POLICY}"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{where}: not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_policy(data, where)


def parse_policy(data: Any, where: str = "policy") -> Policy:
    """A policy from its parsed YAML; raises PolicyError naming the first problem."""
    if not isinstance(data, dict) or not isinstance(data.get("roles"), dict) or not data["roles"]:
        raise PolicyError(f"{where}: needs a `roles:` mapping with at least one role")
    if set(data) - {"version", "roles"}:
        raise PolicyError(f"{where}: unknown top-level key(s) {', '.join(sorted(set(data) - {'version', 'roles'}))}")
    roles = {str(name): _role(str(name), spec or {}, where) for name, spec in data["roles"].items()}
    return Policy(source=where, roles=roles)


def _names(value: Any, where: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else list(value or [])
    known = set(SLICE_MODELS) | {m.source for m in SLICE_MODELS.values()} | {"*"} \
        | {n.split(".")[0] for n in SLICE_MODELS}
    for item in items:
        if item not in known:
            raise PolicyError(f"{where}: unknown slice or source {item!r}")
    return tuple(items)


def _role(name: str, spec: dict[str, Any], where: str) -> RolePolicy:
    at = f"{where}: role {name}"
    unknown = set(spec) - {"description", "slices", "mask", "customers", "audit_log", "refresh"}
    if unknown:
        raise PolicyError(f"{at}: unknown key(s) {', '.join(sorted(unknown))}")
    slices = spec.get("slices") or {}
    mask: dict[str, tuple[str, ...]] = {}
    for slice_name, paths in (spec.get("mask") or {}).items():
        if slice_name not in SLICE_MODELS:
            raise PolicyError(f"{at}: mask names unknown slice {slice_name!r}")
        mask[slice_name] = tuple(paths or ())
        for path in mask[slice_name]:
            _check_path(SLICE_MODELS[slice_name], path, f"{at}: mask {slice_name}")
    return RolePolicy(name=name, description=str(spec.get("description") or ""),
                      allow=_names(slices.get("allow", ["*"]), f"{at}: slices.allow"),
                      deny=_names(slices.get("deny", []), f"{at}: slices.deny"),
                      mask=mask, rows=_rows(spec.get("customers", "all"), at),
                      audit_log=_flag(spec, "audit_log", at), refresh=_flag(spec, "refresh", at))


def _flag(spec: dict[str, Any], key: str, at: str) -> bool:
    value = spec.get(key, False)
    if not isinstance(value, bool):
        raise PolicyError(f"{at}: {key} must be true or false, not {value!r}")
    return value


def _rows(spec: Any, at: str) -> RowFilter | None:
    if spec in (None, "all"):
        return None
    if not isinstance(spec, dict) or set(spec) - {"require", "exclude", "without_crm_record"}:
        raise PolicyError(f"{at}: customers must be `all` or a mapping of require / exclude / without_crm_record")

    def conds(key: str) -> dict[str, tuple[str, ...]]:
        out = {}
        for fname, value in (spec.get(key) or {}).items():
            if fname not in CrmAccount.model_fields or fname == "provenance":
                raise PolicyError(f"{at}: customers.{key} names {fname!r}, not a field of crm.account")
            out[fname] = tuple(str(v) for v in (value if isinstance(value, list) else [value]))
        return out

    missing = spec.get("without_crm_record", "deny" if spec.get("require") else "allow")
    if missing not in ("allow", "deny"):
        raise PolicyError(f"{at}: customers.without_crm_record must be allow or deny")
    return RowFilter(require=conds("require"), exclude=conds("exclude"), without_crm_record=missing)


def _optional(annotation: Any) -> tuple[bool, Any]:
    """(accepts None, the annotation without None)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return True, rest[0] if len(rest) == 1 else annotation
    return False, annotation


def _check_path(model: type[BaseModel], path: str, at: str) -> None:
    parts = path.split(".")
    current: Any = model
    for i, part in enumerate(parts):
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields or part == "provenance":
            raise PolicyError(f"{at}: no field {path!r}")
        annotation = fields[part].annotation
        if i == len(parts) - 1:
            if not _optional(annotation)[0]:
                raise PolicyError(f"{at}: {path!r} is a required field and cannot be masked; deny the slice instead")
            return
        inner = _optional(annotation)[1]
        if typing.get_origin(inner) is list:
            inner = typing.get_args(inner)[0]
        current = inner


# ------------------------------------------------------------------ masking
_STEP = re.compile(r"([A-Za-z_0-9]+)(?:\[(\d+)\])?")

#: Record ids a slice's provenance names that are another slice's records: (slice, other slice) → a
#: test that keeps an id as the slice's own. ``billing.status`` reads the Stripe customer
#: (``cus_``), subscription (``sub_``) and payment method (``pm_`` / ``card_`` / ``src_``) and also
#: the open invoices and the last succeeded charge — the invoice history; any id not known to be
#: its own counts as the invoice history (fail closed). ``support.summary`` is built from the
#: tickets themselves: every id is a ``support.tickets`` record.
SHARED_RECORDS: dict[tuple[str, str], Callable[[str], bool]] = {
    ("billing.status", "billing.invoices"): lambda rid: rid.startswith(("cus_", "sub_", "pm_", "card_", "src_")),
    ("support.summary", "support.tickets"): lambda rid: False,
}


def hide_shared_records(s: Slice, role: RolePolicy) -> Slice:
    """``s`` without the record ids of slices ``role`` may not read (a copy; ``s`` is untouched):
    ids are an inference channel — invoice and charge ids in billing.status's provenance would show
    the invoice history to a role denied billing.invoices."""
    tests = [own for (name, other), own in SHARED_RECORDS.items() if name == s.name and not role.allows(other)]
    ids = s.provenance.record_ids
    kept = [i for i in ids if all(own(i) for own in tests)]
    if len(kept) == len(ids):
        return s
    return s.model_copy(update={"provenance": s.provenance.model_copy(update={"record_ids": kept})})


def mask_slice(s: Slice, paths: tuple[str, ...], role: str) -> Slice:
    """A copy of ``s`` with the values at ``paths`` withheld (None), their concrete paths
    (``contacts[0].phone``) in ``provenance.masked_fields``. Values already None stay None
    and are not listed: there is nothing to hide."""
    if not paths:
        return s
    masked: list[str] = []
    out = s
    for path in paths:
        out = _mask(out, path.split("."), "", masked)
    if not masked:
        return s
    return out.model_copy(update={"provenance": out.provenance.model_copy(
        update={"masked_fields": masked, "masked_for": role})})


def _mask(node: Any, parts: list[str], prefix: str, masked: list[str]) -> Any:
    """``node`` (a model) with the values at ``parts`` withheld: copied along the path, never
    changed in place (a policy's paths are optional fields of models, checked when it loads, so
    None is valid there and nothing needs validating again)."""
    key, rest = parts[0], parts[1:]
    if not isinstance(node, BaseModel) or key not in type(node).model_fields:
        return node
    here = f"{prefix}.{key}" if prefix else key
    child = getattr(node, key)
    if not rest:
        if child is None:
            return node
        masked.append(here)
        return node.model_copy(update={key: None})
    if isinstance(child, list):
        items = [_mask(item, rest, f"{here}[{i}]", masked) for i, item in enumerate(child)]
        new: Any = items if any(a is not b for a, b in zip(items, child, strict=True)) else child
    else:
        new = _mask(child, rest, here, masked)
    return node if new is child else node.model_copy(update={key: new})


def _walk(data: dict[str, Any], path: str) -> tuple[dict[str, Any] | None, str]:
    """The dict holding the last step of a concrete path, and that key."""
    node: Any = data
    steps = _STEP.findall(path)
    for key, index in steps[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
        if index and isinstance(node, list):
            node = node[int(index)] if int(index) < len(node) else None
    key, index = steps[-1]
    return (node if isinstance(node, dict) else None), key


def marker(role: str | None) -> str:
    """What a withheld value is shown as."""
    return MASK_TEXT.format(role=role or "?")


def show_masks(data: dict[str, Any]) -> dict[str, Any]:
    """A slice's JSON with the mask marker written where a value was withheld (in place)."""
    prov = data.get("provenance") or {}
    for path in prov.get("masked_fields") or []:
        holder, key = _walk(data, path)
        if holder is not None:
            holder[key] = marker(prov.get("masked_for"))
    return data


def hide_masks(data: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`show_masks`: markers back to None, so the slice parses (in place)."""
    for path in (data.get("provenance") or {}).get("masked_fields") or []:
        holder, key = _walk(data, path)
        if holder is not None:
            holder[key] = None
    return data


def masked_marker(s: Slice, path: str) -> str | None:
    """The marker to show for ``path`` (e.g. ``payment_method``) when it was masked, else None."""
    p = s.provenance
    hit = any(m == path or re.sub(r"\[\d+\]", "", m) == path for m in p.masked_fields)
    return marker(p.masked_for) if hit else None
