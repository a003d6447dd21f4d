"""The rows a task detail is built from, read in one hop to the database connection's thread.

The detail is rebuilt after every change of a task (a rename, a turn's start and end, a git step)
and on every read of it that misses the API process's cache. Through SQLAlchemy that is five
statements, each its own hand-off between the event loop and the connection's thread (on a loaded
host the hand-offs, not SQLite, are what a rename waits for); here it is one. Every column of these
tables is an integer or text, which the plain driver returns exactly as SQLAlchemy does.
"""

from __future__ import annotations

import json
import sqlite3
from collections import namedtuple
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from foundry.db.engine import in_connection_thread


@dataclass
class DetailRows:
    """The task row (None before ``initialize``) and what each session shows."""

    task: Any
    sessions: list[Any]
    queued: dict[str, int]
    last_seq: dict[str, int]
    pending: dict[str, list[Any]]


async def read_detail_rows(conn: AsyncConnection) -> DetailRows:
    """Everything `actors.task.state.build_detail` needs, in ``conn``'s transaction, in one hop."""
    return await in_connection_thread(conn, _read)


@lru_cache(maxsize=16)
def _row_type(columns: tuple[str, ...]) -> Any:
    """A row type with attribute access, as SQLAlchemy rows have (one per column list)."""
    return namedtuple("Row", columns)  # type: ignore[misc]


def _rows(db: sqlite3.Connection, sql: str) -> list[Any]:
    cursor = db.execute(sql)
    row = _row_type(tuple(d[0] for d in cursor.description))
    return [row(*values) for values in cursor.fetchall()]


def _read(db: sqlite3.Connection) -> DetailRows:
    tasks = _rows(db, "SELECT * FROM task WHERE id = 1")
    sessions = _rows(db, "SELECT * FROM sessions ORDER BY created_at, name")
    queued = {
        str(session): int(count)
        for session, count in db.execute(
            "SELECT session_id, count(*) FROM messages WHERE status = 'queued' GROUP BY session_id"
        )
    }
    # Every event of a session topic is a transcript row with the topic's seq, so the topic seqs are
    # the transcripts' last seqs: a lookup in a small table instead of a scan of every event.
    last_seq = {
        str(topic).rsplit(":", 1)[1]: int(seq)
        for topic, seq in db.execute("SELECT topic, seq FROM foundry_topic_seq WHERE topic LIKE 'session:%'")
    }
    pending: dict[str, list[Any]] = {}
    for session, request_id, options_json in db.execute(
        "SELECT session_id, request_id, options_json FROM permission_requests"
        " WHERE status = 'pending' ORDER BY created_at"
    ):
        pending.setdefault(session, []).append({"requestId": request_id, "options": json.loads(options_json)})
    return DetailRows(tasks[0] if tasks else None, sessions, queued, last_seq, pending)
