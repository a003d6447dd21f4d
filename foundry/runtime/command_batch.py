"""Group commit of a mailbox: consecutive batchable commands of one instance in one transaction.

A command normally costs a transaction of its own, an outcome row and two inbox writes (add and
remove). For commands that arrive by the hundred per second and do little each (a webhook delivery
recorded ``queued``), that bookkeeping is most of the work, so handlers marked ``batch``
(`foundry.runtime.role.Handler`) that are queued one after another run together:

* one write transaction, tried first without savepoints: a savepoint costs two statements per
  command (on a busy host about a tenth of all its work while webhooks arrive by the hundred), and
  almost every command succeeds. When one fails (or times out), that transaction is rolled back and
  the batch runs again with each command in a savepoint of its own, so the failing one is rolled
  back alone and recorded ``failed`` while the others stand, exactly as if they had run one by one in
  queue order;
* their events are stamped and published, and their outbox rows written, once, after the last one;
  their outcome rows are written by one statement; their inbox rows removed by one.

Nothing changes for delivery guarantees: until the transaction commits, every command of the batch is
still in the inbox (a crash replays them all, and the mailbox rows they wrote are gone with the
transaction); after it commits, each has its mailbox row, so a replay is answered as a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from foundry.errors import CommandFailed
from foundry.runtime.context import CommandContext
from foundry.runtime.inbox import Queued
from foundry.runtime.mailbox import RECORD_OUTCOME, Outcome, as_foundry_error, outcome_row
from foundry.runtime.role import to_jsonable

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from foundry.runtime.instance import Instance

log = logging.getLogger(__name__)

#: Commands run in one transaction at most (the write lock is held for all of them).
MAX_COMMAND_BATCH = 100

#: A queued command and the request id of its sender (when it was enqueued in this process).
Item = tuple[Queued, str | None]


class MailboxQueue:
    """An instance's commands in inbox order, handed out one at a time or, for batchable ones, as
    the run of batchable commands queued behind each other (`MAX_COMMAND_BATCH` at most)."""

    def __init__(self, batches: Callable[[str], bool]) -> None:
        self._queue: asyncio.Queue[Item] = asyncio.Queue()
        #: Taken from the queue behind a batch it could not join: it runs next, on its own.
        self._carry: Item | None = None
        self._batches = batches

    def put_nowait(self, item: Item) -> None:
        self._queue.put_nowait(item)

    def empty(self) -> bool:
        return self._carry is None and self._queue.empty()

    def qsize(self) -> int:
        return self._queue.qsize() + (self._carry is not None)

    async def next_batch(self) -> list[Item]:
        """The next command, with the batchable ones right behind it when it is batchable."""
        first = self._carry if self._carry is not None else await self._queue.get()
        self._carry = None
        batch = [first]
        if self._batches(first[0].name):
            while len(batch) < MAX_COMMAND_BATCH and not self._queue.empty():
                item = self._queue.get_nowait()
                if not self._batches(item[0].name):
                    self._carry = item
                    break
                batch.append(item)
        return batch


class _RetryWithSavepoints(Exception):
    """A command of a batch run without savepoints failed: roll the whole transaction back."""


async def execute_batch(instance: Instance, items: list[Queued], step_timeout: float) -> list[Outcome] | None:
    """Run ``items`` (batchable commands, in queue order) in one transaction.

    Returns their outcomes once committed, or None when the transaction itself failed (nothing of it
    was stored): the caller then runs them one at a time, each recording its own outcome.

    Raises:
        asyncio.CancelledError: the instance is closing; the commands stay in the inbox.
    """
    try:
        return await _commit(instance, items, step_timeout, savepoints=False)
    except _RetryWithSavepoints:
        return await _commit(instance, items, step_timeout, savepoints=True)


async def _commit(
    instance: Instance, items: list[Queued], step_timeout: float, *, savepoints: bool
) -> list[Outcome] | None:
    """One attempt at the batch's transaction (see `execute_batch`). Without ``savepoints``, the
    first command that fails raises `_RetryWithSavepoints` after the transaction is rolled back."""
    staging: CommandContext | None = None
    try:
        async with instance.write_lock:
            if instance._closing:
                raise asyncio.CancelledError
            async with instance.engine.begin() as conn:
                staging = CommandContext(instance, conn, items[0].command_id)
                now = instance.host.services.clock.now_ms()
                outcomes: list[Outcome] = []
                rows: list[tuple[Any, ...]] = []
                for queued in items:
                    outcome, row = await _run_one(
                        instance, conn, queued, staging, now, step_timeout, savepoints
                    )
                    outcomes.append(outcome)
                    rows.append(row)
                events = await instance._stage(conn, staging)
                raw = await conn.get_raw_connection()
                await raw.driver_connection.executemany(RECORD_OUTCOME, rows)  # type: ignore[union-attr]
            instance._committed(staging, events)
            return outcomes
    except asyncio.CancelledError:
        if staging is not None:
            instance._discard(staging)
        raise
    except _RetryWithSavepoints:
        if staging is not None:
            instance._discard(staging)
        raise
    except Exception:
        log.exception(
            "a batch of %d commands on %s/%s could not commit; running them one by one",
            len(items),
            instance.role.name,
            instance.key,
        )
        if staging is not None:
            instance._discard(staging)
        return None


async def _run_one(
    instance: Instance,
    conn: AsyncConnection,
    queued: Queued,
    staging: CommandContext,
    now: int,
    step_timeout: float,
    savepoint: bool,
) -> tuple[Outcome, tuple[Any, ...]]:
    """One command of the batch (in its own savepoint when ``savepoint``): its outcome and its
    mailbox row."""
    ctx = CommandContext(instance, conn, queued.command_id)
    try:
        handler = instance.role.command(queued.name)
        model = handler.model.model_validate_json(queued.body)
        async with conn.begin_nested() if savepoint else contextlib.nullcontext():
            async with asyncio.timeout(step_timeout):
                result = await handler.fn(ctx, model)
            result_json = json.dumps(to_jsonable(result))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if not savepoint:
            # Its partial writes cannot be undone alone: the batch is tried again with savepoints.
            raise _RetryWithSavepoints from exc
        error = as_foundry_error(exc, f"{instance.role.name}.{queued.name}")
        if isinstance(error, CommandFailed):
            log.exception("command %s on %s/%s failed", queued.name, instance.role.name, instance.key)
        else:
            log.info("command %s on %s/%s refused: %s", queued.name, instance.role.name, instance.key, error)
        payload = error.to_payload()
        return ("err", payload), outcome_row(queued, "failed", None, json.dumps(payload), now)
    # It stands: what it staged goes out with the batch.
    staging._publishes.extend(ctx._publishes)
    staging._sends.extend(ctx._sends)
    return ("ok", json.loads(result_json)), outcome_row(queued, "done", result_json, None, now)
