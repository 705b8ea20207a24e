"""Checking a mapping against the database it maps: ``custctx mappings check``.

A mapping that loads can still be wrong for the warehouse it is pointed at: a column
that is not there, an expression the database refuses, values the conversions cannot
read, or an identity key whose values many customers share (every shopper's
``example.com``), which would merge them into one customer. :func:`check_mapping` finds
each of these and says it in one line naming the file and the key::

    stripe.yaml: entities.customer.fields.name: column "nme" not in table customer (did you mean name?)

It introspects the tables (SQLAlchemy's inspector), runs each entity's select with a
``LIMIT`` (each field alone when the entity's fails, to name the culprit), converts a
sample of rows through the fields' conversions, counts in SQL the identity key values
held by more than ``shared_limit`` customers, and lists (as notes) the fields and
entities the source's reader could use that the mapping leaves out.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import distinct, func, inspect, literal, select, type_coerce
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql import ColumnElement
from sqlalchemy.types import NullType

from tools.mapping.conversions import RowError
from tools.mapping.engine import Entity, EntityPart, FieldSpec, IdentityKey, Mapping
from tools.mapping.loader import MAPPINGS_DIR
from tools.mapping.schema import SOURCES

#: Sample rows per entity converted through the field conversions.
SAMPLE_ROWS = 20
#: An identity key value held by more customers (anchors) than this is shared, not identifying.
SHARED_KEY_ANCHORS = 10
#: Shared values named per key (the most shared first).
SHARED_SHOWN = 3
#: Mail domains identity never derives an account domain from, so many people may share them
#: (identity imports this list: ``tools.identity_graph.FREEMAIL``).
FREE_MAIL_DOMAINS = frozenset({
    "gmail.com", "googlemail.com", "yahoo.com", "hotmail.com", "outlook.com", "live.com", "icloud.com",
    "me.com", "aol.com", "proton.me", "protonmail.com", "gmx.com", "gmx.de", "mail.com", "yandex.ru",
    "qq.com", "163.com",
})


@dataclass(frozen=True)
class Problem:
    """One thing wrong (``error``) or worth knowing (``note``) about a mapping, at a key of its file."""

    file: str
    key: str
    message: str
    level: Literal["error", "note"] = "error"

    @property
    def line(self) -> str:
        """``file: key: message``."""
        return ": ".join(p for p in (self.file, self.key, self.message) if p)


@dataclass
class MappingReport:
    """What :func:`check_mapping` found for one source."""

    source: str
    file: str
    system: str | None = None
    entities: int = 0
    fields: int = 0
    sampled: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def notes(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "note"]


def mapping_file(ref: str) -> Path:
    """The file a mapping reference names: a built-in name (``hubspot``) or a path."""
    path = Path(ref)
    return MAPPINGS_DIR / f"{ref}.yaml" if not path.suffix else path


def file_label(ref: str) -> str:
    """How problems name the file: ``stripe.yaml`` for a built-in mapping, the path as configured otherwise."""
    return mapping_file(ref).name if not Path(ref).suffix else ref


def check_mapping(mapping: Mapping, engine: Engine, file: str, *, sample: int = SAMPLE_ROWS,
                  shared_limit: int = SHARED_KEY_ANCHORS,
                  free_domains: Collection[str] = FREE_MAIL_DOMAINS) -> MappingReport:
    """Check ``mapping`` against the database behind ``engine``.

    Args:
        mapping: the loaded mapping.
        engine: the source's database.
        file: how problems name the mapping file (see :func:`file_label`).
        sample: rows per entity converted through the field conversions.
        shared_limit: an identity key value held by more customers than this is refused
            (for a domain: unless the key says ``account_domain: true``).
        free_domains: mail domains identity never derives an account domain from (gmail.com, …).

    Raises:
        SQLAlchemyError: the database cannot be reached at all.
    """
    report = MappingReport(source=mapping.source, file=file, system=mapping.system)
    insp = inspect(engine)
    tables = _Tables(insp, engine.dialect.name)
    with engine.connect() as conn:
        for ename, ent in mapping.entities.items():
            report.entities += 1
            for i, part in enumerate(ent.parts):
                at = f"entities.{ename}" + (f".parts[{i}]" if len(ent.parts) > 1 else "")
                report.fields += len(part.fields)
                found, rows = _check_part(conn, ent, part, at, file, tables, sample)
                report.problems.extend(found)
                report.sampled += rows
        for n, key in enumerate(mapping.identity):
            report.problems.extend(_check_key(conn, mapping, key, n, file, shared_limit, free_domains))
    report.problems.extend(unmapped(mapping, file))
    return report


# ------------------------------------------------------------------ tables and columns
class _Tables:
    """The database's tables and views and their columns, read once each."""

    def __init__(self, insp: Any, dialect: str):
        self.insp = insp
        self.fold = dialect == "sqlite"  # SQLite matches quoted identifiers case-insensitively
        self.names = set(insp.get_table_names()) | set(insp.get_view_names())
        self._columns: dict[str, list[str]] = {}

    def has(self, table: str) -> bool:
        return table in self.names or (self.fold and table.lower() in {n.lower() for n in self.names})

    def columns(self, table: str) -> list[str]:
        if table not in self._columns:
            self._columns[table] = [c["name"] for c in self.insp.get_columns(table)]
        return self._columns[table]

    def has_column(self, table: str, column: str) -> bool:
        cols = self.columns(table)
        return column in cols or (self.fold and column.lower() in {c.lower() for c in cols})


def _close(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _column_refs(spec: FieldSpec) -> list[str]:
    """The ``col`` / ``alias.col`` references a field reads (an ``expr`` is checked by running it)."""
    if spec.expr is not None or spec.constant is not None:
        return []
    refs = [p.text for p in spec.concat if not p.literal] + list(spec.coalesce)
    return refs + ([spec.column] if spec.column else [])


def _key_of(at: str, name: str) -> str:
    custom = name.removeprefix("custom.")
    return f"{at}.custom.{custom}" if custom != name else f"{at}.fields.{name}"


def _static(part: EntityPart, at: str, file: str, tables: _Tables) -> tuple[list[Problem], set[str]]:
    """Problems seen without running anything: missing tables, join columns, field columns;
    and the fields already reported."""
    if not tables.has(part.table):
        return [Problem(file, f"{at}.table", f'table "{part.table}" not in the database'
                        f"{_close(part.table, tables.names)}")], set(part.fields)
    problems: list[Problem] = []
    aliases = {part.alias: part.table}
    for j, join in enumerate(part.joins):
        if not tables.has(join["table"]):
            problems.append(Problem(file, f"{at}.joins[{j}].table", f'table "{join["table"]}" not in the database'
                                    f"{_close(join['table'], tables.names)}"))
            continue
        aliases[join["alias"]] = join["table"]
        for local, remote in join["on"].items():
            for table, col in ((part.table, local), (join["table"], remote)):
                if not tables.has_column(table, col):
                    problems.append(Problem(file, f"{at}.joins[{j}].on", f'column "{col}" not in table {table}'
                                            f"{_close(col, tables.columns(table))}"))
    reported: set[str] = set()
    for name, spec in part.fields.items():
        for ref in _column_refs(spec):
            alias, _, col = ref.rpartition(".")
            table = aliases.get(alias or part.alias)
            if table is None:
                if (alias or part.alias) not in {j["alias"] for j in part.joins}:
                    problems.append(Problem(file, _key_of(at, name), f'"{alias}" is not a join of this entity '
                                            f"(joins: {', '.join(j['alias'] for j in part.joins) or 'none'})"))
                reported.add(name)
            elif not tables.has_column(table, col):
                problems.append(Problem(file, _key_of(at, name), f'column "{col}" not in table {table}'
                                        f"{_close(col, tables.columns(table))}"))
                reported.add(name)
    return problems, reported


# ------------------------------------------------------------------ running the SQL
def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _run(conn: Connection, stmt: Any) -> tuple[list[Any] | None, str | None]:
    """Rows of ``stmt``, or the database's one-line refusal (the transaction rolled back)."""
    try:
        with conn.begin():  # PostgreSQL refuses every statement after an error until a rollback
            return list(conn.execute(stmt)), None
    except SQLAlchemyError as exc:
        return None, _first_line(exc)


def _check_part(conn: Connection, ent: Entity, part: EntityPart, at: str, file: str, tables: _Tables,
                sample: int) -> tuple[list[Problem], int]:
    problems, reported = _static(part, at, file, tables)
    if not tables.has(part.table):
        return problems, 0
    names = list(part.fields)
    rows, error = _run(conn, ent.select(names, part).limit(sample))
    if rows is None:
        culprits = 0
        for name in names:
            if name in reported:
                continue
            alone = select(type_coerce(part.col(name), NullType())).select_from(part.from_clause).limit(1)
            _, why = _run(conn, alone)
            if why is not None:
                problems.append(Problem(file, _key_of(at, name), why))
                culprits += 1
        if not culprits and not problems:  # every field runs alone: the joins or the where filter fail
            _, why = _run(conn, select(literal(1)).select_from(part.from_clause).limit(1))
            problems.append(Problem(file, f"{at}.joins" if why else f"{at}.where", why or error or "fails"))
        return problems, 0
    problems.extend(_converted(rows, names, part, at, file))
    return problems, len(rows)


def _converted(rows: list[Any], names: list[str], part: EntityPart, at: str, file: str) -> list[Problem]:
    """Sample rows through each field's conversion: a field that cannot read some of them is a problem."""
    failed: dict[str, list[str]] = {}
    for raw in rows:
        for name, value in zip(names, raw, strict=True):
            spec, reasons = part.fields[name], list[str]()
            try:
                spec.to_python(value, reasons)
            except RowError as exc:
                reasons.append(str(exc))
            if reasons:
                failed.setdefault(name, []).extend(reasons)
    out = []
    for name, reasons in failed.items():
        spec = part.fields[name]
        what = (f"required, but null in {len(reasons)} of {len(rows)} sample rows"
                if spec.required and reasons[0].endswith("is missing") else
                f"{len(reasons)} of {len(rows)} sample rows cannot be read: {reasons[0]}")
        out.append(Problem(file, _key_of(at, name), what))
    return out


# ------------------------------------------------------------------ identity keys
def _domain_of(conn: Connection, value: ColumnElement[Any]) -> ColumnElement[Any] | None:
    """SQL for the domain part of an e-mail address, on the dialects that have the functions."""
    lowered = func.lower(func.trim(value))
    if conn.dialect.name == "sqlite":
        return func.substr(lowered, func.instr(lowered, "@") + 1)
    if conn.dialect.name == "postgresql":
        return func.split_part(lowered, "@", 2)
    return None


def _check_key(conn: Connection, mapping: Mapping, key: IdentityKey, n: int, file: str, limit: int,
               free_domains: Collection[str]) -> list[Problem]:
    """Values of ``key`` held by more than ``limit`` customers, refused with the fix to make (a key
    whose own columns fail is reported as their field already, and counts nothing here)."""
    if key.kind == "name" or key.field == key.anchor:
        return []  # names never link customers; a record's own id is its own
    if getattr(key, "person", False) and key.kind != "email":
        return []  # many people in one account (a group id shared by its users) is what a person key says
    at = f"identity.keys[{n}]"
    account = bool(getattr(key, "account_domain", False))
    ent = mapping.entity(key.entity)
    out: list[Problem] = []
    for part in ent.parts:
        if not part.maps(key.field) or not part.maps(key.anchor):
            continue
        value, anchor = part.col(key.field), part.col(key.anchor)
        checks: list[tuple[str, ColumnElement[Any] | None]] = []
        if key.kind == "domain":
            checks.append(("domain", func.lower(func.trim(value))))
        else:
            checks.append((key.kind, func.trim(value)))
            if key.kind == "email" and key.derive_domain:
                checks.append(("derived domain", _domain_of(conn, value)))
        for what, expr in checks:
            if expr is None:
                continue
            domain = what in ("domain", "derived domain")
            if domain and account:
                continue  # declared: one company's people share it
            shared = _shared(conn, part, expr, anchor, value, limit, free_domains if domain else ())
            if shared:
                out.append(Problem(file, at, _shared_message(key, what, shared, limit)))
    return out


def _shared(conn: Connection, part: EntityPart, expr: ColumnElement[Any], anchor: ColumnElement[Any],
            value: ColumnElement[Any], limit: int, skip: Collection[str]) -> list[tuple[str, int]]:
    held = func.count(distinct(anchor))
    stmt = (select(expr.label("v"), held.label("n")).select_from(part.from_clause)
            .where(value.is_not(None), func.trim(value) != "", *part.filters()))
    if skip:
        stmt = stmt.where(expr.not_in(list(skip)))
    stmt = stmt.group_by(expr).having(held > limit).order_by(held.desc()).limit(SHARED_SHOWN)
    rows, _ = _run(conn, stmt)
    return [(str(v), int(c)) for v, c in rows or () if v not in (None, "")]


def _shared_message(key: IdentityKey, what: str, shared: list[tuple[str, int]], limit: int) -> str:
    values = ", ".join(f'"{v}" ({c})' for v, c in shared)
    src = f"{key.entity}.{key.field}"
    if what == "derived domain":
        fix = ("mark the key account_domain: true if they are one company's people, "
               "otherwise remove derive_domain")
    elif what == "domain":
        fix = "mark the key account_domain: true if they are one company's accounts, otherwise map another field"
    else:
        fix = f"a placeholder value? filter it out with where:, or map a {key.kind} that is one customer's own"
    return (f"{what} {values} of {src} is shared by more than {limit} customers: identity would merge "
            f"them into one; refused ({fix})")


# ------------------------------------------------------------------ unmapped
def unmapped(mapping: Mapping, file: str) -> list[Problem]:
    """Notes for what the source's reader could use that the mapping leaves out (null, or no rows)."""
    schema = SOURCES.get(mapping.source)
    if schema is None:
        return []
    out = []
    for es in schema.entities:
        ent = mapping.entities.get(es.name)
        if ent is None:
            out.append(Problem(file, f"entities.{es.name}", "not mapped: read as no rows", "note"))
            continue
        missing = [f.name for f in es.fields if not f.required and not ent.has(f.name)]
        if missing:
            out.append(Problem(file, f"entities.{es.name}", f"not mapped, read as null: {', '.join(missing)}",
                               "note"))
    return out
