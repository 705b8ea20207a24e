"""Durable conversation threads, with real processes: a turn cut short in its tool step (Ctrl-C,
SIGKILL) is rolled back before the thread's next turn (which a model enforcing OpenAI's
tool-call pairing then accepts), two processes asking on one thread at once lose no turn, and
a lock held by a killed process blocks nobody. Nothing here depends on the assistant graph's node
names: the tests look at messages, and the kill happens in the read path the tool step uses."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from agent.runs import Runner
from agent.threads import ThreadBusy, ThreadLocks, interrupted_turns, lock_path

from .conftest import settings_for
from .fakes import ScriptedChatModel

ROOT = Path(__file__).parents[1]
CHILD = "import sys; from tests.test_threads import child; child(sys.argv[1:])"
ROUNDS = 8


# ---------------------------------------------------------------- the pairing rule
def pairing_problems(messages: list[BaseMessage]) -> list[str]:
    """What an endpoint enforcing OpenAI's rule answers with HTTP 400: an assistant message with
    ``tool_calls`` not followed by tool messages answering each id, or a tool message that
    answers no call of the assistant message before it."""
    problems: list[str] = []
    waiting: set[str] = set()  # ids the last assistant message asked for, not yet answered
    for m in messages:
        if isinstance(m, ToolMessage):
            if m.tool_call_id not in waiting:
                problems.append(f"tool message {m.tool_call_id} answers no preceding tool call")
            waiting.discard(m.tool_call_id)
            continue
        if waiting:
            problems.append(f"assistant tool_calls {sorted(waiting)} not answered")
        waiting = {c["id"] for c in [*m.tool_calls, *m.invalid_tool_calls] if c.get("id")} \
            if isinstance(m, AIMessage) else set()
    if waiting:
        problems.append(f"assistant tool_calls {sorted(waiting)} not answered")
    return problems


def strict_script(messages: list[BaseMessage], tools: list[str]) -> AIMessage:
    """A model behind a strict endpoint: refuses a conversation that breaks the pairing rule;
    otherwise reads ``billing.status`` once per question (with the tool it is given), then answers."""
    if problems := pairing_problems(messages):
        raise ValueError(f"HTTP 400 invalid_request_error: {problems[0]}")
    last_question = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=0)
    reader = sorted(tools, key=lambda t: ("billing" not in t, "slice" not in t))[:1]  # whatever the tools' names
    if reader and not any(isinstance(m, ToolMessage) for m in messages[last_question:]):
        return AIMessage(content="", tool_calls=[{"name": reader[0], "args": {"slices": ["billing.status"]},
                                                  "id": f"call-{uuid.uuid4().hex[:8]}", "type": "tool_call"}])
    return AIMessage(content="Acme Corp is past due [billing.status].")


# ------------------------------------------------------------------ child processes
def child(argv: list[str]) -> None:
    """What the test's subprocesses run: ``stop-mid-turn``, ``asker`` or ``hold``."""
    mode, *args = argv
    if mode == "hold":  # hold a thread's lock until killed
        url, thread = args
        with ThreadLocks(url).hold(thread):
            print("held", flush=True)
            sys.stdin.readline()
        return
    warehouse, state_dir = args[:2]
    with Runner(settings_for(warehouse, Path(state_dir))) as runner:
        if mode == "stop-mid-turn":
            _stop_mid_turn(runner, *args[2:])
        elif mode == "asker":
            _asker(runner)


def _stop_mid_turn(runner: Runner, thread: str, how: str) -> None:
    """One whole turn, then a second one stopped in its tool step, after the model asked for
    a tool: ``ctrl-c`` (SIGINT, with the runner as it is: LangGraph saves the state where the
    run stopped) or ``sigkill`` (with every step checkpointed before the next starts, durability
    "sync", so the kill leaves the tool-call step behind; the Runner itself checkpoints when a
    turn ends, and a kill then leaves nothing of the turn)."""
    import tools.context.read as read_path

    runner.ask("What's their billing status?", "acme.com", thread, chat_model=ScriptedChatModel(strict_script))
    if how == "sigkill":
        invoke = runner.assistant.invoke
        runner.assistant.invoke = lambda *a, **kw: invoke(*a, **{**kw, "durability": "sync"})  # type: ignore[method-assign]

    def stop_in_the_tool_step(*args, **kwargs):
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        signal.raise_signal(signal.SIGINT)
        raise KeyboardInterrupt  # in a worker thread: stop this tool call too

    read_path.read_slice = stop_in_the_tool_step  # every slice read of a turn goes through it
    runner.ask("Has their card been declined?", None, thread, chat_model=ScriptedChatModel(strict_script))
    os._exit(4)  # not reached


def _asker(runner: Runner) -> None:
    """Ask each question read from stdin (``thread<TAB>question``); one JSON line per question
    on stdout. On the way it reports ``blocked`` when another process holds the thread, and
    ``in-turn`` once its turn has started (the model is called), then waits for ``go``: the test
    lets a turn go on only when the other process is in its turn too, or blocked."""
    lock = runner.threads._lock

    @contextmanager
    def reporting(thread_id: str) -> Iterator[Callable[[], bool]]:
        with lock(thread_id) as try_lock:
            told = False

            def attempt() -> bool:
                nonlocal told
                if not (got := try_lock()) and not told:
                    print("blocked", flush=True)
                    told = True
                return got

            yield attempt

    runner.threads._lock = reporting  # type: ignore[method-assign]

    def script(messages: list[BaseMessage], tools: list[str]) -> AIMessage:
        reply = strict_script(messages, tools)
        if reply.tool_calls:  # the turn's first model call: the thread's state is read
            print("in-turn", flush=True)
            assert sys.stdin.readline().strip() == "go"
        return reply

    print("ready", flush=True)
    for line in sys.stdin:
        thread, question = line.rstrip("\n").split("\t")
        try:
            res = runner.ask(question, "acme.com", thread, chat_model=ScriptedChatModel(script))
            print(json.dumps({"question": question, "error": res["error"]}), flush=True)
        except ThreadBusy as exc:
            print(json.dumps({"question": question, "busy": str(exc)}), flush=True)


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], cwd=ROOT, text=True, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


# -------------------------------------------------------------------------- tests
@pytest.fixture
def settings(sqlite_warehouse, tmp_path):
    s = settings_for(sqlite_warehouse, tmp_path)
    with Runner(s) as runner:  # state database, index, memory and audit log set up before any child starts
        runner.ask("What's their billing status?", "acme.com", "t-setup")
    return s


def _messages(runner: Runner, thread: str) -> list[BaseMessage]:
    return list(runner.assistant.get_state({"configurable": {"thread_id": thread}}).values.get("messages") or [])


def _questions(messages: list[BaseMessage]) -> list[str]:
    return [str(m.content) for m in messages if isinstance(m, HumanMessage)]


@pytest.mark.parametrize("how", ["ctrl-c", "sigkill"])
def test_a_turn_stopped_in_its_tool_step_is_rolled_back_before_the_next_turn(how, settings, sqlite_warehouse):
    thread = f"t-stopped-{how}"
    proc = spawn("stop-mid-turn", sqlite_warehouse, str(settings.home), thread, how)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == -(signal.SIGKILL if how == "sigkill" else signal.SIGINT), stderr[-2000:]
    with Runner(settings) as runner:
        broken = _messages(runner, thread)
        assert pairing_problems(broken), "the checkpoint holds the stopped turn's unanswered tool call"
        assert _questions(broken) == ["What's their billing status?", "Has their card been declined?"]
        runner.threads.wait = 0  # the lock ended with the process that held it: no waiting
        model = ScriptedChatModel(strict_script)  # raises if it is shown a broken conversation
        res = runner.ask("Is Acme paying?", None, thread, chat_model=model)
        assert res["error"] is None and "past due" in res["answer"]
        assert model.calls, "the strict model was asked"
        after = _messages(runner, thread)
        snapshot = runner.assistant.get_state({"configurable": {"thread_id": thread}})
    assert pairing_problems(after) == []
    # the interrupted turn is gone whole (its question too); the turn before it is intact
    assert _questions(after) == ["What's their billing status?", "Is Acme paying?"]
    first_turn = next(i for i, m in enumerate(broken) if i and isinstance(m, HumanMessage))
    assert after[:first_turn] == broken[:first_turn]
    assert not snapshot.next, "the stopped run's pending tasks were dropped"
    answers = [m for m in after if isinstance(m, AIMessage) and not m.tool_calls]
    assert len(answers) == 2 and isinstance(after[-1], AIMessage) and not after[-1].tool_calls


def _race(workers: list[subprocess.Popen[str]], lines: queue.Queue[tuple[int, str]], thread: str) -> list[dict]:
    """One round: both workers ask on ``thread`` at once (``lines``: what they print); a turn goes
    on once every worker is in its turn or blocked by the other's, so without the lock both
    turns would run side by side, every round."""
    for n, w in enumerate(workers):
        assert w.stdin is not None
        w.stdin.write(f"{thread}\tWhat's their billing status? (asked by worker {n} on {thread})\n")
        w.stdin.flush()
    state: dict[int, str] = {}
    replies: dict[int, dict] = {}
    while len(replies) < len(workers):
        n, line = lines.get(timeout=60)
        assert line, f"worker {n} exited: {workers[n].communicate(timeout=30)[1][-2000:]}"
        if line.startswith("{"):
            replies[n] = json.loads(line)
            state[n] = "done"
        else:
            state[n] = line.strip()  # "in-turn" or "blocked"
        if len(state) == len(workers):  # every worker has shown where it is
            for m, where in state.items():
                if where == "in-turn":
                    workers[m].stdin.write("go\n")  # type: ignore[union-attr]
                    workers[m].stdin.flush()  # type: ignore[union-attr]
                    state[m] = "going"
    return [replies[n] for n in range(len(workers))]


def _pump(n: int, out: IO[str], lines: queue.Queue[tuple[int, str]]) -> None:
    """Every line worker ``n`` prints, then "" when it exits."""
    for line in out:
        lines.put((n, line))
    lines.put((n, ""))


def test_two_processes_asking_on_one_thread_lose_no_turn(settings, sqlite_warehouse):
    workers = [spawn("asker", sqlite_warehouse, str(settings.home)) for _ in range(2)]
    try:
        lines: queue.Queue[tuple[int, str]] = queue.Queue()
        for n, w in enumerate(workers):
            assert w.stdout is not None and w.stdout.readline().strip() == "ready"
            threading.Thread(target=_pump, args=(n, w.stdout, lines), daemon=True).start()
        replies = [_race(workers, lines, f"t-race-{k}") for k in range(ROUNDS)]
    finally:
        for w in workers:
            if w.stdin is not None:
                w.stdin.close()
            w.wait(timeout=60)
    with Runner(settings) as runner:
        for k, round_replies in enumerate(replies):
            messages = _messages(runner, f"t-race-{k}")
            answered = [r["question"] for r in round_replies if "busy" not in r]
            for r in round_replies:
                assert r.get("error") is None
                assert r.get("busy", "") in ("", f"thread t-race-{k} is in use by another process; try again")
            assert sorted(_questions(messages)) == sorted(answered), f"round {k}: a turn was lost"
            assert answered, f"round {k}: nobody got through"
            assert pairing_problems(messages) == []
            # every question is followed by its answer before the next question
            starts = [i for i, m in enumerate(messages) if isinstance(m, HumanMessage)] + [len(messages)]
            for b in starts[1:]:
                assert isinstance(messages[b - 1], AIMessage) and not messages[b - 1].tool_calls, f"round {k}"


def _held(url: str, thread: str) -> subprocess.Popen[str]:
    """A process holding ``thread``'s lock (until it is killed)."""
    holder = spawn("hold", url, thread)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held", holder.communicate()[1]
    return holder


def _kill(holder: subprocess.Popen[str]) -> None:
    os.kill(holder.pid, signal.SIGKILL)
    holder.communicate(timeout=30)
    assert holder.returncode == -signal.SIGKILL


def test_a_turn_on_a_thread_in_use_is_refused_and_a_killed_holder_blocks_no_one(settings):
    holder = _held(settings.state_db_url, "t-busy")
    try:
        with Runner(settings) as runner:
            runner.threads.wait = 0.2
            with pytest.raises(ThreadBusy) as busy:
                runner.ask("What's their billing status?", "acme.com", "t-busy")
            assert str(busy.value) == "thread t-busy is in use by another process; try again"
            assert _messages(runner, "t-busy") == [], "a refused turn writes nothing"
            assert runner.ask("What's their billing status?", "acme.com", "t-other")["error"] is None
            _kill(holder)
            runner.threads.wait = 0  # the kernel released the dead holder's lock: no waiting
            res = runner.ask("What's their billing status?", "acme.com", "t-busy")
            assert res["error"] is None and _questions(_messages(runner, "t-busy")) == ["What's their billing status?"]
    finally:
        holder.kill()
        holder.communicate(timeout=30)
    assert lock_path(settings.home / "state.sqlite", "t-busy").exists()


def test_a_postgres_advisory_lock_held_by_a_killed_process_blocks_no_one(pg_url):
    holder = _held(pg_url, "t-held")
    try:
        with pytest.raises(ThreadBusy, match=r"^thread t-held is in use by another process; try again$"):
            with ThreadLocks(pg_url, wait=0.2).hold("t-held"):
                pass
        with ThreadLocks(pg_url, wait=0).hold("t-other"):  # other threads are not held up
            pass
        _kill(holder)
    finally:
        holder.kill()
        holder.communicate(timeout=30)
    started = time.monotonic()
    with ThreadLocks(pg_url, wait=5).hold("t-held"):  # the server ends the dead session, and its lock
        pass
    assert time.monotonic() - started < 5


def test_the_cli_reports_a_busy_thread_in_one_line(monkeypatch, capsys):
    from agent.interfaces.cli import app

    def busy() -> None:
        raise ThreadBusy("thread t-1 is in use by another process; try again")

    monkeypatch.setattr(app, "app", busy)
    with pytest.raises(SystemExit) as exit_:
        app.main()
    assert exit_.value.code == 1
    assert capsys.readouterr().err == "error: thread t-1 is in use by another process; try again\n"


def _call(*ids: str, invalid: str | None = None) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": "read_billing", "args": {}, "id": i, "type": "tool_call"}
                                             for i in ids],
                     invalid_tool_calls=[{"name": "read_x", "args": "{", "id": invalid, "error": None,
                                          "type": "invalid_tool_call"}] if invalid else [])


def _tool(call_id: str) -> ToolMessage:
    return ToolMessage("{}", tool_call_id=call_id)


@pytest.mark.parametrize(("messages", "doomed"), [
    ([HumanMessage("q1"), _call("a"), _tool("a"), AIMessage("answer 1")], []),
    ([HumanMessage("q1"), _call("a"), _tool("a"), AIMessage("answer 1"), HumanMessage("q2"), _call("b")], [4, 5]),
    ([HumanMessage("q1"), _call("a", "b"), _tool("a")], [0, 1, 2]),  # half answered
    ([HumanMessage("q1"), _call("a", invalid="x"), _tool("a"), AIMessage("answer 1")], [0, 1, 2, 3]),
    ([HumanMessage("q1"), _call("a"), HumanMessage("q2"), _call("b"), _tool("b"), AIMessage("answer 2")], [0, 1]),
    ([HumanMessage("q1"), _call("a"), _tool("a"), _tool("z"), AIMessage("answer 1")], [0, 1, 2, 3, 4]),
    ([SystemMessage("s"), _call("a")], [1]),  # no question before it: from the break on
    ([HumanMessage("q1"), _call("a"), _tool("a")], [0, 1, 2]),  # stopped after its tools, before the answer
    ([HumanMessage("q1"), _call("a"), _tool("a"), AIMessage("answer 1"), HumanMessage("q2")], [4]),
], ids=["consistent", "last-turn", "half-answered", "invalid-call", "earlier-turn", "orphan-tool", "no-question",
        "no-answer", "unanswered-question"])
def test_interrupted_turns_are_found_from_the_messages_alone(messages, doomed):
    assert interrupted_turns(messages) == doomed
    kept = [m for i, m in enumerate(messages) if i not in doomed]
    assert pairing_problems(kept) == []
