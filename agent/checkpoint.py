"""Conversation state: a LangGraph checkpointer on the state database.

SQLite (default, the same file as long-term memory and the identity index) or
PostgreSQL when ``CUSTCTX_STATE_URL`` points at one. Checkpoints hold messages, the
resolved customer, the plan and slice *references* — never slice data.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from langgraph.checkpoint.base import BaseCheckpointSaver

from tools.memory import state_backend


@contextmanager
def open_checkpointer(url: str) -> Iterator[BaseCheckpointSaver]:
    """A SqliteSaver (``sqlite:///path``) or PostgresSaver (``postgresql+psycopg://...``), set up."""
    backend, target = state_backend(url, "conversation state")
    if backend == "sqlite":
        from langgraph.checkpoint.sqlite import SqliteSaver

        conn = sqlite3.connect(target, check_same_thread=False, timeout=30)
        try:
            saver = SqliteSaver(conn)
            saver.setup()
            yield saver
        finally:
            conn.close()
    else:
        from langgraph.checkpoint.postgres import PostgresSaver

        with PostgresSaver.from_conn_string(target) as pg_saver:
            pg_saver.setup()
            yield pg_saver
