"""A host's intake file: commands acknowledged to their senders and not yet run.

A command is acknowledged once it is durable. Writing it into the instance's own database would
wait for that file's single writer, which is the command loop, busy for a whole command transaction
at a time (measured: 19.5 ms of a 24 ms webhook acknowledgement was that wait). So the intake is a
separate SQLite file per host shard, written only from the host's event loop thread with plain
``sqlite3`` (tens of microseconds, never waiting on anything). The command loop moves each command
into the instance's ``foundry_mailbox`` in the command's own transaction, then deletes its inbox row.
A crash between the two leaves a row whose command the mailbox already holds: the instance's next
wake recognises it by command id and drops it, so nothing runs twice.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    command_id TEXT NOT NULL,
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (key, command_id)
)
"""


@dataclass(frozen=True)
class Queued:
    """A command waiting in the inbox."""

    command_id: str
    name: str
    body: str
    created_at: int


class Inbox:
    """The inbox file of one host (role, shard); every method runs on the host's loop thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit: each statement is its own transaction. Only this connection ever writes
            # the file, so the busy timeout is there for an operator's reader, not for contention.
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            # SQLite's automatic checkpoint stays on: it syncs the file every few hundred writes (a
            # 15-30 ms pause here, measured), but checkpoints run from a thread never caught up with
            # a steady stream of writes, and a WAL that is never fully copied back never starts
            # over: it grew by 10 KB a write (tests/runtime/test_inbox.py keeps it small).
            conn.execute(_SCHEMA)
            self._conn = conn
        return self._conn

    def add(self, key: str, command_id: str, name: str, body: str, created_at: int) -> bool:
        """Record a command; False when this key already has one with that id waiting."""
        cursor = self._db().execute(
            "INSERT OR IGNORE INTO inbox(key, command_id, name, body, created_at) VALUES (?, ?, ?, ?, ?)",
            (key, command_id, name, body, created_at),
        )
        return cursor.rowcount == 1

    def remove(self, key: str, command_ids: list[str]) -> None:
        """Forget commands that the instance's mailbox now holds."""
        conn = self._db()
        for start in range(0, len(command_ids), 500):
            chunk = command_ids[start : start + 500]
            conn.execute(
                f"DELETE FROM inbox WHERE key = ? AND command_id IN ({','.join('?' * len(chunk))})",
                (key, *chunk),
            )

    def waiting(self, key: str) -> list[Queued]:
        """The commands waiting for ``key``, in arrival order."""
        rows = self._db().execute(
            "SELECT command_id, name, body, created_at FROM inbox WHERE key = ? ORDER BY seq", (key,)
        )
        return [Queued(*row) for row in rows]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def keys_with_waiting_commands(path: Path) -> list[str]:
    """The keys that have commands in the inbox file at ``path`` (from any thread; none if absent)."""
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        return [row[0] for row in conn.execute("SELECT DISTINCT key FROM inbox")]
    except sqlite3.OperationalError as exc:
        # Created but the table not yet written (a crash right at first use): nothing waits there.
        log.debug("inbox %s has no table yet (%s)", path, exc)
        return []
    finally:
        conn.close()


def read_all(path: Path) -> list[tuple[str, Queued]]:
    """Every waiting command of the inbox file at ``path`` as (key, command), in arrival order."""
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        rows = conn.execute("SELECT key, command_id, name, body, created_at FROM inbox ORDER BY seq")
        return [(row[0], Queued(*row[1:])) for row in rows]
    except sqlite3.OperationalError as exc:
        log.debug("inbox %s has no table yet (%s)", path, exc)
        return []
    finally:
        conn.close()
