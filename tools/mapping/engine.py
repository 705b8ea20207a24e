"""Declarative source mappings: source table/column → slice field.

A mapping (YAML, one per source flavour, in ``tools/mapping/`` or any path) names
*entities* (``account``, ``contact``, ``charge``, ...). Each entity is one table (or
the union of several ``parts``), optional left joins, always-applied filters, fields,
custom fields and per-customer aggregates. A field is a column, an expression or a
concatenation plus a type and an optional conversion, e.g.::

    amount: {column: amount, type: int, convert: cents}
    created: {column: created, type: int, convert: epoch_s}
    owner: {column: o.email, convert: email_local_part}
    name: {concat: [first_name, " ", last_name]}

Source modules ask for entity fields by their mapped names only, so another schema
(HubSpot → Salesforce) is another YAML file, not code. See docs/MAPPINGS.md. The
fields live in ``fields.py``, a table's SQL in ``part.py``, aggregates in ``aggregates.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import bindparam, select, type_coerce
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement, Select
from sqlalchemy.types import NullType

from tools.mapping.aggregates import Aggregate
from tools.mapping.conversions import MappingError, RowError
from tools.mapping.driver import Bind, compiled_for, fetch_all, prepared
from tools.mapping.fields import ROW_TAMPER, SKIP_TALLY, FieldSpec, count_skipped
from tools.mapping.part import EntityPart, RowConverter

__all__ = ["IN_CHUNK", "Bind", "ROW_TAMPER", "SKIP_TALLY", "Aggregate", "Entity", "EntityPart", "Fetched", "FieldSpec",
           "CUSTOM", "IdentityKey", "Mapping", "compiled_for", "count_skipped", "fetch_all", "order_rows",
           "prepared"]


#: Prefix of a custom field's name in a row (``custom: {tier: ...}`` is read as ``custom.tier``).
CUSTOM = "custom."


@dataclass(frozen=True)
class Entity:
    """A logical record type of a source (``account``, ``charge``, ...)."""

    name: str
    parts: tuple[EntityPart, ...]
    key: str = "id"
    aggregates: dict[str, Aggregate] = field(default_factory=dict)
    #: Statements built from this entity, by their shape: set-based ones (``tools.sources.batch``),
    #: built once per kind of lookup and part, their keys an expanding parameter, so SQLAlchemy
    #: compiles each once (its compiled cache) and no ``select()`` is rebuilt per chunk; and
    #: :meth:`lookup_rows`' compiled point lookups (shapes starting ``"point lookup"``).
    statements: dict[Hashable, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    @property
    def part(self) -> EntityPart:
        if len(self.parts) != 1:
            raise MappingError(f"entity {self.name!r} has {len(self.parts)} parts; use rows()")
        return self.parts[0]

    def col(self, name: str) -> ColumnElement[Any]:
        return self.part.col(name)

    def has(self, name: str) -> bool:
        """Whether every part maps the field (an entity left out of the mapping maps nothing)."""
        return bool(self.parts) and all(name in p.fields for p in self.parts)

    def spec(self, name: str) -> FieldSpec:
        return self.parts[0].fields[name]

    def value(self, name: str, python_value: Any) -> Any:
        """A Python value in the field's source representation (for filters)."""
        return self.spec(name).to_source(python_value)

    def aggregate(self, conn: Connection, name: str, keys: Iterable[Any]) -> dict[Any, Any]:
        """The declared aggregate ``name`` for each key: ``{key: value}`` (see ``aggregates.py``)."""
        try:
            agg = self.aggregates[name]
        except KeyError:
            raise MappingError(f"entity {self.name!r} declares no aggregate {name!r}") from None
        return agg.compute(conn, self.parts, keys)

    def custom(self, row: dict[str, Any]) -> dict[str, Any]:
        """A row's custom fields (``custom:`` in the mapping), by their declared names."""
        return {k[len(CUSTOM):]: _json_safe(v) for k, v in row.items() if k.startswith(CUSTOM)}

    def select(
        self, fields: Sequence[str] | None = None, part: EntityPart | None = None
    ) -> Select[*tuple[Any, ...]]:
        p = part or self.part
        names = list(fields or p.names)
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
            if order_by and p.maps(order_by):  # NULL sorts lowest on every dialect (as :func:`order_rows` does)
                c = p.col(order_by)
                stmt = stmt.order_by(c.desc().nulls_last() if descending else c.asc().nulls_first())
            if limit:
                stmt = stmt.limit(limit)
            names = list(fields or p.names)
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
            spec, names = p.fields[field], list(fields or p.names)
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
            if not keys or not all(p.maps(k) for k, _ in where):  # an optional field left out never matches
                continue
            # an optional window or order field the mapping leaves out bounds and orders nothing
            wname, after, until = window if window and p.maps(window[0]) else ("", None, None)
            part_window = (wname, after, until) if wname else None
            part_order = order_by if order_by and p.maps(order_by) else None
            shape = ("point lookup", conn.dialect.name, i, field, len(keys), tuple(k for k, _ in where), wname,
                     after is not None, until is not None, tuple(fields or ()), part_order, descending, limit)
            hit = self.statements.get(shape)  # the common case: no statement built, nothing looked up
            if hit is None:
                names = list(fields or p.names)
                stmt = self._statement(p, names, field, len(keys), where, part_window, part_order, descending, limit)
                hit = self.statements[shape] = (*compiled_for(conn, stmt), p.converter(names), names)
            sql, bind, conv, names = hit
            params = {f"k{j}": v for j, v in enumerate(keys)}
            params.update({f"w{j}": p.fields[k].to_source(v) for j, (k, v) in enumerate(where)})
            if after is not None:
                params["after"] = p.fields[wname].to_source(after)
            if until is not None:
                params["until"] = p.fields[wname].to_source(until)
            add = fetched.add_converted
            for raw in fetch_all(conn, sql, bind(params)):
                add(conv, tamper(p.table, names, raw) if tamper else raw)
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


#: Values per ``IN (...)`` list of a bulk read.
IN_CHUNK = 500


def order_rows(rows: list[dict[str, Any]], order_by: str, descending: bool = True,
               limit: int | None = None) -> list[dict[str, Any]]:
    """Sort converted rows as SQL orders them here (NULL lowest), in place; keep ``limit``."""
    if len(rows) > 1:
        keys: list[Any] = [r.get(order_by) for r in rows]
        if None in keys:
            rows.sort(key=lambda r: (r.get(order_by) is not None, r.get(order_by)), reverse=descending)
        else:  # the same order (stable, equal keys kept as they came), without a tuple per row
            order = sorted(range(len(rows)), key=lambda i: keys[i], reverse=descending)
            rows[:] = [rows[i] for i in order]
    if limit is not None:
        del rows[limit:]
    return rows


@dataclass(slots=True)
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
        self.add_converted(part.converter(names), raw)

    def add_converted(self, conv: RowConverter, raw: Sequence[Any]) -> None:
        """Add one raw row through ``conv`` (``EntityPart.converter``: built once per statement)."""
        problems: list[str] | None = [] if conv.nested else None
        try:
            row = conv.convert(raw, problems)
        except RowError as exc:
            self.skip(str(exc), dict(zip(conv.names, raw, strict=True)))
            return
        self.rows.append(row)
        for reason in problems or ():
            self.skip(reason, dict(zip(conv.names, raw, strict=True)))

    def skip(self, reason: str, raw: dict[str, Any]) -> None:
        """Count one malformed row or value (in this result and the read's tally)."""
        self.skipped += 1
        self.skipped_raw.append(raw)
        count_skipped()
        if len(self.errors) < 5:
            self.errors.append(reason)


def _json_safe(v: Any) -> Any:
    """A custom value as it reads back from memory (JSON): dates as ISO text."""
    return v.isoformat() if isinstance(v, date | datetime) else v


@dataclass(frozen=True)
class IdentityKey:
    """A key that identifies the customer a source node belongs to."""

    entity: str
    anchor: str  # field holding the node id (the source's customer record id)
    field: str
    kind: str  # domain | email | crm_id | name | user_id | anonymous_id | support_user_id | postcode | ...
    derive_domain: bool = False
    #: The value is a company's domain even when several records share it: they are one account
    #: (without it a domain shared by several records of one source links none of them).
    account_domain: bool = False
    #: ``anchor`` holds a person's record id (an application user, a support end user), not the
    #: source's customer record: the person rides with the one customer its keys point to.
    person: bool = False


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
    #: Entities the source's reader can do without that this mapping leaves out: they have no rows.
    optional_entities: frozenset[str] = frozenset()

    def entity(self, name: str) -> Entity:
        try:
            return self.entities[name]
        except KeyError:
            if name in self.optional_entities:
                return Entity(name=name, parts=())
            raise MappingError(f"mapping {self.name!r} has no entity {name!r}") from None
