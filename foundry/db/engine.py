"""Async SQLite engines, one per logical actor, in WAL mode."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.util import await_

from foundry.db.one_hop import one_hop_dbapi

T = TypeVar("T")

log = logging.getLogger(__name__)

#: Execution option of engines and connections that only read (see `read_only`).
READ_ONLY_OPTION = "foundry_read_only"
NO_TRANSACTION_OPTION = "foundry_no_transaction"

# WAL lets readers run beside the single writer; NORMAL is durable across process crashes (a power
# loss may drop the last transactions), measured at ~0.02 ms per commit here against 0.15 ms for FULL.
_PRAGMAS = ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=5000", "foreign_keys=ON")


def make_engine(path: Path) -> AsyncEngine:
    """An aiosqlite engine for one database file, with Foundry's pragmas on every connection.

    Every SQLAlchemy transaction is a real SQLite transaction, DDL included: the sqlite3 driver's
    default (legacy) mode emits BEGIN only before INSERT/UPDATE/DELETE, so each CREATE TABLE of a
    migration committed on its own and a crash mid-migration left a half-built file. Here the driver
    never begins or commits by itself (``isolation_level=None``) and the engine emits BEGIN when a
    transaction starts; the driver's commit()/rollback() still end it.

    The pool is small on purpose: every open aiosqlite connection is an OS thread, and a host keeps
    hundreds of instances awake.
    """
    engine = create_async_engine(
        f"sqlite+aiosqlite:///{path}",
        poolclass=AsyncAdaptedQueuePool,
        pool_size=2,
        max_overflow=2,
        # Transactions always end in commit or rollback through `Connection`, so the pool's own
        # rollback on return would only add a thread hop (~0.2 ms) to every transaction.
        pool_reset_on_return=None,
        # Each statement in one thread hop instead of three or four (see `foundry.db.one_hop`).
        module=one_hop_dbapi(),
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        for pragma in _PRAGMAS:
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get(NO_TRANSACTION_OPTION):
            return  # each statement on its own (a checkpoint is refused inside a transaction)
        if options.get(READ_ONLY_OPTION):
            # A deferred BEGIN: the read's statements share the snapshot its first one takes (a WAL
            # reader never waits for the writer nor holds it up). Without it each SELECT saw the
            # state of its own moment, and a task detail assembled from several tables once read
            # one turn's end and the next one's start at the same time: "idle, nothing queued".
            _start(conn, "BEGIN")
            return
        # IMMEDIATE takes the write lock now, waiting out another connection's write (busy_timeout).
        # A plain BEGIN takes it at the first write instead, and SQLite does not wait there: a
        # transaction that has already read fails at once with "database is locked" when another
        # connection happens to be writing (seen at wake, whose first statements are reads).
        # Straight to aiosqlite: no statement compilation for what starts every transaction.
        _start(conn, "BEGIN IMMEDIATE")

    return engine


def _start(conn: Connection, statement: str) -> None:
    """Begin a transaction on ``conn``'s connection, which must never be left inside one.

    The pool does not roll back a returned connection (see `make_engine`), so a BEGIN whose caller
    was cancelled must be undone here: the statement still runs in the connection's thread after the
    caller stopped waiting, and the connection would go back to the pool inside a transaction, every
    later BEGIN on it failing and, after ``BEGIN IMMEDIATE``, the database's write lock held for good.
    """
    driver = conn.connection.driver_connection
    try:
        await_(driver.execute(statement))  # type: ignore[union-attr]
    except sqlite3.OperationalError as exc:
        if "within a transaction" not in str(exc):
            raise
        # Left so by a path not covered below (a connection dropped without being closed, say): its
        # owner is gone, so its transaction is abandoned and rolling it back loses nothing.
        log.warning("a pooled connection was still inside an abandoned transaction; rolled it back")
        await_(driver.rollback())  # type: ignore[union-attr]
        await_(driver.execute(statement))  # type: ignore[union-attr]
    except BaseException:
        # Cancelled (or failed) while the BEGIN may still run: the rollback, queued behind it on the
        # same thread, ends whatever it started. Shielded, so a second cancellation cannot skip it.
        await_(asyncio.shield(driver.rollback()))  # type: ignore[union-attr]
        raise


def read_only(engine: AsyncEngine) -> AsyncEngine:
    """A view of ``engine`` (same pool) for connections that only read.

    Their transaction is a deferred ``BEGIN``: it takes no write lock, so reads run beside a write in
    progress, and every statement of one connection sees the same committed state. Never write
    through it (the write would contend for the lock with no busy wait at its start).
    """
    return engine.execution_options(**{READ_ONLY_OPTION: True})


def no_transaction(engine: AsyncEngine) -> AsyncEngine:
    """A view of ``engine`` whose connections never begin a transaction: each statement commits on
    its own. For the statements SQLite refuses inside one (``PRAGMA wal_checkpoint``)."""
    return engine.execution_options(**{NO_TRANSACTION_OPTION: True})


async def in_connection_thread(conn: AsyncConnection, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(db, *args)`` with the plain ``sqlite3`` connection behind ``conn``, in that
    connection's own thread, inside ``conn``'s transaction: any number of statements for one thread
    hop.

    Every statement costs one hop even through SQLAlchemy (`foundry.db.one_hop`), each a GIL
    hand-off between the event loop and the connection's thread; on the hot paths (a batch of
    transcript events is a read and two writes) those hand-offs cost more than SQLite.
    ``fn`` runs off the event loop: it must only touch ``db`` and its arguments.
    """
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection  # an aiosqlite.Connection
    # aiosqlite runs every call through ``_execute`` on its thread; it has no public form of it.
    db: sqlite3.Connection = driver._conn  # type: ignore[union-attr]
    return await driver._execute(fn, db, *args)  # type: ignore[union-attr,no-any-return]
