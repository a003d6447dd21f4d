"""Delivery of one instance's transactional outbox: ordered per target, independent across targets.

Rows are written by `Instance._stage` in the same transaction as the effect that caused them. This
module sends them after commit and again after restarts:

- Sends to one target (role, key) go out one at a time in id order, so a receiver sees them in the
  order they were made. Different targets are independent: each has its own worker, and up to
  `DELIVERY_CONCURRENCY` sends are in flight at once, so one target that keeps failing never delays
  the others.
- A failed send is retried with exponential backoff and jitter. Its attempt count, last error and
  next attempt time live in the row, so a restart neither forgets the count nor retries in a burst.
- After ``runtime.outbox_max_attempts`` failures the row becomes a dead letter (status ``dead``): it
  is kept, logged at ERROR, counted in a marker file that ``foundry actors ls`` reads, and no longer
  retried until `Outbox.retry_dead` (``foundry actors retry-dead``). Later sends to the same target
  become dead letters too ("blocked"), because delivering them first would break the target's order.

Delivery is at least once; the receiver's mailbox deduplicates by command id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import sqlalchemy as sa

from foundry import request_id
from foundry.errors import FoundryError
from foundry.runtime.cancel import cancel_and_wait

if TYPE_CHECKING:
    from foundry.runtime.instance import Instance

log = logging.getLogger(__name__)

#: Sends of one instance in flight at once (each to a different target).
DELIVERY_CONCURRENCY = 16
#: One attempt that takes longer than this counts as failed (a hung host must not hold a slot).
ATTEMPT_TIMEOUT_S = 60.0
#: Refusals that no retry can change: the receiver validated these exact bytes and said no. They are
#: dropped with an ERROR log, as a dead letter could only fail the same way again.
#: ``not_found`` is deliberately not here. Actors are virtual, so a send never fails because the
#: target "does not exist"; it fails with not_found when the receiving host does not know the role or
#: the command, which happens while a cluster runs mixed versions during an upgrade and heals once
#: the receiver runs the new code. Such sends are retried and, if that never happens, dead-lettered,
#: where they stay visible and can be retried instead of vanishing.
PERMANENT_REFUSALS = frozenset({"invalid_input", "payload_too_large"})

Target = tuple[str, str]


@dataclass
class _Row:
    id: int
    role: str
    key: str
    name: str
    body: str
    command_id: str
    attempts: int
    #: Seconds to wait before the next attempt.
    wait_s: float = 0.0


@dataclass
class _Worker:
    rows: deque[_Row] = field(default_factory=deque)
    last_id: int = 0
    task: asyncio.Task[None] | None = None


class Outbox:
    """The outbox deliverer of one instance (see the module docstring)."""

    def __init__(self, instance: Instance) -> None:
        self._instance = instance
        settings = instance.host.services.settings.runtime
        self.max_attempts = settings.outbox_max_attempts
        self.backoff_base_s = settings.outbox_backoff_base_s
        self.backoff_cap_s = settings.outbox_backoff_cap_s
        self._table = instance.role.metadata.tables["foundry_outbox"]
        self._workers: dict[Target, _Worker] = {}
        #: Targets whose head send died since the last scan; their later rows are blocked.
        self._killed: set[Target] = set()
        self._scan_task: asyncio.Task[None] | None = None
        self._dirty = False
        self._slots = asyncio.Semaphore(DELIVERY_CONCURRENCY)
        #: Dead letters in this instance's outbox (kept equal to the database and the marker file).
        self.dead_count = 0
        #: The request id of each undelivered send made while one was current, by command id, so the
        #: receiver's log lines carry it too (in memory: a send delivered after a restart has none).
        self.request_ids: dict[str, str] = {}

    # ----------------------------------------------------------------------------- state

    def idle(self) -> bool:
        """True when nothing is being delivered or waiting for a retry."""
        return not self._dirty and self._scan_task is None and not self._workers

    def schedule(self) -> None:
        """Look at the outbox again soon (after a commit that wrote sends, at wake, after a retry)."""
        self._dirty = True
        if self._scan_task is None:
            self._scan_task = asyncio.create_task(
                self._scan(), name=f"outbox:{self._instance.role.name}/{self._instance.key}"
            )

    async def close(self) -> None:
        tasks = [w.task for w in self._workers.values() if w.task is not None]
        if self._scan_task is not None:
            tasks.append(self._scan_task)
        await cancel_and_wait(tasks, f"the outbox of {self._where}")
        self._workers.clear()
        self._scan_task = None

    @property
    def _where(self) -> str:
        return f"{self._instance.role.name}/{self._instance.key}"

    # ----------------------------------------------------------------------------- scanning

    async def _scan(self) -> None:
        """Hand every pending row to its target's worker; block rows of dead targets."""
        failures = 0
        try:
            while self._dirty:
                self._dirty = False
                try:
                    await self._scan_once()
                    failures = 0
                except Exception:
                    failures += 1
                    log.exception("outbox of %s: could not scan pending sends; retrying", self._where)
                    self._dirty = True
                    await asyncio.sleep(self._backoff(failures))
        finally:
            self._scan_task = None
        # Not on cancellation: an instance closed with sends still pending must keep its marker.
        self._instance._unmark_if_drained()

    async def _scan_once(self) -> None:
        rows, dead_targets = await self._load()
        blocked: list[int] = []
        for row in rows:
            target = (row.role, row.key)
            if target in dead_targets or target in self._killed:
                blocked.append(row.id)
            else:
                self._dispatch(target, row)
        if blocked:
            await self._block(blocked)

    async def _load(self) -> tuple[list[_Row], set[Target]]:
        t = self._table
        now = self._instance.host.services.clock.now_ms()
        async with self._instance.read_engine.connect() as conn:
            result = await conn.execute(
                sa.select(
                    t.c.id,
                    t.c.role,
                    t.c.key,
                    t.c.name,
                    t.c.body,
                    t.c.command_id,
                    t.c.attempts,
                    t.c.next_attempt_at,
                )
                .where(t.c.status == "pending")
                .order_by(t.c.id)
            )
            rows = [
                _Row(
                    r.id,
                    r.role,
                    r.key,
                    r.name,
                    r.body,
                    r.command_id,
                    r.attempts,
                    # A restart keeps the backoff: wait out what is left of it (never more than the cap).
                    min(max((r.next_attempt_at or 0) - now, 0) / 1000, self.backoff_cap_s),
                )
                for r in result
            ]
            dead = {
                (r.role, r.key)
                for r in await conn.execute(
                    sa.select(t.c.role, t.c.key).where(t.c.status == "dead").distinct()
                )
            }
        return rows, dead

    def _dispatch(self, target: Target, row: _Row) -> None:
        worker = self._workers.get(target)
        if worker is None:
            worker = self._workers[target] = _Worker()
            worker.task = asyncio.create_task(
                self._deliver(target, worker), name=f"outbox:{self._where}->{target[0]}/{target[1]}"
            )
        # A row already handed over (being sent right now) is read again by a later scan: skip it.
        if row.id > worker.last_id:
            worker.rows.append(row)
            worker.last_id = row.id

    # ----------------------------------------------------------------------------- delivery

    async def _deliver(self, target: Target, worker: _Worker) -> None:
        """Send the target's rows one at a time, in order, until none is left or the target died."""
        try:
            while worker.rows and target not in self._killed:
                row = worker.rows[0]
                if row.wait_s > 0:
                    await asyncio.sleep(row.wait_s)
                error = await self._attempt(row)
                try:
                    if error is None:
                        await self._delete(row.id)
                        worker.rows.popleft()
                    elif row.attempts + 1 >= self.max_attempts:
                        await self._kill(target, row, error)
                        worker.rows.clear()
                    else:
                        await self._record_failure(row, error)
                except Exception:
                    # The database refused the bookkeeping (disk full, say): the row is still at the
                    # head, so try it again later rather than losing or reordering it.
                    log.exception("outbox of %s: could not record the attempt of row %d", self._where, row.id)
                    row.wait_s = self.backoff_cap_s
        finally:
            if self._workers.get(target) is worker:
                del self._workers[target]
        self._instance._unmark_if_drained()  # not on cancellation, as in `_scan`

    async def _attempt(self, row: _Row) -> str | None:
        """Send one row. Returns None when it is done with (delivered or refused for good), else the
        error text of a failure worth retrying."""
        async with self._slots:
            try:
                async with asyncio.timeout(ATTEMPT_TIMEOUT_S):
                    with request_id.bound(self.request_ids.get(row.command_id)):
                        await self._instance.host.runtime.send(
                            row.role, row.key, row.name, json.loads(row.body), command_id=row.command_id
                        )
            except FoundryError as exc:
                if exc.code in PERMANENT_REFUSALS:
                    log.error(
                        "outbox of %s: send %s to %s/%s refused for good, dropped: %s",
                        self._where,
                        row.name,
                        row.role,
                        row.key,
                        exc,
                    )
                    return None
                return f"{exc.code}: {exc}"
            except TimeoutError:
                return f"timeout: no answer within {ATTEMPT_TIMEOUT_S:g}s"
            except Exception as exc:
                log.warning(
                    "outbox of %s: send %s to %s/%s raised",
                    self._where,
                    row.name,
                    row.role,
                    row.key,
                    exc_info=True,
                )
                return f"{type(exc).__name__}: {exc}"
        self.request_ids.pop(row.command_id, None)
        return None

    def _backoff(self, attempts: int) -> float:
        """Seconds before attempt ``attempts + 1``: doubling from the base, capped, with jitter so
        many senders failing together do not retry in lockstep."""
        delay = min(self.backoff_cap_s, self.backoff_base_s * 2.0 ** min(attempts - 1, 30))
        return float(delay * random.uniform(0.5, 1.0))

    # ----------------------------------------------------------------------------- bookkeeping

    async def _delete(self, row_id: int) -> None:
        async with self._instance.write_lock, self._instance.engine.begin() as conn:
            await conn.execute(self._table.delete().where(self._table.c.id == row_id))

    async def _record_failure(self, row: _Row, error: str) -> None:
        row.attempts += 1
        row.wait_s = self._backoff(row.attempts)
        next_at = self._instance.host.services.clock.now_ms() + int(row.wait_s * 1000)
        log.warning(
            "outbox of %s: send %s to %s/%s failed (attempt %d of %d), retrying in %.1fs: %s",
            self._where,
            row.name,
            row.role,
            row.key,
            row.attempts,
            self.max_attempts,
            row.wait_s,
            error,
        )
        async with self._instance.write_lock, self._instance.engine.begin() as conn:
            await conn.execute(
                self._table.update()
                .where(self._table.c.id == row.id)
                .values(attempts=row.attempts, last_error=error, next_attempt_at=next_at)
            )

    async def _kill(self, target: Target, row: _Row, error: str) -> None:
        """Make the row a dead letter, and every later row to the same target with it."""
        t = self._table
        async with self._instance.write_lock, self._instance.engine.begin() as conn:
            await conn.execute(
                t.update()
                .where(t.c.id == row.id)
                .values(status="dead", attempts=row.attempts + 1, last_error=error, next_attempt_at=None)
            )
            blocked = await conn.execute(
                t.update()
                .where(t.c.status == "pending", t.c.role == target[0], t.c.key == target[1], t.c.id > row.id)
                .values(status="dead", last_error=f"blocked behind dead letter {row.id} to the same target")
            )
        self._killed.add(target)
        log.error(
            "outbox of %s: send %s to %s/%s is a dead letter after %d attempts (%s)%s; "
            "retry with `foundry actors retry-dead --role %s --key %s`",
            self._where,
            row.name,
            row.role,
            row.key,
            row.attempts + 1,
            error,
            f"; {blocked.rowcount} later sends to it wait behind it" if blocked.rowcount else "",
            self._instance.role.name,
            self._instance.key,
        )
        await self.refresh_dead_count()

    async def _block(self, row_ids: list[int]) -> None:
        """Rows to a target that has dead letters: they join them, so the target's order holds."""
        t = self._table
        dead = sa.alias(t, "d")
        same_target_dead = (
            sa.select(dead.c.id)
            .where(dead.c.status == "dead", dead.c.role == t.c.role, dead.c.key == t.c.key)
            .exists()
        )
        async with self._instance.write_lock, self._instance.engine.begin() as conn:
            result = await conn.execute(
                t.update()
                .where(t.c.id.in_(row_ids), t.c.status == "pending", same_target_dead)
                .values(status="dead", last_error="blocked behind an earlier dead letter to the same target")
            )
        if result.rowcount:
            log.error(
                "outbox of %s: %d new sends are dead letters because their targets have dead letters",
                self._where,
                result.rowcount,
            )
        await self.refresh_dead_count()

    async def refresh_dead_count(self) -> int:
        """Count the dead letters again and update the marker file ``foundry actors ls`` reads."""
        async with self._instance.read_engine.connect() as conn:
            count = (
                await conn.execute(
                    sa.select(sa.func.count()).select_from(self._table).where(self._table.c.status == "dead")
                )
            ).scalar() or 0
        self.set_dead_count(int(count))
        return self.dead_count

    def set_dead_count(self, count: int) -> None:
        # A tiny file write, like the pending marker: cheaper on the loop than a thread hop.
        self.dead_count = count
        self._instance.host.write_dead_marker(self._instance.key, count)

    async def retry_dead(self) -> int:
        """Make every dead letter pending again with a fresh attempt count; returns how many.

        Idempotent: with no dead letters it does nothing.
        """
        t = self._table
        self._instance._mark_pending()
        async with self._instance.write_lock, self._instance.engine.begin() as conn:
            result = await conn.execute(
                t.update()
                .where(t.c.status == "dead")
                .values(status="pending", attempts=0, last_error=None, next_attempt_at=None)
            )
        self._killed.clear()
        count = int(result.rowcount or 0)
        if count:
            log.warning("outbox of %s: retrying %d dead letters on request", self._where, count)
        self.schedule()
        await self.refresh_dead_count()
        return count
