"""The caller's side of the runtime: `Runtime` (a backend) and `ActorRef` (one actor)."""

from __future__ import annotations

import abc
import pickle
import uuid
from collections.abc import AsyncIterator
from typing import Any

from foundry.errors import FoundryError
from foundry.runtime.events import Event
from foundry.runtime.keys import shard_of, validate_key
from foundry.runtime.role import to_jsonable
from foundry.runtime.written import WrittenListeners, written_of

DEFAULT_TIMEOUT_S = 10.0


def roundtrip(value: Any) -> Any:
    """A deep copy made as Ray makes one (pickled both ways): a callee in the caller's process never
    shares objects with it, and unpicklable arguments, results and errors fail here too."""
    return pickle.loads(pickle.dumps(value))


def unwrap(outcome: tuple[Any, ...]) -> Any:
    """Turn a host's outcome envelope into a value or a raised `FoundryError`."""
    status, value = outcome[0], outcome[1]
    if status == "ok":
        return value
    raise FoundryError.from_payload(value)


class Runtime(abc.ABC):
    """A backend that hosts actors: in-process for unit tests and ``foundry dev``, Ray for ``serve``."""

    def __init__(self, shard_counts: dict[str, int] | None = None, default_shards: int = 1) -> None:
        self._shard_counts = dict(shard_counts or {})
        self._default_shards = default_shards
        #: Told the topic seqs every write through this runtime committed (read-your-writes).
        self.written = WrittenListeners()

    def shards(self, role: str) -> int:
        return max(1, self._shard_counts.get(role, self._default_shards))

    def shard_for(self, role: str, key: str) -> int:
        return shard_of(validate_key(key), self.shards(role))

    def actor(self, role: str, key: str) -> ActorRef:
        return ActorRef(self, role, key)

    async def send(
        self,
        role: str,
        key: str,
        name: str,
        body: Any = None,
        *,
        wait: bool = False,
        timeout: float = DEFAULT_TIMEOUT_S,
        command_id: str | None = None,
    ) -> Any:
        """Durably send command ``name`` to actor (role, key).

        The command is committed before this returns. With ``wait`` the handler's result is returned
        (or its error raised); otherwise ``{"commandId", "status", "duplicate"}``. A repeated
        ``command_id`` never runs the handler twice: it returns the stored outcome.

        Raises:
            InvalidInput / NotFound: bad key, unknown command, invalid body (nothing is enqueued).
            CommandTimeout: ``wait`` and the command did not finish in ``timeout`` (it still runs).
            ActorUnavailable: the host stayed unreachable across retries.
        """
        command_id = command_id or uuid.uuid4().hex
        return self._unwrap(
            await self._send(
                role, key, name, to_jsonable(body), wait=wait, timeout=timeout, command_id=command_id
            )
        )

    async def call(self, role: str, key: str, action: str, body: Any = None) -> Any:
        """Run a direct action on actor (role, key) and return its result (or raise its error)."""
        return self._unwrap(await self._call(role, key, action, to_jsonable(body)))

    def _unwrap(self, outcome: tuple[Any, ...]) -> Any:
        seqs = written_of(outcome)
        if seqs is not None:
            self.written.note(seqs)
        return unwrap(outcome)

    async def dead_letters(self, role: str, key: str) -> dict[str, Any]:
        """The dead letters in actor (role, key)'s outbox: ``{"count": N, "items": [...]}``."""
        return unwrap(await self._host_op(role, validate_key(key), "dead_letters"))  # type: ignore[no-any-return]

    async def retry_dead_letters(self, role: str, key: str) -> int:
        """Deliver actor (role, key)'s dead letters again with fresh attempt counts; returns how many."""
        return int(unwrap(await self._host_op(role, validate_key(key), "retry_dead_letters"))["retried"])

    @abc.abstractmethod
    async def _host_op(self, role: str, key: str, method: str) -> tuple[Any, ...]:
        """Run `Host` method ``method(key)`` (an operator action on one instance) on its host."""

    @abc.abstractmethod
    async def _send(
        self, role: str, key: str, name: str, body: Any, *, wait: bool, timeout: float, command_id: str
    ) -> tuple[Any, ...]: ...

    @abc.abstractmethod
    async def _call(self, role: str, key: str, action: str, body: Any) -> tuple[Any, ...]: ...

    @abc.abstractmethod
    def subscribe(self, role: str, shard: int) -> AsyncIterator[list[Event]]:
        """The ordered event stream of one host (role, shard)."""

    async def wait_host(self, role: str, shard: int) -> None:  # noqa: B027 - optional hook
        """Return once host (role, shard) answers calls (a restarted one is back); in-process hosts
        always do."""

    @abc.abstractmethod
    async def awake(self) -> dict[str, list[str]]:
        """Awake instance keys by host name."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect or start hosts."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release hosts (in-process) or disconnect (Ray)."""


class ActorRef:
    """One logical actor, addressed by role and key."""

    def __init__(self, runtime: Runtime, role: str, key: str) -> None:
        self.runtime = runtime
        self.role = role
        self.key = key

    def __repr__(self) -> str:
        return f"ActorRef({self.role}/{self.key})"

    async def send(
        self,
        name: str,
        body: Any = None,
        *,
        wait: bool = False,
        timeout: float = DEFAULT_TIMEOUT_S,
        command_id: str | None = None,
    ) -> Any:
        """See `Runtime.send`."""
        return await self.runtime.send(
            self.role, self.key, name, body, wait=wait, timeout=timeout, command_id=command_id
        )

    async def call(self, action: str, body: Any = None) -> Any:
        """See `Runtime.call`."""
        return await self.runtime.call(self.role, self.key, action, body)
