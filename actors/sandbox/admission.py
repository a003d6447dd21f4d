"""Bounding sandboxes per host process: start/run caps with a fair queue, leases, idle reclaim.

One `Admission` per sandbox host process (the provider's processes are that process's children, so
the caps bound what one machine runs when the sandbox role has one shard per node, the default). It
keeps three things in memory, all of which die with the process together with the sandboxes they
describe:

* **the queue**: sandboxes waiting to start, taking turns between organizations and oldest first
  within one (`Admission._order`). A waiter keeps its place by asking again
  (the task's ``ensure`` polls); one that stops asking for `QUEUE_STALE_S` (its task went away) is
  dropped. Each waiter also has a file in ``<sandbox root>/.queue/`` so that after a restart the
  queued tasks are woken in their original order and the queue is rebuilt before anyone else asks.
* **leases**: a task holds a lease while it uses its sandbox (provisioning, a turn) and renews it; an
  expired or released lease frees the sandbox for reclamation.
* **activity**: the last use of each sandbox. A sandbox without a live lease is stopped once idle for
  ``sandbox.idle_minutes``, or at once when the running cap is reached and others are waiting (least
  recently used first). Its directory is kept; the next use starts it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foundry import metrics
from foundry.errors import FoundryError

log = logging.getLogger(__name__)

ROLE_NAME = "sandbox"
#: A queued sandbox whose task has not asked again for this long is dropped from the queue. Long:
#: under load (a thousand queued tasks on two cores) a task's next ask can come late, and losing
#: the place sends it to the back. A task that goes away (archived) leaves the queue explicitly.
QUEUE_STALE_S = 300.0
#: A released lease still protects the sandbox this long (the task's next job picks it up).
RELEASE_GRACE_S = 3.0
#: A sandbox started this recently, whose task has not yet released it, is never stopped to make
#: room: its task is still setting it up (cloning, opening its agent session), and on a loaded
#: machine the task's lease can lapse between two renewals while it does. Stopping it then only sent
#: that task back to the queue.
START_GRACE_S = 60.0
#: Longest single wait inside `Admission.admit` before re-checking the slots.
_RECHECK_S = 0.5


class Ticket(enum.Enum):
    """What `Admission.admit` decided."""

    ADMITTED = "admitted"  # a start slot is reserved for the caller: start, then `started()`
    QUEUED = "queued"  # still waiting; ask again
    RETRY = "retry"  # somebody else started it meanwhile: look at its status again


@dataclass
class _Waiter:
    key: str
    queued_at: float  # wall clock, for the order across restarts
    last_poll: float  # monotonic
    reported: bool = False


@dataclass
class Admission:
    """See the module docstring. ``provider`` is the process's sandbox provider."""

    provider: Any
    runtime: Any
    max_starting: int
    max_running: int
    idle_seconds: float
    queue: dict[str, _Waiter] = field(default_factory=dict)
    starting: set[str] = field(default_factory=set)
    evicting: set[str] = field(default_factory=set)
    leases: dict[str, dict[str, float]] = field(default_factory=dict)
    #: When each sandbox's last start ended (monotonic), for `START_GRACE_S`.
    started_at: dict[str, float] = field(default_factory=dict)
    activity: dict[str, float] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    #: Bumped on every change of the queue or the slots; keys `_order`'s cache.
    _version: int = 0
    _order_cache: tuple[int, float, list[str]] | None = None
    _reaper: asyncio.Task[None] | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def queue_dir(self) -> Path:
        return Path(self.provider.root_dir) / ".queue"

    # ------------------------------------------------------------------------------ admission

    def running_count(self) -> int:
        """Servers running or being started in this process."""
        running = set(self.provider.running_ids()) if hasattr(self.provider, "running_ids") else set()
        return len(running | self.starting)

    def position(self, sandbox_id: str) -> int:
        """1-based place of a waiting sandbox in the order slots are given (0 when not queued)."""
        order = self._order()
        return order.index(sandbox_id) + 1 if sandbox_id in order else 0

    def _order(self) -> list[str]:
        """The queue in the order slots go to it: fair between organizations, then oldest first.

        A waiter's turn is its organization's sandboxes already running or starting plus the waiters
        of its organization ahead of it: one organization's burst of a thousand tasks takes turns
        with another organization's single task instead of making it wait for all of them.
        """
        now = time.monotonic()
        if (
            self._order_cache is not None
            and self._order_cache[0] == self._version
            and now < self._order_cache[1]
        ):
            return self._order_cache[2]
        active = set(self.provider.running_ids()) | self.starting
        turns: dict[str, int] = {}
        for sandbox_id in active:
            organization = _organization(self.keys.get(sandbox_id, ""))
            turns[organization] = turns.get(organization, 0) + 1
        ranked = []
        for sandbox_id, waiter in self.queue.items():  # oldest first
            organization = _organization(waiter.key)
            turn = turns.get(organization, 0)
            turns[organization] = turn + 1
            ranked.append((turn, waiter.queued_at, sandbox_id))
        order = [sandbox_id for _, _, sandbox_id in sorted(ranked)]
        # Cached briefly: every queued task asks every few seconds, each ask wants its place.
        self._order_cache = (self._version, now + 0.25, order)
        return order

    def reason(self) -> str:
        if len(self.starting) >= self.max_starting:
            return f"waiting for a sandbox start slot ({len(self.starting)} of {self.max_starting} starting)"
        return f"waiting for a sandbox slot ({self.running_count()} of {self.max_running} running)"

    async def admit(self, sandbox_id: str, key: str, wait: float) -> Ticket:
        """Reserve a start slot for ``sandbox_id`` in FIFO order, waiting up to ``wait`` seconds.

        The caller that gets `Ticket.ADMITTED` must call `started` once its start attempt is over.
        """
        self.keys[sandbox_id] = key
        deadline = time.monotonic() + wait
        while True:
            if sandbox_id in self.starting or sandbox_id in self.provider.running_ids():
                await self._wait_until_started(sandbox_id, deadline)
                self._dequeue(sandbox_id)
                return Ticket.RETRY
            self._enqueue(sandbox_id, key)
            self._drop_stale()
            if self._slot_free() and self._order()[0] == sandbox_id:
                self._dequeue(sandbox_id)
                self.starting.add(sandbox_id)
                self._version += 1
                self.activity[sandbox_id] = time.monotonic()
                return Ticket.ADMITTED
            if len(self.starting) < self.max_starting:
                await self._evict_for_waiters()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                waiter = self.queue[sandbox_id]
                if not waiter.reported:
                    waiter.reported = True
                    place = self.position(sandbox_id)
                    log.info("sandbox queued sandbox_id=%s position=%d", sandbox_id, place)
                return Ticket.QUEUED
            await self._wait_change(min(remaining, _RECHECK_S))

    async def wait_started(self, sandbox_id: str, timeout: float = 60.0) -> None:
        """Wait while a start of ``sandbox_id`` is in progress (its outcome is then recorded)."""
        await self._wait_until_started(sandbox_id, time.monotonic() + timeout)

    def started(self, sandbox_id: str) -> None:
        """The admitted start is over (it succeeded or failed): free the start slot."""
        self.starting.discard(sandbox_id)
        self.activity[sandbox_id] = self.started_at[sandbox_id] = time.monotonic()
        self.notify()

    def notify(self) -> None:
        """Slots may have changed (a sandbox stopped, crashed or was destroyed): wake the waiters."""
        self._version += 1
        self._changed.set()

    def leave_queue(self, sandbox_id: str) -> None:
        """The caller will not ask again (it does not wait): give up its place."""
        self._dequeue(sandbox_id)

    def forget(self, sandbox_id: str) -> None:
        """The sandbox was destroyed: drop everything known about it."""
        self._dequeue(sandbox_id)
        for table in (self.leases, self.activity, self.keys, self.started_at):
            table.pop(sandbox_id, None)
        self.notify()

    def _slot_free(self) -> bool:
        return len(self.starting) < self.max_starting and self.running_count() < self.max_running

    async def _wait_change(self, seconds: float) -> None:
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), seconds)

    async def _wait_until_started(self, sandbox_id: str, deadline: float) -> None:
        while sandbox_id in self.starting and time.monotonic() < deadline:
            await self._wait_change(_RECHECK_S)

    def _enqueue(self, sandbox_id: str, key: str) -> None:
        now = time.monotonic()
        waiter = self.queue.get(sandbox_id)
        if waiter is not None:
            waiter.last_poll = now
            return
        waiter = _Waiter(key, time.time(), now)
        self.queue[sandbox_id] = waiter
        self._version += 1
        self._write_queue_file(sandbox_id, waiter)
        log.debug("sandbox asks for a slot sandbox_id=%s position=%d", sandbox_id, len(self.queue))

    def _dequeue(self, sandbox_id: str) -> None:
        if self.queue.pop(sandbox_id, None) is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.queue_dir / sandbox_id).unlink()
            self.notify()

    def _drop_stale(self) -> None:
        cutoff = time.monotonic() - QUEUE_STALE_S
        for sandbox_id, waiter in list(self.queue.items()):
            if waiter.last_poll < cutoff:
                log.warning("sandbox left the queue: its task stopped asking sandbox_id=%s", sandbox_id)
                self._dequeue(sandbox_id)

    def _write_queue_file(self, sandbox_id: str, waiter: _Waiter) -> None:
        try:
            self.queue_dir.mkdir(parents=True, exist_ok=True)
            (self.queue_dir / sandbox_id).write_text(f"{waiter.queued_at}\n{waiter.key}\n")
        except OSError:
            # The queue still works in memory; only its order across a restart is lost.
            log.exception("could not record queued sandbox %s", sandbox_id)

    def restore_queue(self, belongs: Any) -> list[str]:
        """After a restart: rebuild the queue from its files (oldest first) and return the owners'
        keys, which the caller wakes so that they ask again. ``belongs(key)`` picks this host's."""
        entries: list[tuple[float, str, str]] = []
        if self.queue_dir.is_dir():
            for path in self.queue_dir.iterdir():
                try:
                    stamp, key = path.read_text().split("\n")[:2]
                    entries.append((float(stamp), path.name, key))
                except (OSError, ValueError) as exc:
                    log.warning("dropping unreadable queue entry %s (%s)", path, exc)
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
        now = time.monotonic()
        keys = []
        for queued_at, sandbox_id, key in sorted(entries):
            if not belongs(key):
                continue
            self.queue[sandbox_id] = _Waiter(key, queued_at, now)
            self.keys[sandbox_id] = key
            keys.append(key)
        return keys

    # ------------------------------------------------------------------------------ leases

    def lease(self, sandbox_id: str, lease_id: str, seconds: float) -> None:
        """Take or renew a lease: the sandbox is in use for ``seconds`` more."""
        now = time.monotonic()
        self.leases.setdefault(sandbox_id, {})[lease_id] = now + seconds
        self.activity[sandbox_id] = now

    def release(self, sandbox_id: str, lease_id: str) -> None:
        """End a lease (after a short grace, so the task's next job can take over)."""
        leases = self.leases.get(sandbox_id, {})
        if lease_id in leases:
            leases[lease_id] = min(leases[lease_id], time.monotonic() + RELEASE_GRACE_S)
        self.activity[sandbox_id] = time.monotonic()
        self.started_at.pop(sandbox_id, None)  # its task is done with it: no start grace left

    def busy(self, sandbox_id: str) -> bool:
        """True while a lease on the sandbox is live."""
        now = time.monotonic()
        leases = self.leases.get(sandbox_id, {})
        for lease_id, expiry in list(leases.items()):
            if expiry <= now:
                del leases[lease_id]
        return bool(leases)

    # ------------------------------------------------------------------------------ reclaiming

    def _idle_since(self, sandbox_id: str) -> float:
        return self.activity.get(sandbox_id, 0.0)

    async def _evict_for_waiters(self) -> None:
        """Running cap reached with sandboxes waiting: stop the least recently used one not in use."""
        if not self.queue or self.running_count() - len(self.evicting) < self.max_running:
            return
        running = self.provider.running_ids()
        per_organization: dict[str, int] = {}
        for sandbox_id in running:
            organization = _organization(self.keys.get(sandbox_id, ""))
            per_organization[organization] = per_organization.get(organization, 0) + 1
        # From the organization running the most (a burst makes room for itself first), then the
        # least recently used.
        settled = time.monotonic() - START_GRACE_S
        candidates = sorted(
            (
                sandbox_id
                for sandbox_id in running
                if sandbox_id not in self.evicting
                and not self.busy(sandbox_id)
                and self.started_at.get(sandbox_id, 0.0) < settled
            ),
            key=lambda sandbox_id: (
                -per_organization.get(_organization(self.keys.get(sandbox_id, "")), 0),
                self._idle_since(sandbox_id),
            ),
        )
        if candidates:
            self._reclaim_soon(candidates[0], "another task is waiting for a sandbox slot")

    def _reclaim_soon(self, sandbox_id: str, reason: str) -> None:
        self.evicting.add(sandbox_id)
        task = asyncio.create_task(self._reclaim(sandbox_id, reason), name=f"sandbox-reclaim:{sandbox_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reclaim(self, sandbox_id: str, reason: str) -> None:
        try:
            key = self.keys.get(sandbox_id)
            if key is None:
                await self.provider.stop(sandbox_id)
            else:
                # Through the actor, which records the stop (and re-checks that nobody took a lease).
                await self.runtime.call(ROLE_NAME, key, "reclaim", {"reason": reason})
        except FoundryError:
            log.exception("could not reclaim sandbox %s (%s)", sandbox_id, reason)
        except Exception:
            log.exception("reclaiming sandbox %s failed (%s)", sandbox_id, reason)
        finally:
            self.evicting.discard(sandbox_id)
            self.notify()

    def start_reaper(self) -> None:
        """Stop sandboxes idle for ``idle_seconds`` (checked a few times per idle period)."""
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_idle(), name="sandbox-idle-reaper")

    async def _reap_idle(self) -> None:
        interval = max(0.25, min(self.idle_seconds / 4, 15.0))
        while True:
            await asyncio.sleep(interval)
            try:
                cutoff = time.monotonic() - self.idle_seconds
                for sandbox_id in self.provider.running_ids():
                    if sandbox_id in self.evicting or sandbox_id in self.starting:
                        continue
                    if not self.busy(sandbox_id) and self._idle_since(sandbox_id) < cutoff:
                        self._reclaim_soon(sandbox_id, f"idle for {self.idle_seconds:g} s")
            except Exception:
                log.exception("the sandbox idle reaper failed")

    async def close(self) -> None:
        """Stop the reaper and pending reclaims (the host is closing; its sandboxes stop with it)."""
        tasks = [*self._tasks, *([self._reaper] if self._reaper is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._reaper = None


def _organization(key: str) -> str:
    """The organization of a sandbox actor's key ``<orgId>:<taskId>``."""
    return key.rpartition(":")[0]


def admission_for(provider: Any, runtime: Any, settings: Any) -> Admission:
    """The process's `Admission`, created on first use and kept on the provider (one per process)."""
    current = getattr(provider, "admission", None)
    if isinstance(current, Admission):
        return current
    sandbox = settings.sandbox
    admission = Admission(
        provider,
        runtime,
        max_starting=sandbox.max_starting,
        max_running=sandbox.max_running,
        idle_seconds=sandbox.idle_minutes * 60,
    )
    provider.admission = admission
    metrics.track_admission(admission)
    admission.start_reaper()
    return admission
