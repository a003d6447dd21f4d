"""SQLAlchemy's aiosqlite adapter, with every statement run in one thread hop.

aiosqlite runs each call on the connection's own thread, and SQLAlchemy's adapter makes several
calls per statement: create a cursor, execute, fetch the rows, close the cursor. Each is a hand-off
between the event loop and that thread (a futex wake and a GIL hand-over both ways), and on this
workload the hand-offs cost more than SQLite itself: a command that runs five statements paid for
about fifteen of them. `OneHopCursor` does the whole statement (cursor, execute, fetch, close) in
one function on the connection's thread and keeps what SQLAlchemy reads afterwards (rows,
``description``, ``rowcount``, ``lastrowid``).

Plugged in as the engine's DBAPI module (`make_engine` passes `one_hop_dbapi` as ``module``), so
the dialect, pool, events and error translation stay SQLAlchemy's own.
"""

from __future__ import annotations

import collections
import sqlite3
from threading import Thread
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

__all__ = ["OneHopCursor", "one_hop_dbapi"]


class _Done:
    """What a statement left behind, read after its cursor is closed."""

    __slots__ = ("description", "lastrowid", "rowcount", "rows")

    def __init__(self, cursor: sqlite3.Cursor, rows: list[Any] | None) -> None:
        self.description = cursor.description
        self.rowcount = cursor.rowcount
        self.lastrowid = cursor.lastrowid
        self.rows = rows


def _run(db: sqlite3.Connection, operation: Any, parameters: Any, many: bool) -> _Done:
    """On the connection's thread: the whole statement, its cursor closed before returning."""
    cursor = db.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        rows = cursor.fetchall() if cursor.description else None
        return _Done(cursor, rows)
    finally:
        cursor.close()


class OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    """A buffered cursor whose statements each take one thread hop (see the module docstring)."""

    __slots__ = ()

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        # No aiosqlite cursor: each statement opens and closes a sqlite3 one on the thread.
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()

    @property
    def description(self) -> Any:
        return self._cursor.description if self._cursor is not None else None

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount if self._cursor is not None else -1

    @property
    def lastrowid(self) -> int:
        return self._cursor.lastrowid if self._cursor is not None else 0  # type: ignore[no-any-return]

    async def _async_soft_close(self) -> None:
        return  # nothing is open between statements

    def close(self) -> None:
        self._rows.clear()

    async def _statement(self, operation: Any, parameters: Any, many: bool) -> None:
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        async with self._adapt_connection._execute_mutex:
            done: _Done = await connection._execute(_run, connection._conn, operation, parameters, many)  # type: ignore[no-untyped-call]
        self._cursor = done  # type: ignore[assignment]
        self._rows = collections.deque(done.rows) if done.rows is not None else collections.deque()

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        await self._statement(operation, parameters, False)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> Any:
        await self._statement(operation, seq_of_parameters, True)

    def nextset(self) -> None:
        raise NotImplementedError("sqlite3 has no multiple result sets")

    def setinputsizes(self, *inputsizes: Any) -> None:
        return None


class _OneHopConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = OneHopCursor  # type: ignore[assignment]


class _OneHopDBAPI(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> _OneHopConnection:
        # As SQLAlchemy's own ``connect``, with the one-hop connection class.
        connection = self.aiosqlite.connect(*arg, **kw)
        thread = connection if isinstance(connection, Thread) else connection._thread
        thread.daemon = True
        return _OneHopConnection(self, await_(connection))


def one_hop_dbapi() -> AsyncAdapt_aiosqlite_dbapi:
    """The DBAPI module to give ``create_async_engine(..., module=...)``."""
    return _OneHopDBAPI(aiosqlite, sqlite3)
