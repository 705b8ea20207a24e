"""Batch account reviews: one markdown review and its JSON per account, for a whole book.

``run_reviews`` drives a review function (``AccountEntry → (markdown, JSON-able
dict)``, e.g. the review graph) over a stream of accounts:

- **Resumable.** An account is finished when both of its files exist. Each file is
  written atomically (temporary file, then ``os.replace``), markdown first and JSON
  last, so a crash never leaves a file that counts as done; a re-run skips finished
  accounts unless ``force``.
- **Bounded.** Accounts are pulled from the stream only while fewer than
  ``2 × concurrency`` are in flight on the thread pool, and each worker writes its
  own files: memory does not grow with the size of the book.
- **Rate-limited at the model.** ``concurrency`` bounds the reviews in flight; the
  requests they send a real model per second are bounded by the one limiter every
  model of the process shares (``CUSTCTX_MODEL_REQUESTS_PER_SECOND``, ``custctx review
  --rate``; ``agent.models.rate_limiter``), whatever the concurrency.
- **One failure is one account.** An exception from the review function is recorded
  (report, ``failures.jsonl``) and the batch carries on. ``KeyboardInterrupt`` /
  ``SystemExit`` stop the batch like a crash: the accounts in flight finish, the
  interrupted one is redone next run.
- **An index.** ``index.sqlite`` gets one small row per account written (name,
  health, tier, owner, file names, when). At the end it is reconciled with the files
  on disk — a review with no row (written before a crash, or by hand) is read back
  once, a row whose files are gone is dropped — and rendered, sorted by SQLite on
  disk, as ``index.md``: constant memory at any number of accounts.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, suppress
from contextvars import copy_context
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, NamedTuple, TextIO

from tools.book import AccountEntry

ReviewFn = Callable[[AccountEntry], tuple[str, dict]]
"""Reviews one account: its markdown and a JSON-able dict. May raise."""
ReviewProgress = Callable[[int, int | None], None]
"""Called as ``progress(done, total)`` after each account (skipped ones included)."""

INDEX_MD = "index.md"
INDEX_DB = "index.sqlite"
FAILURES = "failures.jsonl"
_TMP_PREFIX, _TMP_SUFFIX = ".custctx-", ".tmp"
_STALE_TMP_SECONDS = 3600  # no write takes this long: an older temp file is a crash's leftover
_SLUG_MAX = 60
_INDEX_COMMIT_EVERY = 200  # rows; a crash loses at most these, read back from disk next run


@dataclass
class ReviewRunReport:
    """What one run did."""

    selected: int  # accounts taken from the stream
    written: int  # reviewed and written now
    skipped: int  # already finished by an earlier run
    failed: list[tuple[str, str]]  # (customer_id, one-line error)
    seconds: float
    out_dir: Path

    @property
    def index_path(self) -> Path:
        return self.out_dir / INDEX_MD


# ------------------------------------------------------------------ file names
def slugify(name: str) -> str:
    """A filesystem-safe, ASCII form of a name: ``Société Tyrell`` → ``societe-tyrell``."""
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    slug = re.sub(r"[^a-z0-9]+", "-", folded).strip("-")[:_SLUG_MAX].rstrip("-")
    return slug or "customer"


def review_paths(out_dir: Path, entry: AccountEntry) -> tuple[Path, Path]:
    """The account's markdown and JSON files: ``<slug-of-name>--<customer_id>.md/.json``."""
    stem = f"{slugify(entry.name)}--{re.sub(r'[^A-Za-z0-9_.-]+', '_', entry.customer_id)}"
    return out_dir / f"{stem}.md", out_dir / f"{stem}.json"


def is_finished(out_dir: Path, entry: AccountEntry) -> bool:
    """Both files of the account exist (the JSON is written last)."""
    md, js = review_paths(out_dir, entry)
    return md.exists() and js.exists()


@contextmanager
def _atomic_open(path: Path) -> Iterator[TextIO]:
    """A text file that appears at ``path`` complete or not at all."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _atomic_write(path: Path, text: str) -> None:
    with _atomic_open(path) as fh:
        fh.write(text)


def _remove_stale_temp_files(out_dir: Path) -> None:
    cutoff = time.time() - _STALE_TMP_SECONDS
    with os.scandir(out_dir) as it:
        for e in it:
            if e.name.startswith(_TMP_PREFIX) and e.name.endswith(_TMP_SUFFIX) and e.stat().st_mtime < cutoff:
                with suppress(FileNotFoundError):
                    os.unlink(e.path)


# --------------------------------------------------------------- one account
def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    raise TypeError(f"the review's JSON holds a {type(value).__name__}, which is not JSON-able")


def _review_one(entry: AccountEntry, review: ReviewFn, out_dir: Path, force: bool) -> IndexRow:
    """Review and write one account (in a worker); returns its small index row."""
    markdown, data = review(entry)
    if not isinstance(markdown, str) or not isinstance(data, dict):
        raise TypeError("the review function must return (markdown text, JSON-able dict)")
    body = json.dumps(data, ensure_ascii=False, indent=2, default=_json_default) + "\n"
    md_path, json_path = review_paths(out_dir, entry)
    if force:
        json_path.unlink(missing_ok=True)  # not "finished" again until the new JSON lands
    _atomic_write(md_path, markdown)
    _atomic_write(json_path, body)
    return _index_row(data, md_path, json_path, entry)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__)[:300]


# ------------------------------------------------------------------- the run
def run_reviews(
    entries: Iterable[AccountEntry],
    review: ReviewFn,
    out_dir: Path,
    *,
    concurrency: int = 4,
    force: bool = False,
    progress: ReviewProgress | None = None,
    total: int | None = None,
) -> ReviewRunReport:
    """Review every account of ``entries`` into ``out_dir``; see the module docstring.

    Args:
        entries: The accounts, consumed lazily (e.g. ``tools.book.list_accounts(...)``).
        review: Reviews one account; an exception fails that account only.
        out_dir: Where the reviews, ``index.md``, ``index.jsonl`` and ``failures.jsonl`` go.
        concurrency: Reviews running at once (threads).
        force: Review accounts again even when their files exist.
        progress: ``progress(done, total)`` after each account, skipped ones included.
        total: The number of accounts, for ``progress``; taken from ``len(entries)`` when
            it has one.

    Returns:
        The run's report; the failed accounts are also appended to ``failures.jsonl``.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, not {concurrency}")
    started = time.monotonic()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_files(out_dir)
    if total is None and isinstance(entries, Sized):
        total = len(entries)
    run = _Run(out_dir, progress, total)
    window = 2 * concurrency
    it = iter(entries)
    in_flight: dict[Future[IndexRow], AccountEntry] = {}
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="review") as pool:
        try:
            while True:
                while len(in_flight) >= window:
                    run.settle(wait(in_flight, return_when=FIRST_COMPLETED)[0], in_flight)
                entry = next(it, None)
                if entry is None:
                    break
                run.selected += 1
                if not force and is_finished(out_dir, entry):
                    run.skip()
                    continue
                fut = pool.submit(copy_context().run, _review_one, entry, review, out_dir, force)
                in_flight[fut] = entry
            while in_flight:
                run.settle(wait(in_flight, return_when=FIRST_COMPLETED)[0], in_flight)
        except BaseException:
            for fut in in_flight:
                fut.cancel()  # the running ones finish their account; the queued never start
            raise
        finally:
            run.close()
    write_index(out_dir, failed=run.failed, written=run.written, skipped=run.skipped)
    return ReviewRunReport(selected=run.selected, written=run.written, skipped=run.skipped,
                           failed=[(e.customer_id, msg) for e, msg in run.failed],
                           seconds=round(time.monotonic() - started, 3), out_dir=out_dir)


class _Run:
    """The main thread's bookkeeping of a run: counts, progress, index and failure logs."""

    def __init__(self, out_dir: Path, progress: ReviewProgress | None, total: int | None):
        self.out_dir, self.progress, self.total = out_dir, progress, total
        self.selected = self.written = self.skipped = self.done = 0
        self.failed: list[tuple[AccountEntry, str]] = []
        self._index = _IndexDb(out_dir)

    def skip(self) -> None:
        self.skipped += 1
        self._tick()

    def settle(self, finished: Iterable[Future[IndexRow]], in_flight: dict[Future[IndexRow], AccountEntry]) -> None:
        for fut in finished:
            entry = in_flight.pop(fut)
            exc = fut.exception()
            if exc is None:
                self.written += 1
                self._index.add(fut.result())
            elif isinstance(exc, Exception):
                self._fail(entry, _one_line(exc))
            else:
                raise exc  # KeyboardInterrupt / SystemExit inside a review: stop like a crash
            self._tick()

    def _fail(self, entry: AccountEntry, message: str) -> None:
        self.failed.append((entry, message))
        record = {"customer_id": entry.customer_id, "name": entry.name, "error": message,
                  "at": datetime.now(UTC).isoformat(timespec="seconds")}
        with (self.out_dir / FAILURES).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")

    def _tick(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)

    def close(self) -> None:
        self._index.close()


# ------------------------------------------------------------------ the index
def _dig(data: dict[str, Any], *paths: str) -> Any:
    """The first non-empty value among dotted paths (``customer.tier``, ``traits.tier``)."""
    for path in paths:
        v: Any = data
        for part in path.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        if v not in (None, ""):
            return v
    return None


class IndexRow(NamedTuple):
    """One account of the index: a few header fields of its review and its file names."""

    customer_id: str
    name: str
    health: str | None
    tier: str | None
    owner: str | None
    markdown: str
    json: str
    reviewed_at: str


def _index_row(data: dict[str, Any], md: Path, js: Path, entry: AccountEntry | None = None,
               reviewed_at: datetime | None = None) -> IndexRow:
    """The index row of a review, read from its JSON (whatever shape the review function gave it)."""
    return IndexRow(
        customer_id=entry.customer_id if entry else js.stem.rpartition("--")[2],
        name=(entry.name if entry else None) or _dig(data, "customer.name", "name") or md.stem.rpartition("--")[0],
        # the review's reference view (``review``) holds them; older files may have them at the top
        health=_dig(data, "health", "traits.health", "review.health", "review.traits.health"),
        tier=_dig(data, "customer.tier", "tier", "traits.tier", "review.customer.tier", "review.traits.tier"),
        owner=_dig(data, "customer.owner", "owner", "review.customer.owner") or (entry.owner if entry else None),
        markdown=md.name,
        json=js.name,
        reviewed_at=(reviewed_at or datetime.now(UTC)).isoformat(),
    )


def _row_from_file(js: Path) -> IndexRow | None:
    try:
        data = json.loads(js.read_text(encoding="utf-8"))
        mtime = datetime.fromtimestamp(js.stat().st_mtime, UTC)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    return _index_row(data, js.with_suffix(".md"), js, reviewed_at=mtime)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS review (
    json TEXT PRIMARY KEY, markdown TEXT NOT NULL, customer_id TEXT NOT NULL, name TEXT NOT NULL,
    health TEXT, tier TEXT, owner TEXT, reviewed_at TEXT NOT NULL,
    name_key TEXT NOT NULL, seen INTEGER NOT NULL DEFAULT 1
)"""
_COLUMNS = (*IndexRow._fields, "name_key")
_UPSERT = f"INSERT OR REPLACE INTO review ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"


class _IndexDb:
    """The index of an output directory: one row per review file, in SQLite (derived data)."""

    def __init__(self, out_dir: Path):
        path = out_dir / INDEX_DB
        try:
            self.conn = self._open(path)
        except sqlite3.DatabaseError:  # not a database any more: it is rebuilt from the review files
            path.unlink(missing_ok=True)
            self.conn = self._open(path)
        self.pending = 0

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(path, timeout=30)
        conn.execute(_SCHEMA)
        return conn

    def add(self, row: IndexRow) -> None:
        self.conn.execute(_UPSERT, (*row, _sort_key(row.name)))
        self.pending += 1
        if self.pending >= _INDEX_COMMIT_EVERY:
            self.conn.commit()
            self.pending = 0

    def reconcile(self, out_dir: Path) -> None:
        """Match the rows with the finished reviews on disk, reading back the ones with no row."""
        self.conn.execute("UPDATE review SET seen = 0")
        with os.scandir(out_dir) as it:
            for e in it:
                if not (e.name.endswith(".json") and "--" in e.name and (out_dir / (e.name[:-5] + ".md")).exists()):
                    continue
                if self.conn.execute("UPDATE review SET seen = 1 WHERE json = ?", (e.name,)).rowcount == 0:
                    if (row := _row_from_file(Path(e.path))) is not None:
                        self.add(row)
        self.conn.execute("DELETE FROM review WHERE seen = 0")
        self.conn.commit()

    def rows(self) -> Iterator[IndexRow]:
        """One row per customer (its newest review), in name order; streamed."""
        cur = self.conn.execute(f"SELECT {', '.join(IndexRow._fields[:-1])}, max(reviewed_at) FROM review "
                                "GROUP BY customer_id ORDER BY min(name_key), customer_id")
        for r in cur:
            yield IndexRow(*r)

    def count(self) -> int:
        return int(self.conn.execute("SELECT count(DISTINCT customer_id) FROM review").fetchone()[0])

    def close(self) -> None:
        self.conn.commit()
        self.conn.close()


def _sort_key(name: str) -> str:
    return unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().casefold() or name.casefold()


def _cell(v: Any) -> str:
    return "—" if v in (None, "") else str(v).replace("|", "\\|").replace("\n", " ")


def write_index(out_dir: Path, *, failed: Sequence[tuple[AccountEntry, str]] = (),
                written: int | None = None, skipped: int | None = None) -> Path:
    """(Re)write ``index.md`` from the index database, reconciled with the review files on disk."""
    db = _IndexDb(out_dir)
    try:
        db.reconcile(out_dir)
        n = db.count()
        summary = f"{n} account{'s' if n != 1 else ''} reviewed"
        if written is not None:
            summary += f"; this run: {written} written, {skipped or 0} already done, {len(failed)} failed"
        path = out_dir / INDEX_MD
        with _atomic_open(path) as fh:
            fh.write(f"# Account reviews\n\n_{summary} · index updated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC_\n\n"
                     "| Account | Health | Tier | Owner | Reviewed (UTC) | JSON |\n|---|---|---|---|---|---|\n")
            for r in db.rows():
                fh.write(f"| [{_cell(r.name)}]({r.markdown}) | {_cell(r.health)} | {_cell(r.tier)} | "
                         f"{_cell(r.owner)} | {_cell(r.reviewed_at[:16].replace('T', ' '))} | [json]({r.json}) |\n")
            if failed:
                fh.write("\n## Failed in this run\n\n| Account | Customer id | Error |\n|---|---|---|\n")
                fh.writelines(f"| {_cell(e.name)} | `{e.customer_id}` | {_cell(msg)} |\n" for e, msg in failed)
                fh.write(f"\n_Details in [{FAILURES}]({FAILURES}); re-run to retry them._\n")
    finally:
        db.close()
    return path
