"""Durable conversation threads: one writer per thread, and a turn cut short by a dead or
interrupted run rolled back before the thread's next turn.

**Rollback, not repair.** A run stopped in its tool step — Ctrl-C or an exception (LangGraph
saves the state where the run stopped), or a kill when the checkpointer writes every step —
leaves an assistant message whose tool calls nobody answered. OpenAI-compatible endpoints
reject such a history (HTTP 400: every assistant ``tool_calls`` must be followed by tool
messages answering each id), so every later turn of the thread would fail. Before a turn
runs, :func:`roll_back_interrupted_turns` removes each turn that did not end whole — its human
message and everything up to the next human message — with ``RemoveMessage``, written into
the checkpoint itself. A turn is whole when every tool call in it is answered and it ends
with the assistant's answer, so a turn stopped after its tools (no answer yet) goes too. We
roll back rather than append "interrupted" tool results because the user never saw an answer
to that turn: with the turn gone, the history holds only questions that were answered, and
the model is not left with a dangling question to guess about beside the new one. The
interrupted question is therefore dropped from the thread, not kept unanswered; it is logged
(warning) and returned, and the user asks it again (a retry usually does exactly that).
Nothing else is lost: slices live in long-term memory and their reads stay in the audit log.

The check looks only at messages (an assistant message with ``tool_calls`` or
``invalid_tool_calls`` — langchain-openai sends both as ``tool_calls`` — not answered by the
tool messages right after it, a tool message answering no call before it, a turn that does
not end with an answer), never at node names. The removal is applied as an update from
``START`` (every graph has it, and its writer takes the input schema, which carries
``messages``), followed by LangGraph's "clear the pending tasks" update (``None`` as ``END``),
so the stopped run's unfinished tasks and their partial writes are dropped as well. The rest of
the turn's state is the graph's: a turn starts by resetting its per-turn keys, and references
and plan steps are tagged with their turn number.

**One writer per thread.** Two processes running turns on one thread at once both fork the
same checkpoint and one turn silently disappears, so :class:`ThreadLocks` serialises turns per
thread: the second writer *waits* up to ``wait`` seconds (default 10, polling) for the first
to finish, then gives up with :class:`ThreadBusy` ("thread t-… is in use by another process;
try again"). The lock dies with its holder, so a killed process never blocks a thread:

- SQLite state: ``fcntl.flock`` on ``thread-locks/<thread>.lock`` beside the state database;
  the kernel releases it when the holder's file is closed, whichever way the process ends.
  Lock files are small and kept (removing one while another process waits on it would let two
  writers in).
- PostgreSQL state: a session advisory lock, ``pg_try_advisory_lock(<custctx>, hashtext(thread))``,
  on a connection of its own held for the turn; the server releases it when the session ends,
  also when the client dies. Two thread ids with the same 32-bit hash share a lock (they only
  wait for each other).
- In-memory SQLite (no other process can see it): a lock per thread in this process.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, RemoveMessage, ToolMessage
from langgraph.graph import END, START
from langgraph.pregel import Pregel
from langgraph.types import StateUpdate

from tools.memory import state_backend

log = logging.getLogger(__name__)

WAIT_SECONDS = 10.0
"""How long a turn waits for another process's turn on the same thread before ThreadBusy."""
POLL_SECONDS = 0.05
BUSY = "thread {thread_id} is in use by another process; try again"
ADVISORY_NAMESPACE = 0x63637478  # "cctx": the first key of custctx's two-key advisory locks
_SAFE = re.compile(r"[^A-Za-z0-9_-]")

TryLock = Callable[[], bool]


class ThreadBusy(RuntimeError):
    """Another process is running a turn on this thread (and did not finish within the wait)."""


class ThreadLocks:
    """One writer per conversation thread, across processes, for one state database."""

    def __init__(self, state_url: str, *, wait: float = WAIT_SECONDS):
        self.backend, self.target = state_backend(state_url, "conversation state")
        self.wait = wait

    @contextmanager
    def hold(self, thread_id: str) -> Iterator[None]:
        """Hold ``thread_id`` for the block: wait up to ``self.wait`` seconds for another holder.

        Raises:
            ThreadBusy: another process still holds the thread when the wait is over.
        """
        with self._lock(thread_id) as try_lock:
            deadline = time.monotonic() + self.wait
            while not try_lock():
                if time.monotonic() >= deadline:
                    raise ThreadBusy(BUSY.format(thread_id=thread_id))
                time.sleep(POLL_SECONDS)
            yield

    def _lock(self, thread_id: str) -> AbstractContextManager[TryLock]:
        if self.backend == "postgresql":
            return _advisory_lock(self.target, thread_id)
        if self.target == ":memory:":
            return _local_lock(thread_id)
        return _file_lock(lock_path(Path(self.target), thread_id))


def lock_path(state_db: Path, thread_id: str) -> Path:
    """The lock file of ``thread_id`` beside the SQLite state database ``state_db``: a readable
    prefix of the id and a digest of all of it (ids are whatever a caller passed)."""
    digest = hashlib.sha256(thread_id.encode("utf-8")).hexdigest()[:16]
    return state_db.parent / "thread-locks" / f"{_SAFE.sub('_', thread_id)[:60]}.{digest}.lock"


@contextmanager
def _file_lock(path: Path) -> Iterator[TryLock]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def try_lock() -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    try:
        yield try_lock
    finally:
        os.close(fd)  # releases the lock (so does the kernel when a process dies holding it)


@contextmanager
def _advisory_lock(url: str, thread_id: str) -> Iterator[TryLock]:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        def try_lock() -> bool:
            row = conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))",
                               (ADVISORY_NAMESPACE, thread_id)).fetchone()
            return bool(row and row[0])

        yield try_lock  # closing the session releases the lock


_local: dict[str, threading.Lock] = {}
_local_guard = threading.Lock()


@contextmanager
def _local_lock(thread_id: str) -> Iterator[TryLock]:
    with _local_guard:
        lock = _local.setdefault(thread_id, threading.Lock())
    held = False

    def try_lock() -> bool:
        nonlocal held
        held = lock.acquire(blocking=False)
        return held

    try:
        yield try_lock
    finally:
        if held:
            lock.release()


# ---------------------------------------------------------------------- rollback
def broken_calls(messages: Sequence[BaseMessage]) -> list[int]:
    """Positions that break the tool-call pairing rule: an assistant message whose tool calls
    (valid or invalid) are not all answered by the tool messages right after it, and a tool
    message that answers no call of the assistant message its run of tool messages follows."""
    broken = []
    for i, m in enumerate(messages):
        if isinstance(m, AIMessage):
            asked = {c["id"] for c in [*m.tool_calls, *m.invalid_tool_calls] if c.get("id")}
            answered = set()
            for after in messages[i + 1:]:
                if not isinstance(after, ToolMessage):
                    break
                answered.add(after.tool_call_id)
            if not asked <= answered:
                broken.append(i)
        elif isinstance(m, ToolMessage):
            head = i - 1
            while head >= 0 and isinstance(messages[head], ToolMessage):
                head -= 1
            call = messages[head] if head >= 0 else None
            ids = {c["id"] for c in [*call.tool_calls, *call.invalid_tool_calls]} \
                if isinstance(call, AIMessage) else set()
            if m.tool_call_id not in ids:
                broken.append(i)
    return broken


def interrupted_turns(messages: Sequence[BaseMessage]) -> list[int]:
    """Positions of the messages of every turn that did not end whole. A turn runs from a human
    message up to the next one; it is whole when it breaks no pairing (:func:`broken_calls`)
    and ends with the assistant's answer (a message without tool calls). Before the first human
    message, only a break and what follows it count."""
    questions = [i for i, m in enumerate(messages) if isinstance(m, HumanMessage)]
    broken = broken_calls(messages)
    first = questions[0] if questions else len(messages)
    doomed = set(range(min(broken), first)) if broken and min(broken) < first else set()
    for start, end in zip(questions, [*questions[1:], len(messages)], strict=False):  # none: no turns
        last = messages[end - 1]
        answered = isinstance(last, AIMessage) and not last.tool_calls and not last.invalid_tool_calls
        if not answered or any(start <= b < end for b in broken):
            doomed.update(range(start, end))
    return sorted(doomed)


def roll_back_interrupted_turns(graph: Pregel[Any, Any, Any, Any], thread_id: str) -> list[str]:
    """Remove the turns of ``thread_id`` that a stopped run left unfinished (unanswered tool
    calls, no answer), in its checkpoint, and drop that run's pending tasks. Call it while
    holding the thread (:meth:`ThreadLocks.hold`): a live run's turn is unfinished too.

    Returns:
        The questions of the turns rolled back (empty: the thread was consistent).
    """
    config: Any = {"configurable": {"thread_id": thread_id}}
    snapshot = graph.get_state(config)
    values = snapshot.values if snapshot and isinstance(snapshot.values, dict) else {}
    messages = list(values.get("messages") or [])
    doomed = [messages[i] for i in interrupted_turns(messages)]
    if not doomed:
        return []
    removals = [RemoveMessage(id=m.id) for m in doomed if m.id]
    graph.bulk_update_state(config, [[StateUpdate({"messages": removals}, START)], [StateUpdate(None, END)]])
    questions = [str(m.text) for m in doomed if isinstance(m, HumanMessage)]
    log.warning("thread %s: rolled back %d interrupted turn(s), ask again: %s", thread_id, len(questions),
                "; ".join(repr(q) for q in questions) or "(no question)")
    return questions
