"""Nothing vanishes silently: every row *and* every nested value a read leaves out as
malformed is counted in the slice's ``skipped_rows`` (single reads and bulk reads alike),
and the source shows ``degraded`` — a list that comes back short or empty because rows
failed is never passed off as a clean one."""

from __future__ import annotations

from functools import cache

import pytest
from sqlalchemy import create_engine, text

from tools.context.assembly import assemble_context
from tools.context.scope import ReadScope
from tools.guard import SourceGuard
from tools.mapping.conversions import RowError
from tools.mapping.engine import IN_CHUNK, ROW_TAMPER, SKIP_TALLY, Fetched
from tools.mapping.loader import parse_mapping
from tools.settings import GuardSettings
from tools.slices import CalendarMeetings, Meeting
from tools.sources.base import SourceReader
from tools.sources.faults import GARBAGE
from tools.sources.registry import reader

from .test_degradation import STORY
from .test_guard import FakeClock

FAULTED = {"calls.highlights": "calls", "calendar.meetings": "meetings", "email.threads": "threads"}
KEYS = {"calls": "id", "meetings": "id", "threads": "thread_id"}


def lost(base, got) -> list[str]:
    """What the clean slice has that the faulted one lacks: records, list elements, values."""
    out = []

    def walk(path: str, b, g) -> None:
        if isinstance(b, dict):
            for k, v in b.items():
                walk(f"{path}.{k}", v, (g or {}).get(k) if isinstance(g, dict) else None)
        elif isinstance(b, list):
            g = g if isinstance(g, list) else []
            if b and isinstance(b[0], dict) and path.rsplit(".", 1)[-1] in KEYS:
                key = KEYS[path.rsplit(".", 1)[-1]]
                mine = {x[key]: x for x in g}
                for x in b:
                    if x[key] in mine:
                        walk(f"{path}[{x[key]}]", x, mine[x[key]])
                    else:
                        out.append(f"{path}[{x[key]}]: missing")
            elif len(g) < len(b):
                out.append(f"{path}: {len(b)} → {len(g)}")
        elif b not in (None, "", 0) and g in (None, "", 0):
            out.append(f"{path}: {b!r} → {g!r}")

    walk("", base.model_dump(mode="json", exclude={"provenance"}), got.model_dump(mode="json", exclude={"provenance"}))
    return out


@pytest.fixture(scope="module")
def contexts(sqlite_ready):
    base = sqlite_ready.settings.model_copy(update={"guard": GuardSettings(max_concurrency=1), "seed": 7})
    faulty = base.model_copy(update={"faults": ",".join(f"{n.split('.')[0]}=corrupt" for n in FAULTED)})

    @cache
    def read(settings_key: str, ref: str):
        settings = faulty if settings_key == "faulty" else base
        customer, _ = sqlite_ready.index.resolve(ref)
        guard = SourceGuard(settings.guard, FakeClock())
        return assemble_context(ReadScope.build(settings, sqlite_ready.clock, guard=guard), customer,
                                slices=list(FAULTED))

    return read


def test_corrupt_sources_never_lose_data_silently(contexts):
    """The reproduction of issue 15 (6): under ``calls/calendar/email=corrupt`` (seed 7), calls,
    meetings and threads went missing — a call whose participant row was garbage, a meeting
    whose attendee rows were — with ``skipped_rows`` 0 and the source ``connected``."""
    seen = 0
    for ref in STORY:
        base, got = contexts("clean", ref), contexts("faulty", ref)
        for name in FAULTED:
            source = name.split(".")[0]
            report = next(r for r in got.sources if r.source == source)
            if name not in got.slices:  # nothing usable left: a named gap, never an empty slice
                assert {g.kind for g in got.gaps if g.slice == name} == {"unavailable"}, (ref, name)
                assert report.status in ("degraded", "failed"), (ref, name)
                seen += 1
                continue
            gone = lost(base.slices[name], got.slices[name])
            if gone:
                seen += 1
                skipped = got.slices[name].provenance.skipped_rows
                assert skipped > 0, f"{ref} {name}: lost {gone} with skipped_rows 0"
                assert report.status == "degraded" and report.skipped_rows == skipped, (ref, name, report)
            if got.slices[name].provenance.skipped_rows:
                assert report.status == "degraded", (ref, name)
            assert GARBAGE not in got.slices[name].model_dump_json(), (ref, name)
    assert seen >= 3, "the corrupt fault had no visible effect: the reproduction proves nothing"


def test_clean_reads_skip_nothing(contexts):
    for ref in STORY:
        c = contexts("clean", ref)
        assert all(s.provenance.skipped_rows == 0 for s in c.slices.values()), ref
        assert {r.status for r in c.sources if r.source in ("calls", "calendar", "email")} <= {"connected"}, ref


# ------------------------------------------------------------------ bulk reads, same garbage
CHILD_TABLES = {"calendar_attendee", "call_participant", "call_highlight", "email_recipient"}


def test_bulk_reads_count_what_single_reads_count(sqlite_ready):
    """The same malformed rows (every participant / attendee / recipient / key-moment row of
    every other record) read one customer at a time and in bulk: equal slices, equal counts."""
    customers = [sqlite_ready.index.resolve(ref)[0] for ref in STORY]

    def tamper(table, names, raw):
        # first column: the parent id in every child table, in both read shapes
        if table in CHILD_TABLES and hash_key(str(raw[0])):
            return [None] + [GARBAGE] * (len(raw) - 1)
        return raw

    token = ROW_TAMPER.set(tamper)
    try:
        counted = 0
        for name in FAULTED:
            rdr = reader(sqlite_ready.settings, name.split(".")[0])
            bulk = rdr.read_many({name: customers}, sqlite_ready.clock)
            for c in customers:
                single = rdr.read(name, c, sqlite_ready.clock)
                got = bulk[c.customer_id, name]
                assert not isinstance(got, Exception), (name, c.name, got)
                assert _plain(got) == _plain(single), (name, c.name)
                counted += single.provenance.skipped_rows
        assert counted > 0
    finally:
        ROW_TAMPER.reset(token)


def hash_key(key: str) -> bool:
    return sum(map(ord, key)) % 2 == 0


def _plain(s):
    data = s.model_dump(mode="json")
    data["provenance"].pop("fetched_at")
    return data


# ------------------------------------------------------------------ nested (JSON) values
def spec(**field):
    doc = {"source": "calendar", "entities": {"event": {"table": "t", "fields": {"v": {"column": "v", **field}}}}}
    return parse_mapping(doc).entity("event").spec("v")


@pytest.mark.parametrize("raw, field, value, problems", [
    ('{"a": {"b": "X"}}', {"path": "a.b", "convert": "lower"}, "x", 0),
    ('{"a": {}}', {"path": "a.b"}, None, 0),  # absent: nothing malformed
    ('{"a": null}', {"path": "a.b"}, None, 0),
    ("{not json", {"path": "a"}, None, 1),
    ('["a", "b"]', {"path": "a"}, None, 1),  # a list where an object belongs
    ('{"a": "text"}', {"path": "a.b"}, None, 1),  # a string where an object belongs
    ('{"a": {"b": 1}}', {"path": "a"}, None, 1),  # an object where a value belongs
    ('["A@X.COM", 7, {"e": 1}, null, ["y"], "b@y.com"]', {"convert": "lower"}, ["a@x.com", "7", "b@y.com"], 3),
    ('["1", "2.5", "x"]', {"convert": "cents"}, [0.01], 2),
    ('["Call", "note"]', {"values": {"Call": "call", "*": "other"}}, ["call", "other"], 0),
    ({"a": ["x"]}, {"path": "a"}, ["x"], 0),  # already decoded by the driver (jsonb)
])
def test_nested_values_that_cannot_be_read_are_dropped_and_counted(raw, field, value, problems):
    found: list[str] = []
    assert spec(type="json", **field).to_python(raw, found) == value
    assert len(found) == problems, found


@pytest.mark.parametrize("raw", ["{not json", '["a"]', '{"a": {"b": 1}}', '{"a": [1, {"c": 2}]}'])
def test_a_bad_nested_value_raises_when_nobody_counts_it_or_the_field_is_required(raw):
    with pytest.raises(RowError):
        spec(type="json", path="a").to_python(raw)  # no problems list: never dropped silently
    if raw != '{"a": [1, {"c": 2}]}':  # a bad element of a required list drops the element only
        with pytest.raises(RowError):
            spec(type="json", path="a", required=True).to_python(raw, [])


def test_a_scalar_column_that_cannot_be_read_still_drops_the_row():
    with pytest.raises(RowError):
        spec(type="int").to_python("seven", [])


# ------------------------------------------------------------------ a reader with a JSON list field
TOY = {
    "name": "toy_calendar", "source": "calendar", "system": "toy",
    "entities": {"event": {"table": "event", "fields": {
        "id": {"column": "id", "required": True},
        "domain": "domain",
        "start": {"column": "start_at", "type": "datetime", "required": True},
        "attendees": {"column": "attendees", "type": "json", "convert": "lower"},
    }}},
}
ROWS = [  # id, domain, start, attendees (JSON text)
    ("e1", "acme.com", "2026-01-10 10:00:00", '["A@acme.com", "b@acme.com"]'),
    ("e2", "acme.com", "2026-01-11 10:00:00", "not json"),                      # value dropped: 1
    ("e3", "acme.com", "2026-01-12 10:00:00", '["c@acme.com", {"x": 1}, null]'),  # 2 elements dropped: 2
    ("e4", "acme.com", "garbage", '["d@acme.com"]'),                           # row dropped: 1
    ("e5", "globex.com", "2026-01-12 10:00:00", '{"a": 1}'),                    # value dropped: 1
    ("e6", "globex.com", "2026-01-13 10:00:00", '["e@globex.com"]'),
]


class ToyCalendar(SourceReader):
    source = "calendar"

    def read_meetings(self, conn, customer, clock) -> CalendarMeetings:
        fetched = self.lookup(conn, "event", "domain", customer.domains, order_by="start", descending=False)
        return CalendarMeetings(provenance=self.provenance(clock, fetched.rows), meetings=[
            Meeting(id=r["id"], start=r["start"], attendees=r["attendees"] or []) for r in fetched.rows])


@pytest.fixture
def toy(tmp_path):
    eng = create_engine(f"sqlite:///{tmp_path / 'toy.sqlite'}")
    with eng.begin() as c:
        c.execute(text("create table event (id text, domain text, start_at text, attendees text)"))
        c.execute(text("insert into event values (:i, :d, :s, :a)"),
                  [dict(zip("idsa", r, strict=True)) for r in ROWS])
    yield ToyCalendar(parse_mapping(TOY), eng)
    eng.dispose()


def test_fetched_counts_rows_and_nested_values(toy):
    with toy.engine.connect() as conn:
        fetched = toy.mapping.entity("event").rows(conn, order_by="start", descending=False)
    assert [(r["id"], r["attendees"]) for r in fetched.rows] == [
        ("e1", ["a@acme.com", "b@acme.com"]), ("e2", None), ("e3", ["c@acme.com"]), ("e5", None),
        ("e6", ["e@globex.com"])]
    assert fetched.skipped == 5 and len(fetched.errors) == 5 and len(fetched.skipped_raw) == 5
    assert any("attendees[1]" in e for e in fetched.errors)


def test_single_and_bulk_reads_count_malformed_nested_values(toy, sqlite_ready):
    acme, globex = (sqlite_ready.index.resolve(ref)[0] for ref in ("acme.com", "globex.com"))
    clock = sqlite_ready.clock
    single = {c.name: toy.read("calendar.meetings", c, clock) for c in (acme, globex)}
    bulk = toy.read_many({"calendar.meetings": [acme, globex]}, clock)
    assert single[acme.name].provenance.skipped_rows == 4  # e2's value, e3's two elements, e4's row
    assert single[globex.name].provenance.skipped_rows == 1
    assert [m.attendees for m in single[acme.name].meetings] == [["a@acme.com", "b@acme.com"], [], ["c@acme.com"]]
    for c in (acme, globex):
        assert _plain(bulk[c.customer_id, "calendar.meetings"]) == _plain(single[c.name])


def test_a_single_read_of_many_keys_counts_each_skip_once(toy, sqlite_ready):
    """More keys than one IN list: the rows are loaded in chunks (Entity.rows_by) and counted
    by the read that takes them, once."""
    ids = ["e2", "e3", *(f"none{i}" for i in range(IN_CHUNK))]
    tally = [0]
    token = SKIP_TALLY.set(tally)
    try:
        with toy.engine.connect() as conn:
            got: Fetched = toy.lookup(conn, "event", "id", ids)
    finally:
        SKIP_TALLY.reset(token)
    assert got.skipped == 3 and tally == [3]
