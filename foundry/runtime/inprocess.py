"""The in-process backend: every host in this event loop, arguments and results pickled as Ray would.

Same semantics as the Ray backend, minus processes: for unit tests and single-process development.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from foundry.errors import ActorUnavailable
from foundry.runtime.client import Runtime, roundtrip
from foundry.runtime.events import Event
from foundry.runtime.host import Host
from foundry.runtime.role import Role, available_roles, load_role
from foundry.services import Services


class InProcessRuntime(Runtime):
    """Hosts created on first use, all in the current event loop."""

    def __init__(
        self,
        data_dir: Path,
        services: Services,
        *,
        shard_counts: dict[str, int] | None = None,
        default_shards: int = 1,
        idle_seconds: float = 120.0,
        roles: dict[str, Role] | None = None,
        extra_role_modules: dict[str, str] | None = None,
    ) -> None:
        super().__init__(shard_counts, default_shards)
        self.data_dir = Path(data_dir)
        self.services = services
        self.idle_seconds = idle_seconds
        self._roles = dict(roles or {})
        self._extra_role_modules = dict(extra_role_modules or {})
        self._hosts: dict[tuple[str, int], Host] = {}
        self._closed = False

    def role(self, name: str) -> Role:
        if name not in self._roles:
            self._roles[name] = load_role(name, self._extra_role_modules)
        return self._roles[name]

    def host(self, role: str, shard: int) -> Host:
        """The host of (role, shard), started on first use."""
        host = self._hosts.get((role, shard))
        if host is None:
            if self._closed:
                # A closed runtime never starts a host again: one started behind its back (a stream
                # reconnecting, a late call) would run recovery and jobs beside the databases' next
                # owner, e.g. a runtime restarted on the same data directory.
                raise ActorUnavailable(f"host {role}/{shard}: the runtime is closed")
            host = Host(
                self.role(role),
                shard,
                self.shards(role),
                self.data_dir,
                self,
                self.services,
                self.idle_seconds,
            )
            host.start(recover=True)
            self._hosts[(role, shard)] = host
        return host

    async def _on_current_host(
        self, role: str, key: str, op: Callable[[Host], Awaitable[tuple[Any, ...]]]
    ) -> tuple[Any, ...]:
        """Run ``op`` on the host of ``key``; again on its replacement if that host stopped meanwhile
        (as a Ray caller retries on a restarted host)."""
        shard = self.shard_for(role, key)
        while True:
            host = self.host(role, shard)
            outcome = roundtrip(await op(host))
            status, value = outcome[0], outcome[1]
            replaced = self._hosts.get((role, shard)) is not host
            if status != "ok" and replaced and value.get("code") == ActorUnavailable.code:
                continue
            return outcome  # type: ignore[no-any-return]

    async def _send(
        self, role: str, key: str, name: str, body: Any, *, wait: bool, timeout: float, command_id: str
    ) -> tuple[Any, ...]:
        return await self._on_current_host(
            role,
            key,
            lambda host: host.send(
                key, name, roundtrip(body), wait=wait, timeout=timeout, command_id=command_id
            ),
        )

    async def _call(self, role: str, key: str, action: str, body: Any) -> tuple[Any, ...]:
        return await self._on_current_host(role, key, lambda host: host.call(key, action, roundtrip(body)))

    async def _host_op(self, role: str, key: str, method: str) -> tuple[Any, ...]:
        return await self._on_current_host(role, key, lambda host: getattr(host, method)(key))

    async def subscribe(self, role: str, shard: int) -> AsyncIterator[list[Event]]:
        async for batch in self.host(role, shard).subscribe():
            yield roundtrip(batch)

    async def start(self) -> None:
        """Start every role's hosts now, as the Ray backend does, so that their start hooks (the
        recovery scan, the sandbox role's reaping of leftovers) run at start-up, not at first use."""
        for role in [*available_roles(), *self._extra_role_modules]:
            for shard in range(self.shards(role)):
                self.host(role, shard)

    async def awake(self) -> dict[str, list[str]]:
        return {host.name: host.awake_keys() for host in self._hosts.values()}

    async def restart_host(self, role: str, shard: int = 0) -> Host:
        """Drop a host's in-memory state and start it again (recovery runs); for tests."""
        old = self._hosts.pop((role, shard), None)
        if old is not None:
            await old.close()
        return self.host(role, shard)

    async def close(self) -> None:
        self._closed = True
        for host in list(self._hosts.values()):
            await host.close()
        self._hosts.clear()
