"""Per-customer aggregates declared on an entity: count / sum / min / max of a field,
grouped by the customer key, with an optional filter — computed by the warehouse.

```yaml
charge:
  table: payments
  fields: {...}
  aggregates:
    total_paid: {sum: amount, by: customer_id, where: {status: succeeded}}
    payments: {count: id, by: customer_id}
```

The result is converted as the field is (a ``cents`` sum comes out in currency units,
a ``max`` of an ``epoch_s`` field as a timestamp); ``count`` is an integer and is 0 for
a key without rows, the others are null then.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, func, select, type_coerce
from sqlalchemy.engine import Connection
from sqlalchemy.types import NullType

from tools.mapping.conversions import MappingError
from tools.mapping.part import EntityPart

#: The aggregate functions a mapping may declare.
AGGREGATE_FUNCTIONS = ("count", "sum", "min", "max")
#: Keys per ``IN (...)`` list of one aggregate query.
_CHUNK = 500


@dataclass(frozen=True)
class Aggregate:
    """``fn(of)`` over an entity's rows grouped by ``by``, rows filtered by ``where``."""

    name: str
    fn: str
    of: str  # the field aggregated
    by: str
    where: dict[str, Any] = field(default_factory=dict)

    #: Its statement per part (keys an expanding parameter): built once, compiled once by SQLAlchemy.
    _statements: dict[int, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    def compute(self, conn: Connection, parts: Sequence[EntityPart], keys: Iterable[Any]) -> dict[Any, Any]:
        """``{key: value}`` for every key asked for (Python values, matched in the source
        representation as lookups match them); one statement per part and chunk of keys — the
        same statement for one customer's read and for a bulk read's chunk."""
        wanted = list(dict.fromkeys(keys))
        raw: dict[Any, list[Any]] = {k: [] for k in wanted}
        for i, p in enumerate(parts):
            if not p.maps(self.by):
                raise MappingError(f"aggregate {self.name!r}: field {self.by!r} is not mapped for {p.table!r}")
            pairs = p.fields[self.by].in_source(wanted)
            by_raw: dict[str, list[Any]] = {}
            for v, r in pairs:
                by_raw.setdefault(str(r), []).append(v)
            sources = list(dict.fromkeys(r for _, r in pairs))
            if not sources:
                continue
            stmt = self._statements.get(i)
            if stmt is None:
                key = p.col(self.by)
                stmt = self._statements[i] = (
                    select(type_coerce(key, NullType()), type_coerce(self._sql(p), NullType()))
                    .select_from(p.from_clause).where(key.in_(bindparam("keys", expanding=True)))
                    .where(*p.filters(), *p.conditions(self.where)).group_by(key))
            for j in range(0, len(sources), _CHUNK):
                for k, value in conn.execute(stmt, {"keys": sources[j:j + _CHUNK]}):
                    for v in by_raw.get(str(k), ()):
                        raw[v].append(value)
        spec = parts[0].fields.get(self.of) if parts else None
        return {k: self._combine(values, spec) for k, values in raw.items()}

    def _sql(self, p: EntityPart) -> Any:
        if self.fn == "count":
            return func.count(p.col(self.of)) if p.maps(self.of) else func.count()
        return getattr(func, self.fn)(p.col(self.of))

    def _combine(self, values: list[Any], spec: Any) -> Any:
        """One value from each part's: counts and sums added, min / max compared, then converted."""
        if self.fn == "count":
            return sum(int(v or 0) for v in values)
        present = [v for v in values if v is not None]
        if not present:
            return None
        if spec is not None:
            present = [spec.to_python(_plain(v)) for v in present]
        if self.fn == "sum":
            total = sum(present)
            return round(total, 2) if isinstance(total, float) else total
        return min(present) if self.fn == "min" else max(present)


def _plain(v: Any) -> Any:
    """A driver's aggregate value as the field's raw value (PostgreSQL sums integers as Decimal)."""
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    return v
