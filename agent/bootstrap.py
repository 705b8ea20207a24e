"""Getting a process ready: the embedded warehouse seeded on first use, the identity
index current (kept from the changed rows: ``tools.refresh.index``), the clock chosen."""

from __future__ import annotations

import atexit
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tools.identity import IdentityIndex
from tools.refresh.index import maintain_index
from tools.settings import Settings
from tools.sources.base import ReadClock
from tools.sources.faults import parse_faults
from tools.sources.registry import fixture_meta, resolve_as_of, uses_embedded

if TYPE_CHECKING:
    from tools.memory import ContextMemory

Progress = Callable[[str, int, int], None]


def ensure_warehouse(settings: Settings, progress: Progress | None = None) -> bool:
    """Create and seed the embedded fixture warehouse on first use. True if it seeded now."""
    if not uses_embedded(settings):
        return False
    url = settings.embedded_warehouse_url
    if fixture_meta(url):
        return False
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    from tools.embedded.generate import seed  # the fixtures are only needed on first use

    seed(url, customers=settings.seed_customers, seed=settings.seed, progress=progress)
    return True


@dataclass(frozen=True)
class Ready:
    settings: Settings
    index: IdentityIndex
    clock: ReadClock
    memory: ContextMemory | None = None


_open_stores = ExitStack()
atexit.register(_open_stores.close)


def open_memory(settings: Settings) -> ContextMemory:
    """Long-term memory on the state database, open for the life of the process."""
    # LangGraph's store (and LangChain under it): imported only by the commands that read memory
    from tools.memory import ContextMemory, open_store, state_backend

    url = settings.state_db_url
    backend, target = state_backend(url, "long-term memory")
    if backend == "sqlite" and target != ":memory:":  # opened on the first write; reads go to the file
        return ContextMemory.of(None, settings, sqlite_path=target,
                             opener=lambda: _open_stores.enter_context(open_store(url)))
    return ContextMemory.of(_open_stores.enter_context(open_store(url)), settings)


def ready(settings: Settings | None = None, progress: Progress | None = None, memory: bool = False) -> Ready:
    """Settings → a seeded warehouse, a current identity index, a read context (and memory)."""
    settings = settings or Settings()
    parse_faults(settings.faults)  # a bad fault spec is a one-line error before any work
    settings.home.mkdir(parents=True, exist_ok=True)
    ensure_warehouse(settings, progress)
    # in proportion to what changed since the last update (a build only when there is no index,
    # or a source's URL or mapping changed); the last good index is kept while a source is down
    maintain_index(settings, progress)
    return Ready(settings=settings, index=IdentityIndex.for_settings(settings),
                 clock=ReadClock(as_of=resolve_as_of(settings), settings=settings),
                 memory=open_memory(settings) if memory else None)
