"""A bulk read's chat mentions split the chunk's names evenly over the statements, so the
chunks of a refresh (500 customers, the last one fewer) run one statement size — compiled
once — instead of one size per remainder (``tools.sources.chat.MentionLookup``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from tools.sources.chat import NAMES_PER_STATEMENT, MentionLookup


class _Entity:
    parts = ("one part",)


def _batches(n: int, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    seen: list[list[str]] = []

    def match(self: Any, conn: Any, names: Any, out: Any, tamper: Any) -> None:
        seen.append(list(names))

    monkeypatch.setattr(MentionLookup, "_match", match)
    names = [f"name-{i:05d}" for i in range(n)]
    got = MentionLookup(_Entity(), datetime(2026, 1, 1), datetime(2026, 2, 1))(None, names)  # type: ignore[arg-type]
    assert set(got) == set(names)
    assert [n for b in seen for n in b] == names, "every name matched once, in order"
    assert all(len(b) <= NAMES_PER_STATEMENT for b in seen)
    return seen


def _padded(batch: list[str]) -> int:  # the statement size MentionLookup._match compiles for
    return min(NAMES_PER_STATEMENT, 1 << max(0, len(batch) - 1).bit_length())


@pytest.mark.parametrize("n", [0, 1, 7, 399, 400, 401, 462, 500, 799, 800, 801, 2003])
def test_names_are_split_evenly(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    batches = _batches(n, monkeypatch)
    assert len(batches) == -(-n // NAMES_PER_STATEMENT), "no more statements than before"
    if batches:
        assert max(map(len, batches)) - min(map(len, batches)) <= 1


def test_a_full_and_a_short_chunk_share_one_statement_size(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = {_padded(b) for n in (500, 462, 420) for b in _batches(n, monkeypatch)}
    assert len(sizes) == 1
