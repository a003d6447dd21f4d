"""Realtime fixtures: an in-process runtime with the snapshot test role, a real uvicorn server on a
free port serving ``WS /v1/realtime``, and real websocket clients (the ``websockets`` package)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from foundry.clock import FakeClock
from foundry.errors import ActorUnavailable
from foundry.realtime import RealtimeGateway
from foundry.runtime.events import Event
from foundry.runtime.inprocess import InProcessRuntime
from foundry.services import Services
from tests.conftest import COUNTER_MODULE, make_settings
from tests.realtime import snapshot_role
from tests.realtime.helpers import ROLE, Client, make_registry, running_server, ws_url

EXTRA_ROLES = {"counter": COUNTER_MODULE, ROLE: snapshot_role.MODULE}


class ControlledRuntime(InProcessRuntime):
    """The in-process runtime, with host streams a test can break or make lose events."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.breaks = 0
        self.drop_next: set[str] = set()
        #: Snapshot reads that fail as a hung or restarting host's do, before they are served again.
        self.unavailable_snapshots = 0
        #: How long each snapshot read takes (a host busy elsewhere).
        self.snapshot_delay = 0.0

    async def call(self, role: str, key: str, action: str, body: Any = None) -> Any:
        if action == "snapshot" and self.snapshot_delay:
            await asyncio.sleep(self.snapshot_delay)
        if action == "snapshot" and self.unavailable_snapshots > 0:
            self.unavailable_snapshots -= 1
            raise ActorUnavailable(f"test: host process of {role} gave no answer within 5 s")
        return await super().call(role, key, action, body)

    async def subscribe(self, role: str, shard: int) -> AsyncIterator[list[Event]]:  # type: ignore[override]
        opened_at = self.breaks
        async for batch in super().subscribe(role, shard):
            if self.breaks > opened_at:
                raise ActorUnavailable(f"test: the stream of {role}/{shard} was broken")
            kept = []
            for event in batch:
                if event.topic in self.drop_next:
                    self.drop_next.discard(event.topic)  # lost on the way, like a crash after commit
                else:
                    kept.append(event)
            yield kept

    def break_streams(self) -> None:
        """Make every open stream fail as a dead Ray host's does (on its next batch, sent now)."""
        self.breaks += 1
        for host in self._hosts.values():
            host.hub.publish([Event("$nudge", "nudge", 0, None)])


@pytest.fixture
async def rt_runtime(tmp_path: Path) -> AsyncIterator[ControlledRuntime]:
    settings = make_settings(tmp_path / "data", runtime={"extra_roles": EXTRA_ROLES})
    runtime = ControlledRuntime(
        settings.data_dir,
        Services(settings=settings, clock=FakeClock()),
        idle_seconds=3600,
        extra_role_modules=EXTRA_ROLES,
    )
    yield runtime
    await runtime.close()


@dataclass
class RealtimeServer:
    port: int
    gateway: RealtimeGateway
    runtime: ControlledRuntime

    def url(self, user: str | None = "alice") -> str:
        return ws_url(self.port, user)


StartServer = Callable[..., Awaitable[RealtimeServer]]


@pytest.fixture
async def start_server(rt_runtime: ControlledRuntime) -> AsyncIterator[StartServer]:
    """Start a real uvicorn + gateway on a free port; keyword arguments go to the gateway."""
    async with AsyncExitStack() as stack:

        async def start(**gateway_options: Any) -> RealtimeServer:
            options: dict[str, Any] = {"verify_delay": 0.05, **gateway_options}
            gateway = RealtimeGateway(rt_runtime, make_registry(), **options)
            await gateway.start()
            port = await stack.enter_async_context(running_server(gateway))
            return RealtimeServer(port, gateway, rt_runtime)

        yield start


@pytest.fixture
async def server(start_server: StartServer) -> RealtimeServer:
    return await start_server()


Connect = Callable[..., Awaitable[Client]]


@pytest.fixture
async def connect_client() -> AsyncIterator[Connect]:
    """Open websocket clients (``connect_client(url, **websockets_options)``), closed at teardown."""
    clients: list[Client] = []

    async def open_client(url: str, **options: Any) -> Client:
        client = Client(await connect(url, **options))
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        await client.close()
