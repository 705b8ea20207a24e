"""Loading mappings: a YAML document (built in, by name, or a path) → a :class:`Mapping`.

Every key is checked (a typo is a load error naming the file and the key), ``where``
filters may name declared fields only, and a mapping file is checked against what its
source's reader needs (:mod:`tools.mapping.schema`): a required entity or field left
out is an error, an optional one reads as null (no rows for an entity).
"""

from __future__ import annotations

import re
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tools.mapping.aggregates import AGGREGATE_FUNCTIONS, Aggregate
from tools.mapping.conversions import CONVERSIONS, SQL_TYPES, MappingError
from tools.mapping.engine import CUSTOM, Entity, EntityPart, FieldSpec, IdentityKey, Mapping
from tools.mapping.fields import ConcatPart
from tools.mapping.schema import BILLING_STATES, SOURCES

MAPPINGS_DIR = Path(__file__).parent

_TOP_KEYS = {"name", "source", "system", "identity", "entities", "settings"}
_PART_KEYS = {"table", "fields", "joins", "where", "custom"}
_ENTITY_KEYS = _PART_KEYS | {"parts", "key", "aggregates"}
_FIELD_KEYS = {"column", "type", "convert", "path", "values", "coalesce", "constant", "required", "expr", "concat"}
_SOURCES_OF_A_VALUE = ("column", "expr", "concat", "coalesce", "constant")
#: A ``concat`` element naming a column (``col`` or ``alias.col``); anything else is literal text.
_COLUMN_REF = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


def _unknown(where: str, given: Any, known: set[str]) -> None:
    unknown = set(given) - known
    if unknown:
        raise MappingError(f"{where}: unknown keys {sorted(map(str, unknown))}; known: {', '.join(sorted(known))}")


def _concat(where: str, items: Any) -> tuple[ConcatPart, ...]:
    if not isinstance(items, list) or not items:
        raise MappingError(f"{where}: concat takes a non-empty list of columns and texts")
    out = []
    for item in items:
        if isinstance(item, dict) and set(item) in ({"text"}, {"column"}):
            out.append(ConcatPart(str(item.get("text", item.get("column"))), literal="text" in item))
        elif isinstance(item, str):
            out.append(ConcatPart(item, literal=not _COLUMN_REF.match(item)))
        else:
            raise MappingError(f"{where}: concat element {item!r} is not a column, a text or {{text: ...}}")
    return tuple(out)


def _field(where: str, name: str, spec: Any) -> FieldSpec:
    if isinstance(spec, str):
        return FieldSpec(name=name, column=spec)
    if not isinstance(spec, dict):
        raise MappingError(f"{where}: expected a column name or a mapping, got {spec!r}")
    _unknown(where, spec, _FIELD_KEYS)
    if spec.get("convert") and spec["convert"] not in CONVERSIONS:
        raise MappingError(f"{where}: unknown conversion {spec['convert']!r}; known: {sorted(CONVERSIONS)}")
    ftype = spec.get("type", "str")
    if ftype not in SQL_TYPES:
        raise MappingError(f"{where}: unknown type {ftype!r}; known: {sorted(SQL_TYPES)}")
    given = [k for k in _SOURCES_OF_A_VALUE if k in spec]
    if len(given) != 1:
        raise MappingError(f"{where}: needs exactly one of {', '.join(_SOURCES_OF_A_VALUE)}"
                           + (f" (got {', '.join(given)})" if given else ""))
    if "expr" in spec and (not isinstance(spec["expr"], str) or not spec["expr"].strip()):
        raise MappingError(f"{where}: expr must be SQL text")
    return FieldSpec(
        name=name, column=spec.get("column"), type=ftype, convert=spec.get("convert"),
        json_path=spec.get("path"), values=spec.get("values"),
        coalesce=tuple(spec.get("coalesce", ())), constant=spec.get("constant"),
        required=bool(spec.get("required", False)), expr=spec.get("expr"),
        concat=_concat(where, spec["concat"]) if "concat" in spec else (),
    )


def _part(loc: str, spec: Any, custom: dict[str, Any], keys: set[str]) -> EntityPart:
    if not isinstance(spec, dict):
        raise MappingError(f"{loc}: expected a mapping, got {spec!r}")
    _unknown(loc, spec, keys)
    if "table" not in spec:
        raise MappingError(f"{loc}: 'table' is required")
    fields = {n: _field(f"{loc}.fields.{n}", n, s) for n, s in (spec.get("fields") or {}).items()}
    for n, s in {**custom, **(spec.get("custom") or {})}.items():
        fields[CUSTOM + n] = _field(f"{loc}.custom.{n}", CUSTOM + n, s)
    # YAML 1.1 reads the bare key `on` as the boolean True; accept it as written.
    joins = tuple({("on" if k is True else k): v for k, v in j.items()} for j in spec.get("joins") or ())
    for j in joins:
        if not {"table", "alias", "on"} <= set(j):
            raise MappingError(f"{loc}: a join needs table, alias and on")
    filters = dict(spec.get("where") or {})
    for k in filters:
        if k not in fields:
            raise MappingError(f"{loc}.where.{k}: names no declared field; declare it under fields "
                               f"(e.g. {k}: {{column: {k}, type: bool}}) to filter on it")
    return EntityPart(table=spec["table"], fields=fields, joins=joins, where=filters)


def _aggregates(loc: str, spec: Any, parts: tuple[EntityPart, ...]) -> dict[str, Aggregate]:
    out = {}
    for name, a in (spec or {}).items():
        where = f"{loc}.aggregates.{name}"
        if not isinstance(a, dict):
            raise MappingError(f"{where}: expected {{sum: field, by: field, where: {{...}}}}")
        _unknown(where, a, {*AGGREGATE_FUNCTIONS, "by", "where"})
        fns = [f for f in AGGREGATE_FUNCTIONS if f in a]
        if len(fns) != 1 or "by" not in a:
            raise MappingError(f"{where}: needs one of {', '.join(AGGREGATE_FUNCTIONS)} and 'by'")
        agg = Aggregate(name=name, fn=fns[0], of=str(a[fns[0]]), by=str(a["by"]), where=dict(a.get("where") or {}))
        for key, f in [("by", agg.by), (agg.fn, agg.of), *(("where", k) for k in agg.where)]:
            if not all(f in p.fields for p in parts):
                raise MappingError(f"{where}.{key}: names no declared field {f!r}")
        out[name] = agg
    return out


def _entity(loc: str, name: str, espec: Any) -> Entity:
    if not isinstance(espec, dict):
        raise MappingError(f"{loc}: expected a mapping, got {espec!r}")
    _unknown(loc, espec, _ENTITY_KEYS)
    if "parts" in espec:
        custom = dict(espec.get("custom") or {})
        parts = tuple(_part(f"{loc}.parts[{i}]", p, custom, _PART_KEYS) for i, p in enumerate(espec["parts"] or ()))
    else:
        parts = (_part(loc, espec, {}, _ENTITY_KEYS),)
    return Entity(name=name, parts=parts, key=espec.get("key", "id"),
                  aggregates=_aggregates(loc, espec.get("aggregates"), parts))


def _identity_key(i: int, spec: Any) -> IdentityKey:
    try:
        return IdentityKey(**spec)
    except TypeError as exc:  # an unknown or a missing key
        known = ", ".join(IdentityKey.__dataclass_fields__)
        raise MappingError(f"identity.keys[{i}]: {str(exc).split('() ', 1)[-1]} (keys: {known})") from None


def _checked(mapping: Mapping, origin: str) -> Mapping:
    """The mapping against what its source's reader needs: required entities and fields
    present, optional fields that are left out read as null, optional entities as no rows."""
    schema = SOURCES.get(mapping.source)
    if schema is None:
        return mapping
    entities = dict(mapping.entities)
    for es in schema.entities:
        ent = entities.get(es.name)
        if ent is None:
            if es.required:
                raise MappingError(f"mapping {origin}: entities.{es.name} is required by the {schema.source} reader")
            continue
        for p in ent.parts:
            missing = [f.name for f in es.fields if f.required and f.name not in p.fields]
            if missing:
                raise MappingError(f"mapping {origin}: entities.{es.name}.fields.{missing[0]} is required by the "
                                   f"{schema.source} reader (table {p.table!r})")
        optional = frozenset(f.name for f in es.fields if not f.required)
        entities[es.name] = replace(ent, parts=tuple(replace(p, optional=optional) for p in ent.parts))
    status_map = mapping.settings.get("status_map") or {}
    bad = {k: v for k, v in status_map.items() if v not in BILLING_STATES} if mapping.source == "billing" else {}
    if bad:
        k = next(iter(bad))
        raise MappingError(f"mapping {origin}: settings.status_map.{k}: {bad[k]!r} is not one of "
                           f"{', '.join(BILLING_STATES)}")
    return replace(mapping, entities=entities,
                   optional_entities=frozenset(e.name for e in schema.entities if e.name not in entities))


def parse_mapping(doc: dict[str, Any], name: str = "<inline>", origin: str | None = None,
                  schema: bool = False) -> Mapping:
    """Build a :class:`Mapping` from its YAML document; ``origin`` (the file) names it in errors.

    ``schema``: also check it against what its source's reader needs (``load_mapping``
    does): required entities and fields are an error to leave out, optional ones read as null.
    """
    origin = origin or repr(name)
    if not isinstance(doc, dict):
        raise MappingError(f"mapping {origin} is malformed: expected a YAML mapping at the top")
    try:
        _unknown(f"mapping {origin}", doc, _TOP_KEYS)
        entities = {ename: _entity(f"entities.{ename}", ename, espec)
                    for ename, espec in (doc.get("entities") or {}).items()}
        ident = doc.get("identity") or {}
        anchor_entity, _, anchor_field = str(ident.get("anchor", "")).partition(".")
        keys = tuple(_identity_key(i, k) for i, k in enumerate(ident.get("keys", ())))
        mapping = Mapping(
            name=doc.get("name", name), source=doc["source"], system=doc.get("system", name),
            entities=entities, anchor=(anchor_entity, anchor_field), identity=keys,
            settings=dict(doc.get("settings") or {}),
        )
    except MappingError as exc:
        raise MappingError(str(exc) if str(exc).startswith("mapping ") else f"mapping {origin}: {exc}") from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise MappingError(f"mapping {origin} is malformed: {exc}") from exc
    for k in mapping.identity:
        ent = mapping.entity(k.entity)
        for f in (k.anchor, k.field):
            if not ent.has(f):
                raise MappingError(f"mapping {origin}: identity key names unmapped field {k.entity}.{f}")
    return _checked(mapping, origin) if schema else mapping


@cache
def load_mapping(ref: str) -> Mapping:
    """Load a mapping by name (``hubspot``) or path (``./my_crm.yaml``)."""
    path = Path(ref)
    builtin = not path.suffix
    if builtin:
        path = MAPPINGS_DIR / f"{ref}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in MAPPINGS_DIR.glob("*.yaml"))
        raise MappingError(f"no mapping {ref!r}; built-in mappings: {', '.join(known)}")
    origin = path.name if builtin else str(path)
    try:
        with path.open(encoding="utf-8") as fh:
            # libyaml's loader when PyYAML has it: ten times faster, and every command loads the mappings
            doc = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise MappingError(f"mapping {origin} cannot be read: {' '.join(str(exc).split())}") from None
    return parse_mapping(doc, name=path.stem, origin=origin, schema=True)
