"""One logical actor: its SQLite file, its durable mailbox, its workflow loop and its jobs.

`Instance` holds the control flow of one actor: waking (migrate, requeue pending commands), the
mailbox loop that runs one command at a time, write transactions and the staging of their events and
outbox rows, the pending marker, and closing. What needs no instance is split off so this stays one
concern: the outcome envelope and the ``foundry_mailbox`` SQL are `foundry.runtime.mailbox`, the
background jobs are `foundry.runtime.jobs`, and delivering sends is `foundry.runtime.outbox`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from foundry import metrics, request_id
from foundry.db.engine import make_engine, read_only
from foundry.db.migrate import ensure_schema, seed_new_database
from foundry.errors import ActorUnavailable, CommandFailed, CommandTimeout
from foundry.runtime.cancel import cancel_and_wait
from foundry.runtime.command_batch import MailboxQueue, execute_batch
from foundry.runtime.context import CommandContext, InstanceContext
from foundry.runtime.events import Event
from foundry.runtime.inbox import Queued
from foundry.runtime.jobs import InstanceJobs
from foundry.runtime.mailbox import (
    MAILBOX_RETENTION_MS,
    RECORD_OUTCOME,
    STEP_TIMEOUT_S,
    Outcome,
    as_foundry_error,
    known_commands,
    ok_outcome,
    outcome_label,
    outcome_row,
    stored_outcome,
)
from foundry.runtime.outbox import Outbox
from foundry.runtime.pending_marker import PendingMarker
from foundry.runtime.role import Handler, Role, to_jsonable

if TYPE_CHECKING:
    from foundry.runtime.host import Host

log = logging.getLogger(__name__)

#: Closing waits this long for a running write transaction to end before cancelling it.
CLOSE_WAIT_S = 10.0


class Instance:
    """A logical actor hosted by a `Host`.

    Commands are committed to the host's inbox before the sender is acknowledged, then run one at a
    time, each in one transaction together with its ``foundry_mailbox`` row (its outcome, and the
    record that it ran), so effects on local state happen exactly once.
    """

    def __init__(self, host: Host, key: str, path: Path) -> None:
        self.host = host
        self.role: Role = host.role
        self.key = key
        self.path = path
        self.engine: AsyncEngine = make_engine(path)
        #: The same pool, for connections that only read (no BEGIN; see `read_only`).
        self.read_engine: AsyncEngine = read_only(self.engine)
        self.write_lock = asyncio.Lock()
        self.active = 0
        self.last_used = asyncio.get_running_loop().time()
        #: (command, request id of the sender when it was enqueued in this process).
        self._queue = MailboxQueue(self.role.batches)
        self._waiters: dict[str, list[asyncio.Future[Outcome]]] = {}
        self._mailbox_conn: sqlite3.Connection | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._running_command: str | None = None
        self.jobs = InstanceJobs(self)
        self._closing = False
        self._topic_seq: dict[str, int] = {}
        self.outbox = Outbox(self)
        self.marker = PendingMarker(host.pending_marker(key))
        self._tables = self.role.metadata.tables

    # ----------------------------------------------------------------------------- lifecycle

    async def wake(self) -> None:
        """Open and migrate the database, requeue pending commands, start the loop."""
        try:
            await seed_new_database(self.path, self.role.migrations_location, self.host.schema_dir)
            await ensure_schema(self.engine, self.role.migrations_location)
            mailbox = self._tables["foundry_mailbox"]
            waiting = self.host.inbox.waiting(self.key)
            async with self.engine.begin() as conn:
                # Rows written as pending by earlier versions, and by a restored backup, run first.
                pending = await conn.execute(
                    sa.select(mailbox.c.command_id, mailbox.c.name, mailbox.c.body, mailbox.c.created_at)
                    .where(mailbox.c.status == "pending")
                    .order_by(mailbox.c.seq)
                )
                for row in pending:
                    self._queue.put_nowait((Queued(*row), None))
                # Before the retention purge below: a command whose inbox row outlived its run (a
                # crash between the two) must still be found here, however old.
                known = await known_commands(conn, mailbox, [q.command_id for q in waiting])
                self.host.inbox.remove(self.key, [q.command_id for q in waiting if q.command_id in known])
                for queued in waiting:
                    if queued.command_id not in known:
                        self._queue.put_nowait((queued, None))
                cutoff = self.host.services.clock.now_ms() - MAILBOX_RETENTION_MS
                await conn.execute(
                    mailbox.delete().where(mailbox.c.status != "pending", mailbox.c.finished_at < cutoff)
                )
                outbox = self._tables["foundry_outbox"]
                by_status: dict[str, int] = dict(
                    (
                        await conn.execute(
                            sa.select(outbox.c.status, sa.func.count()).group_by(outbox.c.status)
                        )
                    ).all()
                )
            has_outbox = by_status.get("pending", 0) > 0
            # Dead letters alone are no pending work: recovery must not wake this instance for them.
            self.outbox.set_dead_count(by_status.get("dead", 0))
            if has_outbox or not self._queue.empty():
                self._mark_pending()
            else:
                # Perhaps a leftover marker from before a crash: removed only once the wake is
                # complete, after ``on_wake`` has restarted the jobs it resumes (they keep it).
                self.marker.assume_leftover()
            self._loop_task = asyncio.create_task(self._run_loop(), name=f"loop:{self.role.name}/{self.key}")
            if has_outbox:
                self.outbox.schedule()
            if self.role.on_wake is not None:
                await self.role.on_wake(InstanceContext(self))
            self._unmark_if_drained()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Let the running write transaction finish, stop the loop, outbox and jobs, and release
        the database (its thread and file handles)."""
        self._closing = True
        self.jobs.again.clear()
        # Every write transaction holds the write lock, so holding it here means none is open when
        # the tasks are cancelled. A task cancelled inside one can leave its connection's write
        # lock on the file after the connection is closed (the driver's cursor keeps the statement
        # alive until it is garbage-collected): the next owner of the file, a restarted host in
        # this process, then found it locked.
        try:
            await asyncio.wait_for(self.write_lock.acquire(), CLOSE_WAIT_S)
            locked = True
        except TimeoutError:
            locked = False
            log.warning(
                "%s/%s: a write transaction still ran %gs into closing; cancelling it",
                self.role.name,
                self.key,
                CLOSE_WAIT_S,
            )
        try:
            await self.outbox.close()
            tasks = [t for t in (self._loop_task,) if t is not None]
            tasks.extend(self.jobs.tasks.values())
            await cancel_and_wait(tasks, f"{self.role.name}/{self.key}")
        finally:
            if locked:
                self.write_lock.release()
        for futures in self._waiters.values():
            for fut in futures:
                if not fut.done():
                    fut.cancel()
        if self._mailbox_conn is not None:
            self._mailbox_conn.close()
            self._mailbox_conn = None
        await self.engine.dispose()

    def quiescent(self) -> bool:
        """True when nothing would be lost or delayed by putting this instance to sleep."""
        return (
            self.active == 0
            and self._queue.empty()
            and self._running_command is None
            and not self._waiters
            and not self.jobs.tasks
            and self.outbox.idle()
            and not self.write_lock.locked()
        )

    def touch(self) -> None:
        self.last_used = asyncio.get_running_loop().time()

    # ----------------------------------------------------------------------------- mailbox

    async def send(
        self, name: str, body_json: str, *, wait: bool, timeout: float, command_id: str
    ) -> Outcome:
        """Durably enqueue a command; with ``wait`` return its outcome."""
        fut: asyncio.Future[Outcome] | None = None
        if wait:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(command_id, []).append(fut)
        try:
            state, stored = self._enqueue(command_id, name, body_json)
        except BaseException:
            if fut is not None:
                self._drop_waiter(command_id, fut)
            raise
        if state == "duplicate" and stored[0] != "pending":
            if fut is not None:
                self._drop_waiter(command_id, fut)
            outcome = stored_outcome(stored)
            if wait:
                return outcome
            return ("ok", {"commandId": command_id, "status": stored[0], "duplicate": True})
        if fut is None:
            return ("ok", {"commandId": command_id, "status": "pending", "duplicate": state == "duplicate"})
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            self._drop_waiter(command_id, fut)
            return (
                "err",
                CommandTimeout(
                    f"command {name!r} on {self.role.name}/{self.key} did not finish within {timeout:g}s; "
                    f"it stays queued and will still run (command id {command_id})"
                ).to_payload(),
            )

    def _drop_waiter(self, command_id: str, fut: asyncio.Future[Outcome]) -> None:
        futures = self._waiters.get(command_id, [])
        if fut in futures:
            futures.remove(fut)
        if not futures:
            self._waiters.pop(command_id, None)

    def _enqueue(self, command_id: str, name: str, body_json: str) -> tuple[str, Any]:
        # Synchronous from here to the end: no other task of this loop runs in between, so the
        # inbox, the mailbox lookup and the queue agree (queue order is inbox order). The command
        # loop commits a command's mailbox row before deleting its inbox row, so a command id is
        # always in at least one of the two.
        self._mark_pending()
        queued = Queued(command_id, name, body_json, self.host.services.clock.now_ms())
        if not self.host.inbox.add(self.key, command_id, name, body_json, queued.created_at):
            return ("duplicate", ("pending", None, None))
        stored = (
            self._mailbox_db()
            .execute("SELECT status, result, error FROM foundry_mailbox WHERE command_id = ?", (command_id,))
            .fetchone()
        )
        if stored is not None:
            # Ran already (or is queued from a pending mailbox row): the new inbox row is a duplicate.
            self.host.inbox.remove(self.key, [command_id])
            return ("duplicate", (stored[0], stored[1], stored[2]))
        self._queue.put_nowait((queued, request_id.current.get()))
        return ("new", None)

    def _mailbox_db(self) -> sqlite3.Connection:
        """A plain connection for mailbox lookups on the loop thread: tens of microseconds where an
        aiosqlite round trip costs ~0.8 ms. It only reads, and WAL readers never wait on the writer."""
        if self._mailbox_conn is None:
            self._mailbox_conn = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
        return self._mailbox_conn

    async def _run_loop(self) -> None:
        while True:
            batch = await self._queue.next_batch()
            self._running_command = batch[0][0].command_id
            started = time.perf_counter()
            try:
                outcomes = None
                if len(batch) > 1:
                    with request_id.bound(batch[0][1]):
                        outcomes = await execute_batch(self, [q for q, _ in batch], STEP_TIMEOUT_S)
                if outcomes is None:
                    outcomes = []
                    for queued, rid in batch:
                        with request_id.bound(rid):
                            outcomes.append(await self._execute(queued))
                # Committed: the mailbox rows now answer for these command ids.
                self.host.inbox.remove(self.key, [queued.command_id for queued, _ in batch])
            finally:
                self._running_command = None
            seconds = (time.perf_counter() - started) / len(batch)
            for (queued, _), outcome in zip(batch, outcomes, strict=True):
                metrics.COMMAND_SECONDS.labels(self.role.name).observe(seconds)
                metrics.COMMANDS.labels(self.role.name, outcome_label(outcome)).inc()
                for fut in self._waiters.pop(queued.command_id, []):
                    if not fut.done():
                        fut.set_result(outcome)
            self.touch()
            self._unmark_if_drained()

    async def _execute(self, queued: Queued) -> Outcome:
        command_id, name = queued.command_id, queued.name
        result_json = "null"
        try:
            handler: Handler = self.role.command(name)
            model = handler.model.model_validate_json(queued.body)
            ctx: CommandContext | None = None
            async with self.write_lock:
                if self._closing:
                    # Not run here: its inbox row stays, and the file's next owner runs it.
                    raise asyncio.CancelledError
                try:
                    async with self.engine.begin() as conn:
                        ctx = CommandContext(self, conn, command_id)
                        async with asyncio.timeout(STEP_TIMEOUT_S):
                            result = await handler.fn(ctx, model)
                        result_json = json.dumps(to_jsonable(result))
                        events = await self._stage(conn, ctx)
                        # Through the driver connection, inside the same transaction: plain SQL
                        # skips SQLAlchemy's statement compilation and result processing.
                        raw = await conn.get_raw_connection()
                        await raw.driver_connection.execute(  # type: ignore[union-attr]
                            RECORD_OUTCOME,
                            outcome_row(queued, "done", result_json, None, self.host.services.clock.now_ms()),
                        )
                except BaseException:
                    if ctx is not None:
                        self._discard(ctx)
                    raise
                self._committed(ctx, events)
            return ok_outcome(json.loads(result_json), ctx.committed_seqs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = as_foundry_error(exc, f"{self.role.name}.{name}")
            if isinstance(error, CommandFailed):
                log.exception("command %s on %s/%s failed", name, self.role.name, self.key)
            else:
                log.info("command %s on %s/%s refused: %s", name, self.role.name, self.key, error)
            payload = error.to_payload()
            async with self.write_lock, self.engine.begin() as conn:
                raw = await conn.get_raw_connection()
                await raw.driver_connection.execute(  # type: ignore[union-attr]
                    RECORD_OUTCOME,
                    outcome_row(
                        queued, "failed", None, json.dumps(payload), self.host.services.clock.now_ms()
                    ),
                )
            return ("err", payload)

    # ----------------------------------------------------------------------------- actions & writes

    async def call(self, handler: Handler, model: Any) -> Outcome:
        try:
            ctx = InstanceContext(self)
            return ok_outcome(to_jsonable(await handler.fn(ctx, model)), ctx.committed_seqs)
        except Exception as exc:
            error = as_foundry_error(exc, f"{self.role.name}.{handler.name}")
            if isinstance(error, CommandFailed):
                log.exception("action %s on %s/%s failed", handler.name, self.role.name, self.key)
            return ("err", error.to_payload())

    @asynccontextmanager
    async def transaction(self, ctx: InstanceContext) -> AsyncIterator[AsyncConnection]:
        """A write transaction for an action or job context; serialized with the mailbox loop."""
        committed = False
        try:
            async with self.write_lock:
                if self._closing:
                    # After close, the file belongs to whatever opens it next.
                    raise ActorUnavailable(f"{self.role.name}/{self.key} is closing; retry shortly")
                async with self.engine.begin() as conn:
                    ctx._conn = conn
                    try:
                        yield conn
                        events = await self._stage(conn, ctx)
                    finally:
                        ctx._conn = None
                committed = True
                self._committed(ctx, events)
        finally:
            if not committed:
                self._discard(ctx)

    async def _stage(self, conn: AsyncConnection, ctx: InstanceContext) -> list[Event]:
        """Inside the transaction: stamp event seqs and write outbox rows."""
        events: list[Event] = []
        if ctx._publishes:
            seq_table = self._tables["foundry_topic_seq"]
            new_seqs: dict[str, int] = {}
            for item in ctx._publishes:
                current = new_seqs.get(item.topic)
                if current is None:
                    current = self._topic_seq.get(item.topic)
                if current is None:
                    current = (
                        await conn.execute(sa.select(seq_table.c.seq).where(seq_table.c.topic == item.topic))
                    ).scalar() or 0
                new_seqs[item.topic] = current + 1
                events.append(Event(item.topic, item.event, current + 1, item.data))
            # Straight to the driver (no statement compilation or result processing), for a
            # statement that ends every transaction that publishes.
            raw = await conn.get_raw_connection()
            await raw.driver_connection.executemany(  # type: ignore[union-attr]
                _UPSERT_TOPIC_SEQ, list(new_seqs.items())
            )
            ctx._pending_seqs = new_seqs
        if ctx._sends:
            self._mark_pending()
            now = self.host.services.clock.now_ms()
            await conn.execute(
                sqlite_insert(self._tables["foundry_outbox"]).on_conflict_do_nothing(),
                [
                    {
                        "role": s.role,
                        "key": s.key,
                        "name": s.name,
                        "body": json.dumps(s.body),
                        "command_id": s.command_id,
                        "created_at": now,
                    }
                    for s in ctx._sends
                ],
            )
        return events

    def _committed(self, ctx: InstanceContext, events: list[Event]) -> None:
        """After commit: remember seqs, publish, deliver the outbox."""
        if ctx._pending_seqs:
            self._topic_seq.update(ctx._pending_seqs)
            ctx.committed_seqs.update(ctx._pending_seqs)
            ctx._pending_seqs = None
        if events:
            self.host.hub.publish(events)
        if ctx._sends:
            rid = request_id.current.get()
            if rid is not None:
                self.outbox.request_ids.update((s.command_id, rid) for s in ctx._sends)
            self.outbox.schedule()
        ctx._publishes = []
        ctx._sends = []

    def _discard(self, ctx: InstanceContext) -> None:
        """After a transaction that failed or was cancelled: forget what it staged.

        A cancellation can land after SQLite committed, so the cached topic seqs may be behind the
        database: drop the cache (it reloads from ``foundry_topic_seq``) and look at the outbox
        again, so no seq is ever reused and no committed send is left waiting for the next wake.
        """
        had_sends = bool(ctx._sends)
        ctx._publishes = []
        ctx._sends = []
        ctx._pending_seqs = None
        self._topic_seq.clear()
        if had_sends:
            self.outbox.schedule()

    # ----------------------------------------------------------------------------- pending marker

    def mailbox_depth(self) -> int:
        """Commands queued or running (for metrics)."""
        return self._queue.qsize() + (self._running_command is not None)

    def _mark_pending(self) -> None:
        """Note on disk, before the row commits, that this instance has work a restart must resume."""
        self.marker.mark()

    def _unmark_if_drained(self) -> None:
        drained = self._queue.empty() and self._running_command is None and self.outbox.idle()
        if drained and not self.jobs.tasks:
            self.marker.clear()

    # ----------------------------------------------------------------------------- jobs

    def start_job(
        self, name: str, fn: Callable[[InstanceContext], Awaitable[None]], *, again_if_running: bool = False
    ) -> bool:
        """Start job ``name`` unless it runs (`InstanceJobs.start`)."""
        return self.jobs.start(name, fn, again_if_running=again_if_running)

    def cancel_job(self, name: str) -> bool:
        """Cancel job ``name`` if it runs (`InstanceJobs.cancel`)."""
        return self.jobs.cancel(name)

    def job_running(self, name: str) -> bool:
        """True while job ``name`` runs."""
        return self.jobs.running(name)


#: The topic seqs a transaction stamped, stored with it.
_UPSERT_TOPIC_SEQ = (
    "INSERT INTO foundry_topic_seq(topic, seq) VALUES (?, ?) "
    "ON CONFLICT(topic) DO UPDATE SET seq = excluded.seq"
)
