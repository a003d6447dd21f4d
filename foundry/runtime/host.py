"""A host keeps the instances of one role's shard: wakes them, routes calls, puts them to sleep.

This is the Ray-free core; `ray_backend.HostActor` and `inprocess.InProcessRuntime` wrap it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foundry import metrics
from foundry.errors import (
    ActorUnavailable,
    CommandFailed,
    FoundryError,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
)
from foundry.runtime.events import Event, EventHub
from foundry.runtime.inbox import Inbox, keys_with_waiting_commands
from foundry.runtime.instance import Instance
from foundry.runtime.keys import PARTITIONS, partition_dir_name, partition_of, shard_of, validate_key
from foundry.runtime.mailbox import Outcome
from foundry.runtime.role import Role, to_jsonable, validate_body
from foundry.runtime.tables import dead_letters

if TYPE_CHECKING:
    from foundry.runtime.client import Runtime
    from foundry.services import Services

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024


class Host:
    """The instances of one (role, shard).

    Args:
        role: the role hosted here.
        shard: this host's shard number; keys of other shards are refused.
        shards: the role's shard count.
        data_dir: root of all actor databases; this role's files live in ``data_dir/<role>/<partition>/``.
        runtime: a client for reaching other actors (outbox delivery, ``ctx.actor``).
        services: drivers and settings for role code.
        idle_seconds: an instance idle this long is put to sleep.
    """

    def __init__(
        self,
        role: Role,
        shard: int,
        shards: int,
        data_dir: Path,
        runtime: Runtime,
        services: Services,
        idle_seconds: float = 120.0,
    ) -> None:
        self.role = role
        self.shard = shard
        self.shards = shards
        self.root = Path(data_dir) / role.name
        #: One empty file per instance with pending commands or undelivered sends (recovery index).
        self.pending_dir = self.root / ".pending"
        #: One file per instance with dead letters, holding their count (for ``foundry actors ls``).
        self.dead_dir = self.root / ".dead"
        #: Head-schema templates that new instance databases are copied from.
        self.schema_dir = self.root / ".schema"
        #: Commands acknowledged and not yet run, for every instance of this shard.
        self.inbox = Inbox(inbox_path(self.root, shard))
        self.runtime = runtime
        self.services = services
        self.idle_seconds = idle_seconds
        self.hub = EventHub()
        self.name = f"foundry.{role.name}.{shard}"
        self._instances: dict[str, Instance] = {}
        self._key_locks: dict[str, asyncio.Lock] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[int] | None = None
        self._role_start: asyncio.Future[None] | None = None
        self._closed = False
        self._stopping = False
        self.sleeps = 0

    # ----------------------------------------------------------------------------- lifecycle

    def start(self, recover: bool = True) -> None:
        """Start the idle reaper and, after a (re)start, the recovery scan; both in the background."""
        if self._reaper is None:
            metrics.track_host(self)
            self._reaper = asyncio.create_task(self._reap_idle(), name=f"reaper:{self.name}")
        if recover and self._recovery is None:
            self._recovery = asyncio.create_task(self.recover(), name=f"recover:{self.name}")
        if self.role.on_host_start is not None and self._role_start is None:
            self._role_start = asyncio.ensure_future(self.role.on_host_start(self))

    async def recovered(self) -> int:
        """Wait for the recovery scan; returns how many instances it woke."""
        return await self._recovery if self._recovery is not None else 0

    async def close(self) -> None:
        """Stop background work, close every instance, then let the role release its resources.

        From here on no instance wakes on this host: a request that reached it while it closes gets
        `ActorUnavailable` (retried by callers), not an instance that nobody would ever close and whose
        open transactions would lock its database against the host that replaces this one.
        """
        self._stopping = True
        for task in (self._reaper, self._recovery, self._role_start):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                except Exception:
                    log.exception("%s: background task failed while closing", self.name)
        for key in list(self._instances):
            instance = self._instances.pop(key)
            await instance.close()
        self.inbox.close()
        self.hub.close()
        if self.role.on_host_stop is not None and not self._closed:
            self._closed = True
            try:
                await self.role.on_host_stop(self)
            except Exception:
                log.exception("%s: the role's stop hook failed", self.name)

    def awake_keys(self) -> list[str]:
        return sorted(self._instances)

    # ----------------------------------------------------------------------------- entry points

    async def send(
        self,
        key: str,
        name: str,
        body: Any = None,
        *,
        wait: bool = False,
        timeout: float = 10.0,
        command_id: str | None = None,
    ) -> Outcome:
        """Durably enqueue command ``name`` for instance ``key``; see `Instance.send`."""
        try:
            self._check_key(key)
            handler = self.role.command(name)
            model = validate_body(handler, body, self.role.name)
            body_json = model.model_dump_json(by_alias=True)
            if len(body_json) > MAX_BODY_BYTES:
                raise PayloadTooLarge(
                    f"{self.role.name}.{name}: body is {len(body_json)} bytes, the limit is {MAX_BODY_BYTES}"
                )
            if command_id is not None and (not isinstance(command_id, str) or not 0 < len(command_id) <= 200):
                raise InvalidInput("command_id must be a string of 1-200 characters", ["command_id"])
            command_id = command_id or uuid.uuid4().hex
            instance = await self._acquire(key)
        except FoundryError as exc:
            return ("err", exc.to_payload())
        except Exception as exc:
            return ("err", self._wake_failed(key, exc).to_payload())
        try:
            return await instance.send(name, body_json, wait=wait, timeout=timeout, command_id=command_id)
        except Exception as exc:
            log.exception("%s: send %s to %s failed", self.name, name, key)
            return ("err", CommandFailed(f"could not enqueue {name!r} for {key!r}: {exc}").to_payload())
        finally:
            self._release(instance)

    async def call(self, key: str, action: str, body: Any = None) -> Outcome:
        """Run action ``action`` on instance ``key`` directly (concurrently with its loop)."""
        try:
            self._check_key(key)
            handler = self.role.action(action)
            model = validate_body(handler, body, self.role.name)
            if len(json.dumps(to_jsonable(body))) > MAX_BODY_BYTES:
                raise PayloadTooLarge(f"{self.role.name}.{action}: body is over {MAX_BODY_BYTES} bytes")
            instance = await self._acquire(key)
        except FoundryError as exc:
            return ("err", exc.to_payload())
        except Exception as exc:
            return ("err", self._wake_failed(key, exc).to_payload())
        try:
            return await instance.call(handler, model)
        finally:
            self._release(instance)

    def _wake_failed(self, key: str, exc: Exception) -> FoundryError:
        # A database that cannot be opened or migrated is an unavailable actor, not a crash of the
        # caller: callers (and outboxes) get a clear error and retry later.
        log.exception("%s: instance %s could not wake", self.name, key)
        return ActorUnavailable(f"{self.role.name}/{key} could not wake: {type(exc).__name__}: {exc}")

    # ----------------------------------------------------------------------------- dead letters

    async def dead_letters(self, key: str) -> Outcome:
        """The dead letters in instance ``key``'s outbox: ``{"count", "items"}``."""
        try:
            self._check_key(key)
            self._check_exists(key)
            instance = await self._acquire(key)
        except FoundryError as exc:
            return ("err", exc.to_payload())
        except Exception as exc:
            return ("err", self._wake_failed(key, exc).to_payload())
        try:
            async with instance.read_engine.connect() as conn:
                return ("ok", await dead_letters(conn))
        finally:
            self._release(instance)

    async def retry_dead_letters(self, key: str) -> Outcome:
        """Deliver instance ``key``'s dead letters again, with fresh attempt counts; ``{"retried": N}``."""
        try:
            self._check_key(key)
            self._check_exists(key)
            instance = await self._acquire(key)
        except FoundryError as exc:
            return ("err", exc.to_payload())
        except Exception as exc:
            return ("err", self._wake_failed(key, exc).to_payload())
        try:
            return ("ok", {"retried": await instance.outbox.retry_dead()})
        finally:
            self._release(instance)

    def write_dead_marker(self, key: str, count: int) -> None:
        marker = self.dead_dir / key
        if count:
            marker.write_text(str(count))
        else:
            marker.unlink(missing_ok=True)

    async def dead_letter_counts(self) -> dict[str, int]:
        """Dead letters per instance of this shard, asleep ones included (from the marker files)."""
        counts = await asyncio.to_thread(self._read_dead_markers)
        for key, instance in self._instances.items():  # awake instances know their exact count
            if instance.outbox.dead_count:
                counts[key] = instance.outbox.dead_count
            else:
                counts.pop(key, None)
        return dict(sorted(counts.items()))

    def metrics_snapshot(self) -> dict[str, int]:
        """Counts for ``/metrics``: awake instances, commands queued or running in them, instances
        with pending work (asleep ones included) and dead letters of this shard."""
        dead = self._read_dead_markers()
        for key, instance in self._instances.items():
            dead[key] = instance.outbox.dead_count
        pending = 0
        if self.pending_dir.is_dir():
            pending = sum(
                1 for p in self.pending_dir.iterdir() if shard_of(p.name, self.shards) == self.shard
            )
        return {
            "awake": len(self._instances),
            "mailbox": sum(i.mailbox_depth() for i in self._instances.values()),
            "pending": pending,
            "dead": sum(dead.values()),
        }

    def _read_dead_markers(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        if not self.dead_dir.is_dir():
            return counts
        for path in self.dead_dir.iterdir():
            if shard_of(path.name, self.shards) != self.shard:
                continue
            try:
                counts[path.name] = int(path.read_text() or 0)
            except (OSError, ValueError) as exc:
                log.warning("%s: unreadable dead-letter marker %s: %s", self.name, path, exc)
        return counts

    async def subscribe(self, heartbeat_s: float | None = None) -> AsyncIterator[list[Event]]:
        """Every event published by this host's instances, in order, in batches (an empty one after
        ``heartbeat_s`` without events, when given)."""
        async for batch in self.hub.subscribe(heartbeat_s):
            yield batch

    # ----------------------------------------------------------------------------- instances

    def _check_key(self, key: str) -> None:
        validate_key(key)
        if shard_of(key, self.shards) != self.shard:
            raise InvalidInput(f"key {key!r} belongs to shard {shard_of(key, self.shards)}, not {self.shard}")

    def _check_exists(self, key: str) -> None:
        """An operator's inspection names an instance that has data; it must not create one (a
        mistyped key would otherwise leave an empty database behind, and in every backup)."""
        if key not in self._instances and not self.path_for(key).exists():
            raise NotFound(
                f"no {self.role.name} instance {key!r} on this host (no database at {self.path_for(key)})"
            )

    def pending_marker(self, key: str) -> Path:
        return self.pending_dir / key

    def path_for(self, key: str) -> Path:
        return self.root / partition_dir_name(partition_of(key)) / f"{key}.sqlite3"

    async def _acquire(self, key: str) -> Instance:
        instance = self._instances.get(key)
        if instance is not None:
            instance.active += 1
            return instance
        lock = self._key_locks.setdefault(key, asyncio.Lock())
        async with lock:
            instance = self._instances.get(key)
            if instance is None:
                self._refuse_if_stopping(key)
                path = self.path_for(key)
                await asyncio.to_thread(_make_dirs, path.parent, self.pending_dir, self.dead_dir)
                instance = Instance(self, key, path)
                await instance.wake()
                if self._stopping:  # the host began closing during the wake: it will not close this one
                    await instance.close()
                    self._refuse_if_stopping(key)
                self._instances[key] = instance
            instance.active += 1
            return instance

    def _refuse_if_stopping(self, key: str) -> None:
        if self._stopping:
            raise ActorUnavailable(f"{self.role.name}/{key}: host {self.name} is stopping; retry shortly")

    def _release(self, instance: Instance) -> None:
        instance.active -= 1
        instance.touch()

    async def sleep_idle(self, older_than: float | None = None) -> int:
        """Put every quiescent instance idle for ``older_than`` seconds to sleep; returns the count."""
        threshold = self.idle_seconds if older_than is None else older_than
        now = asyncio.get_running_loop().time()
        slept = 0
        for key, instance in list(self._instances.items()):
            if now - instance.last_used < threshold or not instance.quiescent():
                continue
            lock = self._key_locks.setdefault(key, asyncio.Lock())
            async with lock:
                if self._instances.get(key) is not instance or not instance.quiescent():
                    continue
                del self._instances[key]
            await instance.close()
            self._key_locks.pop(key, None)
            slept += 1
        self.sleeps += slept
        return slept

    async def _reap_idle(self) -> None:
        interval = max(0.05, min(self.idle_seconds / 2, 10.0))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sleep_idle()
            except Exception:
                log.exception("%s: idle reaper failed", self.name)

    # ----------------------------------------------------------------------------- recovery

    async def recover(self) -> int:
        """Wake every instance of this shard that has pending commands or undelivered sends.

        The file scan runs in a thread: on the loop it stalled every instance ~1.2 s per 1,000 files.
        """
        keys = await asyncio.to_thread(self._scan_pending)
        for key in keys:
            try:
                instance = await self._acquire(key)
                self._release(instance)
            except Exception:
                log.exception("%s: recovery could not wake %s", self.name, key)
        if keys:
            log.info("%s: recovery woke %d instances with pending work", self.name, len(keys))
        return len(keys)

    def _scan_pending(self) -> list[str]:
        if self.pending_dir.is_dir():
            return sorted(
                p.name for p in self.pending_dir.iterdir() if shard_of(p.name, self.shards) == self.shard
            )
        # No index yet (data written before it existed): open every file once, then keep the index.
        self.pending_dir.mkdir(parents=True, exist_ok=True)
        found: set[str] = set(keys_with_waiting_commands(self.inbox.path))
        for partition in range(PARTITIONS):
            if partition % self.shards != self.shard:
                continue
            folder = self.root / partition_dir_name(partition)
            if not folder.is_dir():
                continue
            for path in folder.glob("*.sqlite3"):
                key = path.name[: -len(".sqlite3")]
                if key not in found and _has_pending_work(path, self.role.resume_query):
                    found.add(key)
        return sorted(found)


def inbox_path(role_root: Path, shard: int) -> Path:
    """The inbox file of shard ``shard`` of the role whose files live in ``role_root``."""
    return role_root / ".inbox" / f"{shard}.sqlite3"


def _make_dirs(*paths: Path) -> None:
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)


def _has_pending_work(path: Path, resume_query: str | None = None) -> bool:
    """Whether the instance at ``path`` has work a start must resume: pending commands or sends, or
    (``resume_query``, the role's) a job its wake picks up again."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        log.exception("recovery: cannot open %s", path)
        return False
    try:
        if resume_query is not None and conn.execute(resume_query).fetchone():
            return True
        pending = conn.execute("SELECT 1 FROM foundry_mailbox WHERE status='pending' LIMIT 1").fetchone()
        try:
            outbox = conn.execute("SELECT 1 FROM foundry_outbox WHERE status='pending' LIMIT 1").fetchone()
        except sqlite3.OperationalError:
            # Written before outbox rows had a status: every row there is pending.
            outbox = conn.execute("SELECT 1 FROM foundry_outbox LIMIT 1").fetchone()
        return bool(pending or outbox)
    except sqlite3.OperationalError as exc:
        # A file that was never migrated has no mailbox yet, so nothing can be pending in it.
        log.debug("recovery: %s has no mailbox (%s)", path, exc)
        return False
    finally:
        conn.close()
