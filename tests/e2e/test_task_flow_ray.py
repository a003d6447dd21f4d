"""End to end on real Ray: a user creates a task and drives it to a pull request.

uvicorn serves the app in this process with a `RayRuntime`: every actor runs in Ray host processes,
the sandbox role's host runs a real ``sandbox-agent`` with the demo agent, git talks to a local bare
repository through ``file://`` and the fake GitHub takes the pull request. A websocket client checks
the live transcript, then resubscribes with ``since`` after a disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn

from foundry.config import Settings
from foundry.demo_agent import NOTES_FILE
from foundry.http.app import create_app
from foundry.mock import start_fake_github
from foundry.runtime.ray_backend import RayRuntime
from tests.http.conftest import free_port
from tests.tasks.conftest import (
    AGENT_DELAY,
    TaskServer,
    create_task,
    events,
    idle_session,
    task_detail,
    wait_summary,
    wait_task,
)

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]


def _kill_sandboxes_under(root: Path) -> int:
    """Kill sandbox-agent servers (and their agents) this test started: their cwd is under ``root``.

    Ray kills its host processes at shutdown, but each sandbox server leads its own process group and
    would outlive them.
    """
    killed = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cwd = Path(os.readlink(entry / "cwd"))
            if root == cwd or root in cwd.parents:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(int(entry.name), signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
    return killed


@pytest.fixture
async def ray_server(ray_cluster: None, tmp_path: Path) -> AsyncIterator[TaskServer]:
    port = free_port()
    base = Settings(
        data_dir=tmp_path / "data",
        mode="mock",
        port=port,
        runtime={"backend": "ray", "namespace": f"tasks-{uuid.uuid4().hex[:8]}", "idle_seconds": 3600},  # type: ignore[arg-type]
        sandbox={"agent_env": {"FOUNDRY_DEMO_AGENT_DELAY": AGENT_DELAY}},  # type: ignore[arg-type]
    )
    fake, settings = start_fake_github(base)
    runtime = RayRuntime(settings)
    await runtime.start()
    # Every host process up before the first request (a cold Ray actor can take seconds on a busy box).
    await asyncio.wait_for(runtime.awake(), 120)
    app = create_app(settings, runtime=runtime, fake_github=fake)
    uv = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="websockets-sansio")
    )
    serving = asyncio.create_task(uv.serve())
    for _ in range(300):
        if uv.started:
            break
        await asyncio.sleep(0.02)
    assert uv.started
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


def git(remote: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", str(remote), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


async def test_task_on_real_ray_streams_resumes_stops_and_ends_in_a_pull_request(ray_server: TaskServer):
    server = ray_server
    async with server.signed_in("alice") as client:
        # Create → sandbox → clone → the demo agent streams; the websocket sees every event in order.
        async with server.websocket(client) as ws:
            created = await create_task(client, prompt="Document the launch procedure")
            task_id, session_id = created["taskId"], created["sessionId"]
            topic = f"session:acme:{task_id}:{session_id}"
            await ws.subscribe(topic)
            await ws.until(lambda f: f.get("event") == "turnEnded", timeout=90)
            streamed = ws.events(topic)
        log = await events(client, task_id, session_id)
        assert [(e["seq"], e["event"]) for e in streamed] == [(e["seq"], e["event"]) for e in log][
            : len(streamed)
        ]
        assert [e["seq"] for e in streamed] == list(range(1, len(streamed) + 1))
        assert any(e["event"] == "agentUpdate" for e in streamed)
        detail = await wait_task(client, task_id, idle_session, timeout=60)
        assert detail["provisioning"]["state"] == "ready"

        # Disconnected: another turn happens; resubscribing with `since` yields exactly the gap.
        last = streamed[-1]["seq"]
        sent = await client.post(
            f"/v1/organizations/acme/tasks/{task_id}/sessions/{session_id}/messages",
            json={"text": "Second note"},
        )
        assert sent.status_code == 202
        await wait_task(client, task_id, lambda d: idle_session(d) and d["sessions"][0]["lastSeq"] > last + 5)
        log = await events(client, task_id, session_id)
        async with server.websocket(client) as ws:
            await ws.subscribe(topic, since=last)
            await ws.until(lambda f: f.get("seq") == log[-1]["seq"])
            gap = ws.events(topic)
            assert [(e["seq"], e["event"]) for e in gap] == [
                (e["seq"], e["event"]) for e in log if e["seq"] > last
            ]

            # Stop during a turn: ACP session/cancel ends it as `cancelled`, long before its ~10 s.
            sent = await client.post(
                f"/v1/organizations/acme/tasks/{task_id}/sessions/{session_id}/messages",
                json={"text": "A slow third note"},
            )
            assert sent.status_code == 202
            await ws.until(lambda f: f.get("event") == "agentUpdate" and "slow third" in str(f["data"]))
            stop_at = time.monotonic()
            stopped = await client.post(f"/v1/organizations/acme/tasks/{task_id}/sessions/{session_id}/stop")
            assert stopped.status_code == 202
            assert stopped.json()["stopping"] is True
            ended = await ws.until(lambda f: f.get("event") in ("turnEnded", "turnFailed", "turnCancelled"))
            assert ended["event"] == "turnCancelled"
            assert ended["data"]["stopReason"] == "cancelled"
            assert time.monotonic() - stop_at < 8  # the slow turn alone runs ~10 s
        await wait_task(client, task_id, idle_session)

        # The diff shows the agent's change (two turns finished; the stopped one edited nothing).
        diff = (await client.get(f"/v1/organizations/acme/tasks/{task_id}/diff")).json()
        assert [f["path"] for f in diff["files"]] == [NOTES_FILE]
        assert "+- Document the launch procedure" in diff["diff"]
        assert "+- Second note" in diff["diff"]
        assert "slow third" not in diff["diff"]

        # Push, then the pull request against the fake GitHub.
        response = await client.post(f"/v1/organizations/acme/tasks/{task_id}/pull-request", json={})
        assert response.status_code == 200, response.text
        pr = response.json()
        remote = server.remote("acme/rocket")
        assert git(remote, "rev-parse", created["branchName"]) == pr["pushedSha"]
        assert "- Second note" in git(remote, "show", f"{created['branchName']}:{NOTES_FILE}")
        assert server.github.requests_to("/repos/acme/rocket/pulls", "POST")
        detail = await task_detail(client, task_id)
        assert detail["pullRequest"]["number"] == pr["pullRequest"]["number"]
        number = pr["pullRequest"]["number"]
        await wait_summary(client, task_id, lambda row: (row["pullRequest"] or {}).get("number") == number)

        # Nothing unpushed any more: archive destroys the sandbox without force.
        archived = await client.post(f"/v1/organizations/acme/tasks/{task_id}/archive")
        assert archived.status_code == 200, archived.text
        assert not (server.settings.sandbox_root / task_id).exists()
