"""The refresh pauses the cyclic garbage collector while a chunk runs, and restores it after
(``tools.refresh.runner.gc_paused``): a chunk's live rows would otherwise start full collections
of the heap over and over (about a third of a full refresh's CPU)."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from tools.refresh import runner


@pytest.fixture(autouse=True)
def _gc_restored() -> Iterator[None]:
    was = gc.isenabled()
    yield
    (gc.enable if was else gc.disable)()


def test_paused_inside_and_restored_after() -> None:
    gc.enable()
    with runner.gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_restored_after_an_exception() -> None:
    gc.enable()
    with pytest.raises(RuntimeError), runner.gc_paused():
        raise RuntimeError("chunk failed")
    assert gc.isenabled()


def test_nested_and_overlapping_pauses_share_one() -> None:
    gc.enable()
    outer = runner.gc_paused()
    outer.__enter__()
    with runner.gc_paused():
        assert not gc.isenabled()
    assert not gc.isenabled(), "the inner pause ended while the outer one still runs"
    outer.__exit__(None, None, None)
    assert gc.isenabled()


def test_overlapping_pauses_in_threads() -> None:
    gc.enable()
    entered, release = threading.Barrier(3), threading.Event()

    def chunk() -> None:
        with runner.gc_paused():
            entered.wait()
            release.wait()

    threads = [threading.Thread(target=chunk) for _ in range(2)]
    for t in threads:
        t.start()
    entered.wait()
    assert not gc.isenabled()
    release.set()
    for t in threads:
        t.join()
    assert gc.isenabled()


def test_a_disabled_collector_stays_disabled() -> None:
    gc.disable()
    with runner.gc_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_a_chunk_runs_with_the_collector_paused() -> None:
    gc.enable()
    seen: list[bool] = []

    class Fake:
        def _run(self, chunk: object, tally: object) -> None:
            seen.append(gc.isenabled())

    runner._Chunks.run(Fake(), [], None)  # type: ignore[arg-type]
    assert seen == [False]
    assert gc.isenabled()
