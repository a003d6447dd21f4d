"""On real Ray: the task host is killed with SIGKILL in the middle of a flood. After it restarts, the
transcript has every recorded event once (no duplicates, dense seqs) and the turn a terminal state."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from foundry.config import Settings
from foundry.http.app import create_app
from foundry.mock import start_fake_github
from foundry.runtime.ray_backend import RayRuntime
from tests.e2e.test_task_flow_ray import _kill_sandboxes_under
from tests.http.conftest import free_port
from tests.tasks.conftest import TaskServer
from tests.transcripts.conftest import (
    SCRIPTED_COMMAND,
    assert_seqs_dense,
    chunks,
    lost_count,
    session_log,
    start_task,
    terminal,
)

pytestmark = pytest.mark.ray


@pytest.fixture
async def ray_scripted_server(ray_cluster: None, tmp_path: Path) -> AsyncIterator[TaskServer]:
    port = free_port()
    base = Settings(
        data_dir=tmp_path / "data",
        mode="mock",
        port=port,
        runtime={"backend": "ray", "namespace": f"tx-{uuid.uuid4().hex[:8]}", "idle_seconds": 3600},  # type: ignore[arg-type]
        sandbox={"agent_commands": {"mock": SCRIPTED_COMMAND}},  # type: ignore[arg-type]
    )
    fake, settings = start_fake_github(base)
    runtime = RayRuntime(settings)
    await runtime.start()
    await asyncio.wait_for(runtime.awake(), 120)
    app = create_app(settings, runtime=runtime, fake_github=fake)
    uv = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="websockets-sansio")
    )
    serving = asyncio.create_task(uv.serve())
    while not uv.started:
        await asyncio.sleep(0.02)
    try:
        yield TaskServer(
            f"http://127.0.0.1:{port}",
            settings,
            runtime,  # type: ignore[arg-type]
            fake,
            None,  # type: ignore[arg-type]
            provider=None,  # type: ignore[arg-type]
            remotes=settings.data_dir / "mock-remotes",
        )
    finally:
        uv.should_exit = True
        await serving
        await runtime.stop_hosts()
        await runtime.close()
        _kill_sandboxes_under(settings.sandbox_root)
        fake.stop()


async def test_host_kill_mid_flood_leaves_no_duplicates_and_a_terminal_turn(ray_scripted_server: TaskServer):
    server = ray_scripted_server
    runtime: RayRuntime = server.runtime  # type: ignore[assignment]
    async with server.signed_in("alice") as client:
        task_id, session_id = await start_task(client, "flood 30000")
        while len(chunks(await session_log(client, task_id, session_id))) < 300:
            await asyncio.sleep(0.05)
        pid = (await runtime.host_info("task", 0))["pid"]
        os.kill(pid, signal.SIGKILL)
        # The restarted host wakes the task on the next request; the turn ends exactly once.
        log = await _after_restart(client, task_id, session_id)
        assert (await runtime.host_info("task", 0))["pid"] != pid
        numbers = chunks(log)
        assert numbers == sorted(set(numbers))  # each recorded chunk once, in order
        # Unpaced, a reader on a loaded machine can fall more than sandbox-agent's 1,024 buffered
        # events behind; what it no longer has is marked `eventsLost`, never skipped silently.
        missing = set(range(1, max(numbers, default=0) + 1)) - set(numbers)
        lost = lost_count(log)
        assert len(missing) <= lost, (len(missing), lost)
        assert len(terminal(log)) == 1
        assert_seqs_dense(log)


async def _after_restart(client: httpx.AsyncClient, task_id: str, session_id: str) -> list[dict[str, Any]]:
    """The transcript once its turn has ended, retrying requests that time out while the host and
    its instances come back (a busy machine can take longer than the client's timeout)."""
    deadline = time.monotonic() + 120
    while True:
        with contextlib.suppress(httpx.TimeoutException):
            response = await client.get(f"/v1/organizations/acme/tasks/{task_id}")
            if response.status_code == 200 and response.json()["sessions"][0]["status"] != "running":
                return await session_log(client, task_id, session_id)
        assert time.monotonic() < deadline, "the turn never ended after the restart"
        await asyncio.sleep(0.2)
