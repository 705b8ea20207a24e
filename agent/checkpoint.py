"""Conversation state: a LangGraph checkpointer on the state database.

SQLite (default, the same file as long-term memory and the identity index) or
PostgreSQL when ``CUSTCTX_STATE_URL`` points at one. Checkpoints hold messages, the
resolved customer, the plan and slice *references* — never slice data.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from langgraph.checkpoint.base import BaseCheckpointSaver
from sqlalchemy.engine import make_url


@contextmanager
def open_checkpointer(url: str) -> Iterator[BaseCheckpointSaver]:
    """A SqliteSaver (``sqlite:///path``) or PostgresSaver (``postgresql+psycopg://...``), set up."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        path = u.database or ":memory:"
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        from langgraph.checkpoint.sqlite import SqliteSaver

        conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
        try:
            saver = SqliteSaver(conn)
            saver.setup()
            yield saver
        finally:
            conn.close()
    elif u.get_backend_name() == "postgresql":
        from langgraph.checkpoint.postgres import PostgresSaver

        libpq = u.set(drivername="postgresql").render_as_string(hide_password=False)
        with PostgresSaver.from_conn_string(libpq) as saver:
            saver.setup()
            yield saver
    else:
        raise ValueError(f"conversation state needs SQLite or PostgreSQL, not {u.get_backend_name()}")
