"""The bulk read's thin Python: rows converted by a converter compiled once per statement (exactly
what field-by-field conversion gives, errors included), statements built and compiled once per
kind of lookup, each slice built once per customer, one read time per bulk read."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from sqlalchemy.sql import compiler

import tools.sources.base as base
from tools.mapping.conversions import RowError
from tools.mapping.engine import Fetched
from tools.mapping.fields import FieldSpec
from tools.mapping.part import EntityPart
from tools.slices import SLICE_MODELS, SLICE_NAMES, Slice
from tools.sources.batch import RowBatch
from tools.sources.registry import reader

from .test_bulk_reads import _customers

_SPECS = {
    "id": FieldSpec(name="id", column="id", type="int", convert="id_text", required=True),
    "name": FieldSpec(name="name", column="name"),
    "n": FieldSpec(name="n", column="n", type="int"),
    "x": FieldSpec(name="x", column="x", type="float"),
    "d": FieldSpec(name="d", column="d", type="decimal"),
    "ok": FieldSpec(name="ok", column="ok", type="bool"),
    "at": FieldSpec(name="at", column="at", type="datetime"),
    "day": FieldSpec(name="day", column="day", type="date"),
    "cents": FieldSpec(name="cents", column="cents", type="int", convert="cents"),
    "epoch": FieldSpec(name="epoch", column="epoch", type="int", convert="epoch_s"),
    "kind": FieldSpec(name="kind", column="kind", convert="lower", values={"a": "alpha", None: "none", "*": "other"}),
    "tags": FieldSpec(name="tags", column="tags", type="json", json_path="t"),
    "plan": FieldSpec(name="plan", column="plan", type="json", json_path="p.name", required=True),
}
_PART = EntityPart(table="t", fields=_SPECS, optional=frozenset({"left_out"}))
_NAMES = [*_SPECS, "left_out"]
_GOOD = ("7", "Ada", 3, 1.5, Decimal("2.25"), "yes", "2025-01-02 03:04:05", "2025-02-03", 1234, 1_700_000_000,
         "A", '{"t": ["x", "y"]}', '{"p": {"name": "pro"}}', None)
_VARIANTS = {  # one field changed at a time: each type's garbage, nulls, other driver types
    "id": [None, "x", 7.0, 7.5, True], "name": [None, 5, "é"], "n": [None, "4", 4.0, 4.2, True, "z", 2**60 + 1],
    "x": [None, 2, "2.5", "nan?", False], "d": [None, 3, "1e2", []], "ok": [None, 0, "no", "maybe", 1.0],
    "at": [None, datetime(2025, 1, 1, 5, tzinfo=UTC), date(2025, 1, 1), "2025-01-01T00:00:00+02:00", "garbage"],
    "day": [None, datetime(2025, 1, 1, 5), "2025-13-01"], "cents": [None, "150", 1.5, "x"],
    "epoch": [None, "1700000000", 1e20], "kind": [None, "B", 3],
    "tags": [None, '{"t": "one"}', '{"t": [1, {"a": 2}, null]}', "{broken", '{"u": 1}', '["x"]'],
    "plan": [None, '{"p": null}', '{"p": "flat"}', "nope"], "left_out": ["ignored"],
}


def _field_by_field(raw: tuple, problems: list[str]) -> dict:
    return {n: None if _PART.fields.get(n) is None else _PART.fields[n].to_python(v, problems)
            for n, v in zip(_NAMES, raw, strict=True)}


def _outcome(convert, raw: tuple) -> tuple:
    problems: list[str] = []
    try:
        return "row", convert(raw, problems), problems
    except RowError as exc:
        return "error", str(exc), problems


@pytest.mark.parametrize("field", list(_VARIANTS))
def test_the_compiled_row_converter_gives_exactly_what_field_by_field_conversion_gives(field):
    conv = _PART.converter(_NAMES)
    assert conv is _PART.converter(list(_NAMES)) and conv.nested  # built once per list of names
    i = _NAMES.index(field)
    for value in [_GOOD[i], *_VARIANTS[field]]:
        raw = (*_GOOD[:i], value, *_GOOD[i + 1:])
        assert _outcome(conv.convert, raw) == _outcome(_field_by_field, raw), (field, value)
    got = _outcome(conv.convert, _GOOD)[1]
    assert got["id"] == "7" and got["at"] == datetime(2025, 1, 2, 3, 4, 5) and got["kind"] == "alpha"
    assert got["tags"] == ["x", "y"] and got["plan"] == "pro" and got["left_out"] is None


def test_a_malformed_row_or_value_is_skipped_and_counted_as_before():
    conv = _PART.converter(_NAMES)
    fetched = Fetched()
    fetched.add_converted(conv, _GOOD)
    fetched.add_converted(conv, (None, *_GOOD[1:]))  # required id missing: the row is left out
    i = _NAMES.index("tags")
    fetched.add_converted(conv, (*_GOOD[:i], '{"t": [1, {"a": 2}]}', *_GOOD[i + 1:]))  # one element dropped
    assert len(fetched.rows) == 2 and fetched.rows[1]["tags"] == [1]
    assert fetched.skipped == 2 and fetched.errors[0] == "id is missing" and len(fetched.skipped_raw) == 2
    with pytest.raises(ValueError, match="zip"):  # a row of the wrong width is a programming error, not garbage
        fetched.add_converted(conv, _GOOD[:-1])


def _compiles(monkeypatch) -> list[str]:
    seen: list[str] = []
    real = compiler.SQLCompiler.__init__

    def counting(self, *args, **kw):  # noqa: ANN001, ANN002, ANN003
        seen.append(type(self).__name__)
        real(self, *args, **kw)

    monkeypatch.setattr(compiler.SQLCompiler, "__init__", counting)
    return seen


def test_a_bulk_read_compiles_each_statement_once_not_per_chunk(sqlite_ready, monkeypatch):
    customers = list({c.name.lower(): c for c in _customers(sqlite_ready)}.values())  # one per name mentioned
    assert len(customers) >= 48
    chunks = [customers[i:i + 16] for i in range(0, 48, 16)]
    readers = {s: reader(sqlite_ready.settings, s) for s in ("crm", "billing", "support", "email", "chat")}

    def read_all(group: list) -> None:
        for source, rdr in readers.items():
            names = [n for n in SLICE_NAMES if SLICE_MODELS[n].source == source]
            rdr.read_many({n: group for n in names}, sqlite_ready.clock, RowBatch())

    read_all(chunks[0])  # the statements of every kind of lookup of these sources built and compiled
    compiled = _compiles(monkeypatch)
    for group in chunks[1:]:  # other customers, other keys: the same statements
        read_all(group)
    assert compiled == []


def test_a_bulk_read_builds_each_slice_once_with_one_read_time(sqlite_ready, monkeypatch):
    customers = _customers(sqlite_ready)
    built: list[object] = []
    real = base.Provenance

    def counting(**kw):  # noqa: ANN003
        built.append(kw["source"])
        return real(**kw)

    monkeypatch.setattr(base, "Provenance", counting)
    ticks = iter(datetime(2026, 1, 1, 0, 0, s) for s in range(60))
    clock = base.ReadClock(as_of=sqlite_ready.clock.as_of, settings=sqlite_ready.settings, now=lambda: next(ticks))
    for source in ("crm", "support", "email", "billing"):
        names = [n for n in SLICE_NAMES if SLICE_MODELS[n].source == source]
        built.clear()
        out = base.SourceReader.read_many(reader(sqlite_ready.settings, source),
                                          {n: customers for n in names}, clock)
        slices = [r for r in out.values() if isinstance(r, Slice)]
        # tickets then their history took several rounds: the runs on placeholders stopped before the slice
        assert len(built) == len(slices) > 20, source
        assert len({s.provenance.fetched_at for s in slices}) == 1, source
