"""Mapped fields: where a slice field's value comes from and how it is converted.

A field is a column (``column``), several columns tried in order (``coalesce``), a
constant, a SQL expression (``expr``) or a portable concatenation (``concat``); its raw
value is converted in Python (``type``, ``convert``, ``values``) — see docs/MAPPINGS.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from tools.mapping.conversions import CONVERSIONS, TYPE_CASTS, RowError

#: Declared types whose raw value is kept as it is when the driver already returns that Python type
#: (checked by class, so ``True`` is no ``int``): the cast would return an equal value.
_KEPT_AS_IS = {"str": "str", "int": "int", "float": "float", "decimal": "float"}

#: Set by fault injection (``corrupt``): rewrites raw rows before conversion.
ROW_TAMPER: ContextVar[Callable[[str, Sequence[str], Sequence[Any]], Sequence[Any]] | None] = \
    ContextVar("custctx_row_tamper", default=None)
#: Set by the reader around one read: counts rows and nested values skipped as malformed.
SKIP_TALLY: ContextVar[list[int] | None] = ContextVar("custctx_skip_tally", default=None)
#: What a conversion raises on a value it cannot read.
_UNREADABLE = (TypeError, ValueError, OverflowError, OSError, AttributeError, json.JSONDecodeError)


def count_skipped(n: int = 1) -> None:
    """Add ``n`` rows or values skipped as malformed to the tally of the read in progress."""
    tally = SKIP_TALLY.get()
    if tally is not None and n:
        tally[0] += n


@dataclass(frozen=True)
class ConcatPart:
    """One piece of a ``concat`` field: a column reference or literal text."""

    text: str
    literal: bool = False


@dataclass(frozen=True)
class FieldSpec:
    """One mapped field: where it comes from and how it is converted."""

    name: str
    column: str | None = None  # "col" or "alias.col"
    type: str = "str"
    convert: str | None = None
    json_path: str | None = None  # for type json: key path inside the JSON text
    # value map applied after conversion: raw source value (any scalar YAML key, null
    # included; "*" for every other value) -> Python value
    values: dict[Hashable, Any] | None = None
    coalesce: tuple[str, ...] = ()  # several "alias.col" tried in order
    constant: Any = None
    required: bool = False
    expr: str | None = None  # a SQL expression over the entity's columns (trusted configuration)
    # portable concatenation: column references and literal text, NULL parts left out
    concat: tuple[ConcatPart, ...] = ()

    def to_python(self, raw: Any, problems: list[str] | None = None) -> Any:
        """Convert a raw source value; raises RowError on garbage.

        A nested value (``type: json``) that cannot be read — text that does not parse, a
        path through something that is not an object, an object where a value belongs —
        drops only itself when ``problems`` collects it and the field is not required: it
        becomes null and its reason is appended to ``problems``. A list element that fails
        is left out of its list, likewise one entry each. Without ``problems`` (or for a
        required field) it raises RowError, so nothing is dropped uncounted.
        """
        if raw is None:
            if self.required:
                raise RowError(f"{self.name} is missing")
            return self.values.get(None) if self.values and None in self.values else None
        if self.type == "json":
            return self._nested(raw, problems)
        try:
            v = CONVERSIONS[self.convert][0](raw) if self.convert else TYPE_CASTS[self.type](raw)
        except _UNREADABLE as exc:
            raise RowError(f"{self.name}: cannot read {raw!r} as {self.convert or self.type}") from exc
        return self._mapped(v)

    def python_expr(self, var: str, ns: dict[str, Any]) -> str:
        """A Python expression converting the raw value in ``var`` as :meth:`to_python` does
        (``problems`` names the list nested values' problems go to), its callables put in ``ns``:
        compiled once per statement (:func:`tools.mapping.part.EntityPart.converter`), so a
        row costs no lookups of the field's type, conversion or value map."""
        me = f"_f_{var}"
        ns[me] = self
        if self.type == "json":
            return f"{me}.to_python({var}, problems)"
        if self.required:
            ns[f"_missing_{var}"] = self._missing
            none = f"_missing_{var}()"
        elif self.values and None in self.values:
            ns[f"_none_{var}"] = self.values[None]
            none = f"_none_{var}"
        else:
            none = "None"
        cast = f"_cast_{var}"
        ns[cast] = CONVERSIONS[self.convert][0] if self.convert else TYPE_CASTS[self.type]
        kept = None if self.convert else _KEPT_AS_IS.get(self.type)
        value = f"({var} if {var}.__class__ is {kept} else {cast}({var}))" if kept else f"{cast}({var})"
        if self.values is not None:
            value = f"{me}._mapped({value})"
        return f"({none} if {var} is None else {value})"

    def _missing(self) -> Any:
        raise RowError(f"{self.name} is missing")

    def _mapped(self, v: Any) -> Any:
        if self.values is None:
            return v
        return self.values.get(v, self.values.get("*", v))

    def _nested(self, raw: Any, problems: list[str] | None) -> Any:
        """A JSON field: the value at ``path``, a scalar or a list of scalars, converted."""
        try:
            v = json.loads(raw) if isinstance(raw, str) else raw
            for part in (self.json_path or "").split("."):
                if part and v is not None:
                    if not isinstance(v, dict):
                        raise TypeError(f"{type(v).__name__} where an object with {part!r} belongs")
                    v = v.get(part)
            if v is None:  # absent, not malformed: a key the record does not have
                return None
            if not isinstance(v, list):
                return self._mapped(self._element(v))
        except _UNREADABLE as exc:
            reason = f"{self.name}: cannot read {raw!r} as json{f' at {self.json_path}' if self.json_path else ''}"
            if problems is None or self.required:
                raise RowError(reason) from exc
            problems.append(f"{reason} ({exc})")
            return None
        out = []
        for i, item in enumerate(v):
            try:
                out.append(self._mapped(self._element(item)))
            except _UNREADABLE as exc:
                reason = f"{self.name}[{i}]: cannot read {item!r} as {self.convert or 'a scalar'}"
                if problems is None:
                    raise RowError(reason) from exc
                problems.append(reason)
        return out

    def _element(self, v: Any) -> Any:
        """One JSON scalar, converted: an object or a list (or null in a list) has the wrong shape."""
        if v is None or isinstance(v, dict | list):
            raise TypeError(f"{'null' if v is None else type(v).__name__} where a single value belongs")
        return CONVERSIONS[self.convert][0](v) if self.convert else v

    def in_source(self, values: Iterable[Any]) -> list[tuple[Any, Any]]:
        """(value, its source representation) for each value that can exist in the source
        (a non-numeric id against an integer column cannot, and never matches)."""
        out = []
        for v in values:
            try:
                out.append((v, self.to_source(v)))
            except (TypeError, ValueError, OverflowError):
                continue
        return out

    def to_source(self, value: Any) -> Any:
        """Convert a Python value into the source representation (for filters)."""
        if self.values is not None:
            inverse = {v: k for k, v in self.values.items() if k not in (None, "*")}
            value = inverse.get(value, value)
        if self.convert:
            return CONVERSIONS[self.convert][1](value)
        return value
