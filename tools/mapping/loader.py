"""Loading mappings: a YAML document (built in, by name, or a path) → a :class:`Mapping`."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tools.mapping.conversions import CONVERSIONS, SQL_TYPES, MappingError
from tools.mapping.engine import Entity, EntityPart, FieldSpec, IdentityKey, Mapping

MAPPINGS_DIR = Path(__file__).parent


def _field(name: str, spec: Any) -> FieldSpec:
    if isinstance(spec, str):
        return FieldSpec(name=name, column=spec)
    if not isinstance(spec, dict):
        raise MappingError(f"field {name!r}: expected a column name or a mapping, got {spec!r}")
    unknown = set(spec) - {"column", "type", "convert", "path", "values", "coalesce", "constant", "required"}
    if unknown:
        raise MappingError(f"field {name!r}: unknown keys {sorted(unknown)}")
    if spec.get("convert") and spec["convert"] not in CONVERSIONS:
        raise MappingError(f"field {name!r}: unknown conversion {spec['convert']!r}; known: {sorted(CONVERSIONS)}")
    ftype = spec.get("type", "str")
    if ftype not in SQL_TYPES:
        raise MappingError(f"field {name!r}: unknown type {ftype!r}; known: {sorted(SQL_TYPES)}")
    return FieldSpec(
        name=name, column=spec.get("column"), type=ftype, convert=spec.get("convert"),
        json_path=spec.get("path"), values=spec.get("values"),
        coalesce=tuple(spec.get("coalesce", ())), constant=spec.get("constant"),
        required=bool(spec.get("required", False)),
    )


def _part(entity: str, spec: dict[str, Any]) -> EntityPart:
    if "table" not in spec:
        raise MappingError(f"entity {entity!r}: 'table' is required")
    fields = {n: _field(n, s) for n, s in (spec.get("fields") or {}).items()}
    # YAML 1.1 reads the bare key `on` as the boolean True; accept it as written.
    joins = tuple({("on" if k is True else k): v for k, v in j.items()} for j in spec.get("joins") or ())
    for j in joins:
        if not {"table", "alias", "on"} <= set(j):
            raise MappingError(f"entity {entity!r}: a join needs table, alias and on")
    return EntityPart(table=spec["table"], fields=fields, joins=joins, where=dict(spec.get("where") or {}))


def parse_mapping(doc: dict[str, Any], name: str = "<inline>") -> Mapping:
    """Build a :class:`Mapping` from its YAML document."""
    try:
        entities: dict[str, Entity] = {}
        for ename, espec in (doc.get("entities") or {}).items():
            parts = espec.get("parts") or [espec]
            entities[ename] = Entity(name=ename, parts=tuple(_part(ename, p) for p in parts),
                                     key=espec.get("key", "id"))
        ident = doc.get("identity") or {}
        anchor_entity, _, anchor_field = str(ident.get("anchor", "")).partition(".")
        keys = tuple(IdentityKey(**k) for k in ident.get("keys", ()))
        mapping = Mapping(
            name=doc.get("name", name), source=doc["source"], system=doc.get("system", name),
            entities=entities, anchor=(anchor_entity, anchor_field), identity=keys,
            settings=dict(doc.get("settings") or {}),
        )
    except (KeyError, TypeError) as exc:
        raise MappingError(f"mapping {name!r} is malformed: {exc}") from exc
    for k in mapping.identity:
        ent = mapping.entity(k.entity)
        for f in (k.anchor, k.field):
            if not ent.has(f):
                raise MappingError(f"mapping {name!r}: identity key names unmapped field {k.entity}.{f}")
    return mapping


@cache
def load_mapping(ref: str) -> Mapping:
    """Load a mapping by name (``hubspot``) or path (``./my_crm.yaml``)."""
    path = Path(ref)
    if not path.suffix:
        path = MAPPINGS_DIR / f"{ref}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in MAPPINGS_DIR.glob("*.yaml"))
        raise MappingError(f"no mapping {ref!r}; built-in mappings: {', '.join(known)}")
    with path.open(encoding="utf-8") as fh:
        # libyaml's loader when PyYAML has it: ten times faster, and every command loads the mappings
        return parse_mapping(yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)), name=path.stem)
