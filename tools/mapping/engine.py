"""Declarative source mappings: source table/column → slice field.

A mapping (YAML, one per source flavour, in ``tools/mapping/`` or any path) names
*entities* (``account``, ``contact``, ``charge``, ...). Each entity is one table (or
the union of several ``parts``), optional left joins, always-applied filters and
fields. A field is a column plus a type and an optional conversion, e.g.::

    amount: {column: amount, type: int, convert: cents}
    created: {column: created, type: int, convert: epoch_s}
    owner: {column: o.email, convert: email_local_part}

Source modules ask for entity fields by their mapped names only, so another schema
(HubSpot → Salesforce) is another YAML file, not code. See docs/MAPPINGS.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sqlalchemy import (
    and_,
    bindparam,
    false,
    func,
    literal,
    literal_column,
    select,
    table,
    type_coerce,
)
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement, FromClause, Select
from sqlalchemy.types import NullType

from tools.mapping.conversions import (
    CONVERSIONS,
    INTEGER_CONVERSIONS,
    SQL_TYPES,
    TYPE_CASTS,
    MappingError,
    RowError,
)

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


@dataclass(frozen=True)
class EntityPart:
    """One table (plus joins) that rows of an entity come from."""

    table: str
    fields: dict[str, FieldSpec]
    joins: tuple[dict[str, Any], ...] = ()
    where: dict[str, Any] = field(default_factory=dict)
    alias: str = "t"

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
        """SQL expression for a mapped field (raw source representation)."""
        spec = self.fields.get(name)
        if spec is None:
            raise MappingError(f"field {name!r} is not mapped for table {self.table!r}")
        return self._col_expr(spec)

    def _col_expr(self, spec: FieldSpec) -> ColumnElement[Any]:
        type_ = SQL_TYPES["int" if spec.convert in INTEGER_CONVERSIONS else spec.type]
        if spec.constant is not None:
            return literal(spec.constant)
        if spec.coalesce:
            return func.coalesce(*(self._ref(c, type_) for c in spec.coalesce))
        assert spec.column is not None
        return self._ref(spec.column, type_)

    def _ref(self, ref: str, type_: Any) -> ColumnElement[Any]:
        alias, _, name = ref.rpartition(".")
        return literal_column(f'"{alias or self.alias}"."{name}"', type_=type_())

    def eq(self, name: str, value: Any) -> ColumnElement[bool]:
        """``field == value`` with the value in the source representation."""
        return self.in_(name, [value])

    def in_(self, name: str, values: Iterable[Any]) -> ColumnElement[bool]:
        """``field IN values``; values that cannot exist in the source never match."""
        converted = [raw for _, raw in self.fields[name].in_source(values)]
        if not converted:
            return false()
        expr = self.col(name)
        return expr == converted[0] if len(converted) == 1 else expr.in_(converted)

    def within(self, name: str, after: Any = None, until: Any = None) -> list[ColumnElement[bool]]:
        """``after < field <= until`` (either bound optional), bounds given as Python values."""
        spec, expr = self.fields[name], self.col(name)
        conds = []
        if after is not None:
            conds.append(expr > spec.to_source(after))
        if until is not None:
            conds.append(expr <= spec.to_source(until))
        return conds

    def filters(self) -> list[ColumnElement[bool]]:
        out: list[ColumnElement[bool]] = []
        for name, value in self.where.items():
            spec = self.fields.get(name) or FieldSpec(name=name, column=name,
                                                      type="bool" if isinstance(value, bool) else "str")
            expr = self._col_expr(spec)
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


@dataclass(frozen=True)
class Entity:
    """A logical record type of a source (``account``, ``charge``, ...)."""

    name: str
    parts: tuple[EntityPart, ...]
    key: str = "id"

    @property
    def part(self) -> EntityPart:
        if len(self.parts) != 1:
            raise MappingError(f"entity {self.name!r} has {len(self.parts)} parts; use rows()")
        return self.parts[0]

    def col(self, name: str) -> ColumnElement[Any]:
        return self.part.col(name)

    def has(self, name: str) -> bool:
        return all(name in p.fields for p in self.parts)

    def spec(self, name: str) -> FieldSpec:
        return self.parts[0].fields[name]

    def value(self, name: str, python_value: Any) -> Any:
        """A Python value in the field's source representation (for filters)."""
        return self.spec(name).to_source(python_value)

    def select(
        self, fields: Sequence[str] | None = None, part: EntityPart | None = None
    ) -> Select[*tuple[Any, ...]]:
        p = part or self.part
        names = list(fields or p.fields)
        # Raw values, converted in Python by FieldSpec.to_python: driver result
        # processors would fail a whole read on one garbage value or on a date
        # column that is really a timestamp.
        stmt = select(*(type_coerce(p.col(n), NullType()).label(n) for n in names)).select_from(p.from_clause)
        for cond in p.filters():
            stmt = stmt.where(cond)
        return stmt

    def rows(
        self,
        conn: Connection,
        where: Callable[[EntityPart], Iterable[ColumnElement[bool]]] | None = None,
        fields: Sequence[str] | None = None,
        order_by: str | None = None,
        descending: bool = True,
        limit: int | None = None,
    ) -> Fetched:
        """Fetch converted rows; malformed rows are skipped and counted, not fatal."""
        fetched = Fetched()
        for p in self.parts:
            stmt = self.select(fields, p)
            for cond in (where(p) if where else ()):
                stmt = stmt.where(cond)
            if order_by:  # NULL sorts lowest on every dialect (as :func:`order_rows` does)
                c = p.col(order_by)
                stmt = stmt.order_by(c.desc().nulls_last() if descending else c.asc().nulls_first())
            if limit:
                stmt = stmt.limit(limit)
            names = list(fields or p.fields)
            tamper = ROW_TAMPER.get()
            for raw in conn.execute(stmt):
                fetched.add(p, names, tamper(p.table, names, raw) if tamper else raw)
        if order_by and len(self.parts) > 1:
            order_rows(fetched.rows, order_by, descending)
            if limit:
                fetched.rows = fetched.rows[:limit]
        return fetched

    def rows_by(
        self,
        conn: Connection,
        field: str,
        values: Iterable[Any],
        where: Callable[[EntityPart], Iterable[ColumnElement[bool]]] | None = None,
        fields: Sequence[str] | None = None,
    ) -> dict[Any, Fetched]:
        """Converted rows grouped by the value of ``field`` they match: one query per
        :data:`IN_CHUNK` values (and part) instead of one per value — a bulk read.

        ``values`` are Python values, matched as :meth:`EntityPart.in_` matches them (in
        the source representation); every value gets an entry, empty when nothing matched.
        Malformed rows are skipped and counted against the value whose row they are.
        """
        wanted = list(dict.fromkeys(values))
        out: dict[Any, Fetched] = {v: Fetched() for v in wanted}
        tamper = ROW_TAMPER.get()
        # Counted against each customer by the read that takes the rows (SourceReader.lookup):
        # a bulk load serves many customers, and one customer's read may load them itself.
        token = SKIP_TALLY.set(None)
        try:
            self._rows_by(conn, field, wanted, out, tamper, where, fields)
        finally:
            SKIP_TALLY.reset(token)
        return out

    def _rows_by(self, conn: Connection, field: str, wanted: list[Any], out: dict[Any, Fetched],
                 tamper: Callable[[str, Sequence[str], Sequence[Any]], Sequence[Any]] | None,
                 where: Callable[[EntityPart], Iterable[ColumnElement[bool]]] | None,
                 fields: Sequence[str] | None) -> None:
        for p in self.parts:
            spec, names = p.fields[field], list(fields or p.fields)
            by_raw: dict[str, list[Any]] = {}  # raw keys compared as text, as the driver returns them
            raws = []
            for v, raw in spec.in_source(wanted):
                if str(raw) not in by_raw:
                    raws.append(raw)
                by_raw.setdefault(str(raw), []).append(v)
            for i in range(0, len(raws), IN_CHUNK):
                chunk = raws[i:i + IN_CHUNK]
                stmt = self.select(names, p).add_columns(type_coerce(p.col(field), NullType()).label("_key_"))
                stmt = stmt.where(p.col(field).in_(chunk))
                for cond in (where(p) if where else ()):
                    stmt = stmt.where(cond)
                for raw in conn.execute(stmt):
                    for v in by_raw.get(str(raw[-1]), ()):
                        row = raw[:-1]
                        out[v].add(p, names, tamper(p.table, names, row) if tamper else row)

    def lookup_rows(
        self,
        conn: Connection,
        field: str,
        values: Sequence[Any],
        where: Sequence[tuple[str, Any]] = (),
        window: tuple[str, Any, Any] | None = None,
        fields: Sequence[str] | None = None,
        order_by: str | None = None,
        descending: bool = True,
        limit: int | None = None,
    ) -> Fetched:
        """What :meth:`rows` returns for ``field IN values AND where-field = value AND
        after < window-field <= until`` — through a statement built and compiled once per
        shape (entity, fields, number of values, ...) and dialect, run with new parameters:
        a point lookup pays for the query, not for building SQL."""
        fetched = Fetched()
        tamper = ROW_TAMPER.get()
        for i, p in enumerate(self.parts):
            spec = p.fields[field]
            keys = [raw for _, raw in spec.in_source(values)]
            if not keys:
                continue
            wname, after, until = window or ("", None, None)
            shape = ("lookup", id(self), i, field, len(keys), tuple(k for k, _ in where), wname,
                     after is not None, until is not None, tuple(fields or ()), order_by, descending, limit)
            names = list(fields or p.fields)
            sql, bind = prepared(conn, shape, partial(self._statement, p, names, field, len(keys), where, window,
                                                      order_by, descending, limit))
            params = {f"k{j}": v for j, v in enumerate(keys)}
            params.update({f"w{j}": p.fields[k].to_source(v) for j, (k, v) in enumerate(where)})
            if after is not None:
                params["after"] = p.fields[wname].to_source(after)
            if until is not None:
                params["until"] = p.fields[wname].to_source(until)
            result = conn.exec_driver_sql(sql, bind(params))
            for raw in result:
                fetched.add(p, names, tamper(p.table, names, raw) if tamper else raw)
        if len(self.parts) > 1:
            if order_by:
                order_rows(fetched.rows, order_by, descending)
            if limit:
                fetched.rows = fetched.rows[:limit]
        return fetched

    def _statement(self, p: EntityPart, names: list[str], field: str, n: int, where: Sequence[tuple[str, Any]],
                   window: tuple[str, Any, Any] | None, order_by: str | None, descending: bool,
                   limit: int | None) -> Select[*tuple[Any, ...]]:
        stmt = self.select(names, p).where(p.col(field).in_([bindparam(f"k{j}") for j in range(n)]))
        for j, (k, _) in enumerate(where):
            stmt = stmt.where(p.col(k) == bindparam(f"w{j}"))
        if window and window[1] is not None:
            stmt = stmt.where(p.col(window[0]) > bindparam("after"))
        if window and window[2] is not None:
            stmt = stmt.where(p.col(window[0]) <= bindparam("until"))
        if order_by:
            c = p.col(order_by)
            stmt = stmt.order_by(c.desc().nulls_last() if descending else c.asc().nulls_first())
        if limit:
            stmt = stmt.limit(limit)
        return stmt


Bind = Callable[[dict[str, Any]], Any]
#: Compiled statements, by shape (which includes the dialect): a few dozen in all.
_PREPARED: dict[tuple, tuple[str, Bind]] = {}


def prepared(conn: Connection, shape: tuple, build: Callable[[], Any]) -> tuple[str, Bind]:
    """The SQL text of ``build()`` compiled once per ``shape`` and the connection's dialect,
    and a function turning ``{bind name: value}`` into the driver's parameters (the bound
    types' own conversions applied, the statement's own parameters such as LIMIT kept).

    Run with ``conn.exec_driver_sql(sql, bind(values))``: building and compiling a statement
    costs far more than running a point lookup, so hot reads do it once."""
    key = (conn.dialect.name, *shape)
    hit = _PREPARED.get(key)
    if hit is not None:
        return hit
    compiled = build().compile(dialect=conn.dialect)
    processors = dict(compiled._bind_processors)  # noqa: SLF001 - the types' own parameter conversions
    positions = compiled.positiontup

    def bind(values: dict[str, Any]) -> Any:
        params = compiled.construct_params(values)
        params = {k: (processors[k](v) if k in processors and v is not None else v) for k, v in params.items()}
        return tuple(params[k] for k in positions) if positions is not None else params

    _PREPARED[key] = (compiled.string, bind)
    return _PREPARED[key]

#: Values per ``IN (...)`` list of a bulk read.
IN_CHUNK = 500


def order_rows(rows: list[dict[str, Any]], order_by: str, descending: bool = True,
               limit: int | None = None) -> list[dict[str, Any]]:
    """Sort converted rows as SQL orders them here (NULL lowest), in place; keep ``limit``."""
    rows.sort(key=lambda r: (r.get(order_by) is not None, r.get(order_by)), reverse=descending)
    if limit is not None:
        del rows[limit:]
    return rows


@dataclass
class Fetched:
    """Converted rows plus the count of malformed rows and values skipped.

    ``skipped`` counts one per row left out and one per nested value (or list element)
    dropped from a row that was kept; ``skipped_raw`` holds each skip's raw row, so a
    bulk read can tell whose it was."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    skipped_raw: list[dict[str, Any]] = field(default_factory=list)

    def add(self, part: EntityPart, names: Sequence[str], raw: Sequence[Any]) -> None:
        problems: list[str] = []
        try:
            row = {n: part.fields[n].to_python(v, problems) for n, v in zip(names, raw, strict=True)}
        except RowError as exc:
            self.skip(str(exc), dict(zip(names, raw, strict=True)))
            return
        self.rows.append(row)
        for reason in problems:
            self.skip(reason, dict(zip(names, raw, strict=True)))

    def skip(self, reason: str, raw: dict[str, Any]) -> None:
        """Count one malformed row or value (in this result and the read's tally)."""
        self.skipped += 1
        self.skipped_raw.append(raw)
        count_skipped()
        if len(self.errors) < 5:
            self.errors.append(reason)


@dataclass(frozen=True)
class IdentityKey:
    """A key that identifies the customer a source node belongs to."""

    entity: str
    anchor: str  # field holding the node id (the source's customer record id)
    field: str
    kind: str  # domain | email | crm_id | name | ...
    derive_domain: bool = False


@dataclass(frozen=True)
class Mapping:
    """A parsed mapping file."""

    name: str
    source: str
    system: str
    entities: dict[str, Entity]
    anchor: tuple[str, str]  # (entity, field) of this source's customer record id
    identity: tuple[IdentityKey, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)

    def entity(self, name: str) -> Entity:
        try:
            return self.entities[name]
        except KeyError:
            raise MappingError(f"mapping {self.name!r} has no entity {name!r}") from None
