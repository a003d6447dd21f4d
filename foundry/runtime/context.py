"""What role code sees of its instance: the database, events, other actors and background jobs."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncConnection

from foundry.runtime.role import to_jsonable

if TYPE_CHECKING:
    from foundry.runtime.client import ActorRef
    from foundry.runtime.instance import Instance
    from foundry.services import Services

log = logging.getLogger("foundry.actor")


@dataclass
class PendingPublish:
    topic: str
    event: str
    data: Any


@dataclass
class PendingSend:
    role: str
    key: str
    name: str
    body: Any
    command_id: str


class InstanceContext:
    """The view of one instance given to actions and background jobs.

    Writes go through `write()`, which serializes with the mailbox loop and publishes events and
    outgoing sends only once the transaction has committed.
    """

    def __init__(self, instance: Instance) -> None:
        self._instance = instance
        self._conn: AsyncConnection | None = None
        self._publishes: list[PendingPublish] = []
        self._sends: list[PendingSend] = []
        self._pending_seqs: dict[str, int] | None = None
        #: The last seq committed on each topic through this context (returned with the result of
        #: an action or command, for read-your-writes).
        self.committed_seqs: dict[str, int] = {}

    @property
    def role(self) -> str:
        return self._instance.role.name

    @property
    def key(self) -> str:
        return self._instance.key

    @property
    def services(self) -> Services:
        return self._instance.host.services

    def now_ms(self) -> int:
        return self.services.clock.now_ms()

    def actor(self, role: str, key: str) -> ActorRef:
        """A reference to another actor (or this one). Never ``wait=True`` on a command from inside
        a command: two actors waiting on each other's loops deadlock."""
        return self._instance.host.runtime.actor(role, key)

    @property
    def self_ref(self) -> ActorRef:
        return self.actor(self.role, self.key)

    @asynccontextmanager
    async def read(self, *, consistent: bool = False) -> AsyncIterator[AsyncConnection]:
        """A connection for reads; runs beside the mailbox loop.

        With ``consistent``, no write can commit while the block runs, so several statements see one
        state (a snapshot and its topic seq, say). Cheap, but it waits for a running command.
        """
        if consistent:
            async with self._instance.write_lock, self._instance.read_engine.connect() as conn:
                yield conn
            return
        async with self._instance.read_engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction, serialized with the mailbox loop; events publish after commit."""
        if self._conn is not None:
            raise RuntimeError("write() called inside a transaction; use the open connection")
        async with self._instance.transaction(self) as conn:
            yield conn

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[AsyncConnection]:
        """A savepoint of the current transaction: if the block raises, its writes are rolled back
        and so are the events it published and the commands it sent (they would describe writes
        that never happened)."""
        if self._conn is None:
            raise RuntimeError("savepoint() needs a transaction")
        published, sent = len(self._publishes), len(self._sends)
        try:
            async with self._conn.begin_nested():
                yield self._conn
        except BaseException:
            del self._publishes[published:]
            del self._sends[sent:]
            raise

    def publish(self, topic: str, event: str, data: Any, *, plain: bool = False) -> None:
        """Publish on a topic this instance owns, once the current transaction commits.

        The runtime stamps a per-topic ``seq`` that survives restarts. ``plain`` says ``data`` is
        already plain JSON data (dicts, lists, scalars), so the conversion walk is skipped: it is the
        largest cost of recording a fast agent's events.
        """
        if self._conn is None:
            raise RuntimeError("publish() needs a transaction: call it inside a command or ctx.write()")
        self._publishes.append(PendingPublish(topic, event, data if plain else to_jsonable(data)))

    def send_after_commit(
        self, role: str, key: str, name: str, body: Any = None, *, command_id: str | None = None
    ) -> str:
        """Send a command to another actor once this transaction commits; never lost.

        The send is written to this instance's outbox in the same transaction and delivered (again,
        after a crash) until the receiver acknowledges it; the command id makes redelivery harmless.
        """
        if self._conn is None:
            raise RuntimeError("send_after_commit() needs a transaction")
        command_id = command_id or f"{self.key}:{uuid.uuid4().hex}"
        self._sends.append(PendingSend(role, key, name, to_jsonable(body), command_id))
        return command_id

    def start_job(
        self, name: str, fn: Callable[[JobContext], Awaitable[None]], *, again_if_running: bool = False
    ) -> bool:
        """Run long work owned by this instance, off the mailbox loop. Idempotent by name: returns
        False when a job with that name is already running. The instance stays awake meanwhile.

        ``again_if_running``: for a job that drains work and then ends, run it once more after the
        running one ends. Work committed while that one was deciding it had nothing left to do is
        then never missed (a lost wake-up).
        """
        return self._instance.start_job(name, fn, again_if_running=again_if_running)

    def cancel_job(self, name: str) -> bool:
        return self._instance.cancel_job(name)

    def job_running(self, name: str) -> bool:
        return self._instance.job_running(name)


class CommandContext(InstanceContext):
    """The view given to a mailbox command: its transaction is already open in `conn`."""

    def __init__(self, instance: Instance, conn: AsyncConnection, command_id: str) -> None:
        super().__init__(instance)
        self._conn = conn
        self.command_id = command_id

    @property
    def conn(self) -> AsyncConnection:
        assert self._conn is not None
        return self._conn

    def derived_id(self, suffix: str) -> str:
        """A command id derived from this command's id, stable across a replay of this command."""
        return f"{self.command_id}/{suffix}"


ActionContext = InstanceContext
JobContext = InstanceContext
