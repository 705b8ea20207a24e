"""One table of an entity (plus its joins and filters), and the SQL of its fields.

Column references are quoted identifiers under the part's alias (``t`` for the main
table, a join's ``alias`` for a joined one); ``expr`` fields are SQL text placed as
written (mapping files are trusted configuration — user input never reaches them), so
they may name columns bare or as ``t.col`` / ``alias.col``; ``concat`` fields compile
to ``||`` with NULL parts left out, on every dialect.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import String, and_, cast, false, func, literal, literal_column, null, table
from sqlalchemy.sql import ColumnElement, FromClause

from tools.mapping.conversions import INTEGER_CONVERSIONS, SQL_TYPES, MappingError
from tools.mapping.fields import FieldSpec


@dataclass(frozen=True)
class EntityPart:
    """One table (plus joins) that rows of an entity come from."""

    table: str
    fields: dict[str, FieldSpec]
    joins: tuple[dict[str, Any], ...] = ()
    where: dict[str, Any] = field(default_factory=dict)
    alias: str = "t"
    #: Fields the reader may ask for that this mapping leaves out: read as NULL.
    optional: frozenset[str] = frozenset()
    _converters: dict[tuple[str, ...], RowConverter] = field(default_factory=dict, init=False, compare=False,
                                                             repr=False)

    def converter(self, names: Sequence[str]) -> RowConverter:
        """The conversion of a raw row of ``names`` into a row of Python values, built once per
        list of names (see :class:`RowConverter`)."""
        key = tuple(names)
        conv = self._converters.get(key)
        if conv is None:
            conv = self._converters[key] = RowConverter(self, key)
        return conv

    @property
    def names(self) -> list[str]:
        """Every field a row of this part has: the mapped ones, then the optional ones left out (null)."""
        return [*self.fields, *sorted(self.optional - set(self.fields))]

    def maps(self, name: str) -> bool:
        """Whether the field is mapped (not an optional field left out, read as NULL)."""
        return name in self.fields

    def _table(self, name: str, alias: str) -> FromClause:
        return table(name).alias(alias)

    @property
    def from_clause(self) -> FromClause:
        base = self._table(self.table, self.alias)
        for j in self.joins:
            other = self._table(j["table"], j["alias"])
            conds = [
                literal_column(f'"{self.alias}"."{local}"') == literal_column(f'"{j["alias"]}"."{remote}"')
                for local, remote in j["on"].items()
            ]
            base = base.outerjoin(other, and_(*conds))
        return base

    def col(self, name: str) -> ColumnElement[Any]:
        """SQL expression for a mapped field (raw source representation); NULL for an optional
        field the mapping leaves out."""
        spec = self.fields.get(name)
        if spec is None:
            if name in self.optional:
                return null()
            raise MappingError(f"field {name!r} is not mapped for table {self.table!r}")
        return self._col_expr(spec)

    def _col_expr(self, spec: FieldSpec) -> ColumnElement[Any]:
        type_ = SQL_TYPES["int" if spec.convert in INTEGER_CONVERSIONS else spec.type]
        if spec.constant is not None:
            return literal(spec.constant)
        if spec.expr is not None:
            return literal_column(f"({spec.expr})", type_=type_())
        if spec.concat:
            return self._concat(spec)
        if spec.coalesce:
            return func.coalesce(*(self._ref(c, type_) for c in spec.coalesce))
        assert spec.column is not None
        return self._ref(spec.column, type_)

    def _concat(self, spec: FieldSpec) -> ColumnElement[Any]:
        """``a || ' ' || b`` with NULL parts as '', trimmed; all-empty is NULL (portable: no concat())."""
        pieces: list[ColumnElement[Any]] = [
            literal(p.text, String()) if p.literal else func.coalesce(cast(self._ref(p.text, String), String), "")
            for p in spec.concat
        ]
        joined = pieces[0]
        for p in pieces[1:]:
            joined = joined + p
        return func.nullif(func.trim(joined), "")

    def _ref(self, ref: str, type_: Any) -> ColumnElement[Any]:
        alias, _, name = ref.rpartition(".")
        return literal_column(f'"{alias or self.alias}"."{name}"', type_=type_())

    def eq(self, name: str, value: Any) -> ColumnElement[bool]:
        """``field == value`` with the value in the source representation."""
        return self.in_(name, [value])

    def in_(self, name: str, values: Iterable[Any]) -> ColumnElement[bool]:
        """``field IN values``; values that cannot exist in the source never match (nor
        does any value of an optional field the mapping leaves out)."""
        if not self.maps(name) and name in self.optional:
            return false()
        converted = [raw for _, raw in self.fields[name].in_source(values)]
        if not converted:
            return false()
        expr = self.col(name)
        return expr == converted[0] if len(converted) == 1 else expr.in_(converted)

    def within(self, name: str, after: Any = None, until: Any = None) -> list[ColumnElement[bool]]:
        """``after < field <= until`` (either bound optional), bounds given as Python values;
        no bound at all on an optional field the mapping leaves out."""
        if not self.maps(name) and name in self.optional:
            return []
        spec, expr = self.fields[name], self.col(name)
        conds = []
        if after is not None:
            conds.append(expr > spec.to_source(after))
        if until is not None:
            conds.append(expr <= spec.to_source(until))
        return conds

    def filters(self) -> list[ColumnElement[bool]]:
        """The part's always-applied ``where`` conditions."""
        return self.conditions(self.where)

    def conditions(self, where: dict[str, Any]) -> list[ColumnElement[bool]]:
        """``{field: value}`` (raw source values; a list is IN, null is IS NULL) as conditions;
        the fields are declared ones (the loader checks)."""
        out: list[ColumnElement[bool]] = []
        for name, value in where.items():
            expr = self.col(name)
            if isinstance(value, list):
                out.append(expr.in_(value))
            elif value is None:
                out.append(expr.is_(None))
            elif isinstance(value, bool):
                # Booleans land as 0/1, true/false or NULL depending on the connector.
                out.append(expr == value if value else (expr == value) | expr.is_(None))
            else:
                out.append(expr == value)
        return out


class RowConverter:
    """A raw row of ``names`` → ``{name: Python value}``, as ``FieldSpec.to_python`` converts each
    value, compiled into one function: no per-value lookup of the field, its type or conversion,
    values the driver already returns as the declared type kept as they are. A row that fails is
    converted again field by field, so its error (``RowError``, the field and value named) and its
    nested values' problems are exactly the field-by-field conversion's.

    ``nested``: whether a field is ``type: json`` (its problems are collected in a list)."""

    __slots__ = ("convert", "names", "nested")

    def __init__(self, part: EntityPart, names: tuple[str, ...]):
        self.names = names
        specs = [part.fields.get(n) for n in names]
        self.nested = any(s is not None and s.type == "json" for s in specs)

        def slow(raw: Sequence[Any], problems: list[str] | None) -> dict[str, Any]:
            if problems:
                del problems[:]
            return {n: None if s is None else s.to_python(v, problems)  # None: an optional field left out
                    for n, s, v in zip(names, specs, raw, strict=True)}

        ns: dict[str, Any] = {"_slow": slow}
        variables = [f"v{i}" for i in range(len(names))]
        values = ", ".join(f"{n!r}: {'None' if s is None else s.python_expr(v, ns)}"
                           for n, s, v in zip(names, specs, variables, strict=True))
        unpack = f"        {', '.join(variables)}, = raw\n" if names else "        if len(raw): raise ValueError\n"
        source = (f"def convert(raw, problems):\n    try:\n{unpack}        return {{{values}}}\n"
                  "    except Exception:\n        return _slow(raw, problems)\n")
        exec(compile(source, f"<row converter {part.table}>", "exec"), ns)  # noqa: S102 - names are repr()'d
        self.convert: Callable[[Sequence[Any], list[str] | None], dict[str, Any]] = ns["convert"]
