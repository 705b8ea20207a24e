"""The identity tables' watermarks: per table of every identity entity, the newest update
timestamp seen and the row count, as they were when the index was last brought up to date.

A build records them (measured before the sources are read: what changes meanwhile is seen
next time), and ``tools.refresh.index.maintain_index`` compares them with the sources to find
the rows that changed since. Kept in ``identity_watermark`` beside the index; writing them
never touches the index tables (so the resolution cache's generation does not move).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    inspect,
    select,
    type_coerce,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.types import NullType

from tools.mapping.engine import EntityPart, IdentityKey, Mapping
from tools.mapping.loader import load_mapping
from tools.settings import Settings
from tools.sources.base import utcnow
from tools.sources.registry import engine_for

#: Sources whose records are customers; their priority decides the canonical record.
ANCHORED_SOURCES: tuple[str, ...] = ("crm", "billing", "support", "product", "commerce")

marks_state = MetaData()
identity_watermark = Table(
    "identity_watermark", marks_state,
    Column("source", String(20), primary_key=True),
    Column("part", String(200), primary_key=True),  # "<entity>/<table>"
    Column("config", String(40), nullable=False),  # digest of URL and mapping
    Column("value", Text),  # newest update timestamp seen (ISO); NULL: the table was empty
    Column("row_count", Integer, nullable=False),
    Column("recorded_at", DateTime, nullable=False),
)
Mark = tuple[str, str | None, int]  # config digest, newest update timestamp (ISO), row count


@dataclass
class IdentityTable:
    """One table of an identity entity of a connected source, and what was measured of it."""

    source: str
    url: str
    mapping: Mapping
    entity: str
    part: EntityPart
    keys: list[tuple[int, IdentityKey]]  # the identity keys read from this entity (index in mapping.identity)
    name: str = ""  # "<entity>/<table>"
    config: str = ""
    current: tuple[Any, int] = (None, 0)  # (newest update timestamp, rows), measured

    @property
    def stamped(self) -> bool:
        return "updated_at" in self.part.fields


_PERSON_TABLES_PRESENT: set[tuple[str, str]] = set()


def usable_keys(conn: Connection, mapping: Mapping) -> list[tuple[int, IdentityKey]]:
    """The mapping's identity keys, but a person key whose tables the source does not have (a
    Segment warehouse without ``aliases``). One catalogue query, and none once they were all
    there (a table dropped later fails its query: the source is down)."""
    person = [(i, k) for i, k in enumerate(mapping.identity) if k.person]
    seen = (conn.engine.url.render_as_string(), mapping.name)
    absent: set[str] = set()
    if person and seen not in _PERSON_TABLES_PRESENT:
        have = set(inspect(conn).get_table_names())
        absent = {k.entity for _, k in person
                  if any(t not in have for p in mapping.entity(k.entity).parts
                         for t in (p.table, *(j["table"] for j in p.joins)))}
        if not absent:
            _PERSON_TABLES_PRESENT.add(seen)
    return [(i, k) for i, k in enumerate(mapping.identity) if not (k.person and k.entity in absent)]


def config_digest(url: str, mapping: Mapping) -> str:
    return hashlib.sha1(f"{url}|{mapping.name}".encode()).hexdigest()[:16]


def _source_tables(source: str, url: str, mapping: Mapping, conn: Connection) -> list[IdentityTable]:
    digest = config_digest(url, mapping)
    by_entity: dict[str, list[tuple[int, IdentityKey]]] = defaultdict(list)
    for i, key in usable_keys(conn, mapping):
        by_entity[key.entity].append((i, key))
    return [IdentityTable(source, url, mapping, ent_name, p, keys, f"{ent_name}/{p.table}", digest)
            for ent_name, keys in by_entity.items() for p in mapping.entity(ent_name).parts]


def _measure(conn: Connection, t: IdentityTable) -> None:
    p = t.part
    newest_col = func.max(p.col("updated_at")) if t.stamped else func.count()
    newest, rows = conn.execute(select(type_coerce(newest_col, NullType()), func.count())
                                .select_from(p.from_clause)).one()
    t.current = (p.fields["updated_at"].to_python(newest) if t.stamped and newest is not None else None, int(rows))


def measured_tables(settings: Settings) -> tuple[str, list[IdentityTable], list[str]]:
    """Every table of every identity entity of the connected customer sources, measured now
    (newest update timestamp, row count: one statement per table); the digest of all of it
    (it changes whenever a source's configuration, row counts or newest update change); and
    the sources that could not be reached (their tables left out)."""
    parts, tables, down = [], [], []
    for source in ANCHORED_SOURCES:
        cfg = settings.source(source)
        if not cfg.url:
            continue
        mapping = load_mapping(cfg.mapping or source)
        parts.append(f"{source}|{cfg.url}|{mapping.name}")
        try:
            with engine_for(cfg.url).connect() as conn:
                some = _source_tables(source, cfg.url, mapping, conn)
                for t in some:
                    _measure(conn, t)
        except SQLAlchemyError:
            down.append(source)
            continue
        tables.extend(some)
        parts.extend(f"{t.name}:{t.current}" for t in some)
    return hashlib.sha1("\n".join(parts).encode()).hexdigest(), tables, down


def text_of(v: Any) -> str | None:
    return None if v is None else (v.isoformat() if isinstance(v, date | datetime) else str(v))


def from_text(v: str) -> Any:
    try:
        return datetime.fromisoformat(v)
    except ValueError:
        return v


def save_marks(conn: Connection, tables: list[IdentityTable]) -> None:
    """Record the measured watermarks (replacing every earlier one)."""
    conn.execute(delete(identity_watermark))
    if tables:
        now = utcnow()
        conn.execute(insert(identity_watermark), [
            {"source": t.source, "part": t.name, "config": t.config, "value": text_of(t.current[0]),
             "row_count": t.current[1], "recorded_at": now} for t in tables])


def load_marks(conn: Connection) -> dict[tuple[str, str], Mark]:
    return {(r.source, r.part): (r.config, r.value, r.row_count) for r in conn.execute(select(identity_watermark))}
