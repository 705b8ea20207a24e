"""Conversions between source values and slice values, both ways, and the mapping errors.

``CONVERSIONS[name] = (to_python, to_source)``: ``cents`` (integer cents ↔ dollars),
``epoch_s`` / ``epoch_ms`` (epoch ↔ naive UTC datetime), ``email_local_part``, … —
``to_source`` turns a Python value back into the source's representation so a filter
on a converted column stays sargable. ``TYPE_CASTS`` check and cast raw values by the
field's declared type.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any, overload

from sqlalchemy import BigInteger, Boolean, Date, DateTime, Float, Numeric, String

SQL_TYPES = {
    "str": String, "int": BigInteger, "float": Float, "decimal": Numeric,
    "bool": Boolean, "datetime": DateTime, "date": Date, "json": String,
}


class MappingError(ValueError):
    """A mapping file is malformed or names something that does not exist."""


class RowError(ValueError):
    """A source row could not be converted (wrong type, missing required value)."""


# ----------------------------------------------------------------- conversions
def _epoch(scale: int) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    def to_py(v: Any) -> datetime:
        return datetime.fromtimestamp(_to_int(v) / scale, UTC).replace(tzinfo=None)

    def to_src(v: Any) -> int:
        if isinstance(v, date) and not isinstance(v, datetime):
            v = datetime(v.year, v.month, v.day)
        return int(v.replace(tzinfo=UTC).timestamp() * scale)

    return to_py, to_src


def _domain(v: Any) -> str:
    s = str(v).strip().lower()
    s = re.sub(r"^[a-z][a-z0-9+.-]*://", "", s)
    s = s.split("/", 1)[0].split("?", 1)[0].split(":", 1)[0]
    return s[4:] if s.startswith("www.") else s


def _to_date(v: Any) -> date:
    if isinstance(v, datetime):
        return v.date()
    if isinstance(v, date):
        return v
    return date.fromisoformat(str(v)[:10])


def _to_datetime(v: Any) -> datetime:
    if v.__class__ is str:  # the common case (SQLite): one parse, no second dispatch
        v = datetime.fromisoformat(v)
        return v if v.tzinfo is None else v.astimezone(UTC).replace(tzinfo=None)
    if isinstance(v, datetime):
        return v if v.tzinfo is None else v.astimezone(UTC).replace(tzinfo=None)
    if isinstance(v, date):
        return datetime(v.year, v.month, v.day)
    return _to_datetime(datetime.fromisoformat(str(v)))


def _identity(v: Any) -> Any:
    return v


def _to_bool(v: Any) -> bool:
    if isinstance(v, str):
        t = v.strip().lower()
        if t in ("true", "t", "yes", "y", "1"):
            return True
        if t in ("false", "f", "no", "n", "0", ""):
            return False
        raise ValueError(f"not a boolean: {v!r}")
    return bool(v)


def _to_float(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError("a boolean is not a number")
    return float(v)


def _to_int(v: Any) -> int:
    if v.__class__ is int:  # already one (not a bool)
        return v
    f = _to_float(v)
    if f != int(f):
        raise ValueError(f"not an integer: {v!r}")
    return int(f)


CONVERSIONS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "cents": (lambda v: round(_to_int(v) / 100, 2), lambda v: int(round(float(v) * 100))),
    "epoch_s": _epoch(1),
    "epoch_ms": _epoch(1000),
    "email_local_part": (lambda v: str(v).split("@", 1)[0].lower(), _identity),
    "domain": (_domain, _identity),
    "lower": (lambda v: str(v).strip().lower(), _identity),
    "snake": (lambda v: re.sub(r"[\s/-]+", "_", str(v).strip().lower()), _identity),
    "id_text": (lambda v: str(_to_int(v)), int),  # integer ids in the source, strings everywhere else
}

#: Conversions whose source representation is an integer column.
INTEGER_CONVERSIONS = frozenset({"cents", "epoch_s", "epoch_ms", "id_text"})

TYPE_CASTS: dict[str, Callable[[Any], Any]] = {
    "str": str, "int": _to_int, "float": _to_float, "decimal": _to_float, "bool": _to_bool,
    "datetime": _to_datetime, "date": _to_date, "json": _identity,
}


@overload
def days_between(earlier: date | datetime, later: datetime) -> int: ...


@overload
def days_between(earlier: None, later: datetime) -> None: ...


@overload
def days_between(earlier: date | datetime | None, later: datetime) -> int | None: ...


def days_between(earlier: date | datetime | None, later: datetime) -> int | None:
    """Whole days from ``earlier`` to ``later`` (None stays None)."""
    if earlier is None:
        return None
    e = earlier if isinstance(earlier, datetime) else datetime(earlier.year, earlier.month, earlier.day)
    return (later.date() - e.date()).days
