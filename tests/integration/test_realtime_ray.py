"""The realtime gateway on real Ray: a websocket survives a kill -9 of the host that owns its topic."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from foundry.config import Settings
from foundry.realtime import RealtimeGateway
from foundry.runtime.ray_backend import RayRuntime
from tests.realtime import snapshot_role
from tests.realtime.helpers import ROLE, Client, make_registry, running_server, settled, ws_url

pytestmark = pytest.mark.ray


@pytest.fixture
async def realtime_ray_runtime(ray_settings: Settings, tmp_path: Path) -> AsyncIterator[RayRuntime]:
    # The session's settings plus the snapshot test role (host processes import it by name), in host
    # processes of its own (the session's processes were started without that role), on a data
    # directory of their own (a second set of hosts on the same files is refused).
    runtime_settings = ray_settings.runtime.model_copy(
        update={
            "extra_roles": {**ray_settings.runtime.extra_roles, ROLE: snapshot_role.MODULE},
            "namespace": f"realtime-{uuid.uuid4().hex[:8]}",
        }
    )
    rt = RayRuntime(ray_settings.model_copy(update={"runtime": runtime_settings, "data_dir": tmp_path}))
    await rt.start()
    yield rt
    await rt.stop_hosts()
    await rt.close()


async def _board_with_gateway(
    runtime: RayRuntime, prefix: str, bumps: int
) -> tuple[str, str, Any, RealtimeGateway]:
    """A fresh board bumped ``bumps`` times, its topic, and a started gateway on ``runtime``."""
    key = f"{prefix}-{uuid.uuid4().hex[:6]}"
    ref = runtime.actor(ROLE, key)
    await ref.send("bump", {"times": bumps}, wait=True)
    gateway = RealtimeGateway(runtime, make_registry())
    await gateway.start()
    return key, f"board:{key}", ref, gateway


async def test_kill_9_of_the_owning_host_resyncs_the_websocket_by_itself(
    realtime_ray_runtime: RayRuntime,
) -> None:
    runtime = realtime_ray_runtime
    key, topic, ref, gateway = await _board_with_gateway(runtime, "kill", bumps=2)
    async with running_server(gateway) as port, connect(ws_url(port)) as conn:
        client = Client(conn)
        await client.subscribe(topic)
        assert await client.recv(timeout=30) == {
            "topic": topic,
            "event": "snapshot",
            "seq": 2,
            "data": {"value": 2},
        }
        await settled(gateway)
        await ref.send("bump", {}, wait=True)
        assert (await client.recv())["seq"] == 3

        shard = runtime.shard_for(ROLE, key)
        pid = (await runtime.host_info(ROLE, shard))["pid"]
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        # No client action: the gateway reconnects to the restarted host and resends the state.
        fresh = await client.recv(timeout=30)
        assert fresh == {"topic": topic, "event": "snapshot", "seq": 3, "data": {"value": 3}}
        resynced_s = time.monotonic() - killed_at
        assert (await runtime.host_info(ROLE, shard))["pid"] != pid
        assert gateway.stats()["hosts"][f"{ROLE}/{shard}"]["streams_opened"] >= 2

        await settled(gateway, timeout=10)
        await ref.send("bump", {"times": 2}, wait=True)
        frames = await client.recv_n(2)
        assert [(f["event"], f["seq"], f["data"]["value"]) for f in frames] == [
            ("boardUpdated", 4, 4),
            ("boardUpdated", 5, 5),
        ]
        await client.assert_quiet()
    print(f"resynced {resynced_s:.2f}s after kill -9")


async def test_a_subscriber_hears_that_it_waits_while_the_owning_host_hangs(
    realtime_ray_runtime: RayRuntime,
) -> None:
    # A hung host process (its event loop blocked, the process stopped) breaks no stream: it falls
    # silent. Its subscribers used to hear nothing at all; they now get a `waiting` frame, and the
    # events that were held come once it answers again.
    runtime = realtime_ray_runtime
    key, topic, ref, gateway = await _board_with_gateway(runtime, "hang", bumps=1)
    async with running_server(gateway) as port, connect(ws_url(port)) as conn:
        client = Client(conn)
        await client.subscribe(topic)
        assert (await client.recv(timeout=30))["event"] == "snapshot"
        await settled(gateway)
        await client.assert_quiet(3.0)  # an idle host's heartbeats reach no client

        pid = (await runtime.host_info(ROLE, runtime.shard_for(ROLE, key)))["pid"]
        stopped_at = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        try:
            told = await client.recv(timeout=20)
            told_after = time.monotonic() - stopped_at
            await client.assert_quiet(3.0)  # once, not at every check
        finally:
            os.kill(pid, signal.SIGCONT)
        assert told["op"] == "waiting"
        assert told["topic"] == topic
        assert "has not answered" in told["detail"]
        assert told_after < 12
        await ref.send("bump", {}, wait=True)
        assert (await client.recv(timeout=30))["seq"] == 2  # the same stream, nothing lost
