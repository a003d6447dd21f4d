"""Tasks tier: the real HTTP server (in-process runtime), real sandbox-agent servers running the demo
agent, local bare git remotes standing in for GitHub's, and real websocket clients.

Every sandbox-agent process a test starts is stopped at teardown (the provider's ``aclose``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection, connect

from foundry.clock import SystemClock
from foundry.config import Settings
from foundry.drivers.sandbox.local import LocalSandboxProvider
from foundry.http.app import create_app
from foundry.mock import start_fake_github
from foundry.runtime.inprocess import InProcessRuntime
from foundry.services import build_services
from tests.http.conftest import Server, free_port
from tests.realtime.helpers import checked_frame

#: Demo agent chunk delay inside sandboxes: fast turns, yet "slow" prompts still take ~10 s.
AGENT_DELAY = "0.005"
ACME_ROCKET = "910001"
ACME_ANVIL = "910002"


@dataclass
class TaskServer(Server):
    """`Server` plus what task tests need: the provider and the remotes."""

    provider: LocalSandboxProvider = field(default=None)  # type: ignore[assignment]
    remotes: Path = field(default=Path("."))

    def remote(self, full_name: str) -> Path:
        owner, name = full_name.split("/")
        return self.remotes / owner / f"{name}.git"

    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/v1/realtime"

    @asynccontextmanager
    async def websocket(self, client: httpx.AsyncClient) -> AsyncIterator[WsClient]:
        cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
        # max_queue=None: frames a test leaves unread must not stop the client from reading the
        # server's close frame (with the default of 16 the close waits out its 10 s timeout).
        async with connect(self.ws_url(), additional_headers={"Cookie": cookie}, max_queue=None) as ws:
            yield WsClient(ws)


class WsClient:
    """A realtime websocket client that files frames by topic, each checked against its model."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []

    async def subscribe(self, topic: str, since: int | None = None) -> None:
        await self.ws.send(json.dumps({"op": "subscribe", "topic": topic, "since": since}))

    async def next_frame(self, timeout: float = 20) -> dict[str, Any]:
        frame = checked_frame(await asyncio.wait_for(self.ws.recv(), timeout))
        self.frames.append(frame)
        return frame

    async def until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, (
                f"no matching frame; got {[f.get('event') or f.get('op') for f in self.frames]}"
            )
            frame = await self.next_frame(remaining)
            if frame.get("op") == "error":
                raise AssertionError(f"realtime error frame: {frame}")
            if predicate(frame):
                return frame

    async def first_about(self, topic: str, timeout: float = 20) -> dict[str, Any]:
        """The first frame naming ``topic``, skipping live events of the other subscriptions.

        A refusal must be awaited this way: on a busy organization an event of an earlier
        subscription can arrive between the subscribe and its answer.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no frame about {topic}; got {self.frames[-5:]}"
            frame = await self.next_frame(remaining)
            if frame.get("topic") == topic:
                return frame

    def events(self, topic: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("topic") == topic and "seq" in f]


@asynccontextmanager
async def running_server(
    tmp_path: Path, *, close_provider: bool = True, **sandbox: Any
) -> AsyncIterator[TaskServer]:
    """A Foundry on ``tmp_path / "data"``; entering it again on the same path is a restart.

    At exit the runtime closes (which, like a clean ``foundry serve`` stop, stops the sandboxes);
    ``close_provider`` then also closes the provider directly, as a safety net for other tests.
    """
    port = free_port()
    # Sandboxes run no real agent unless a test names an agents directory: whether bootstrap
    # installed Claude Code in the checkout must not change what these tests see.
    sandbox.setdefault("agents_dir", str(tmp_path / "no-agents"))
    base = Settings(
        data_dir=tmp_path / "data",
        mode="mock",
        port=port,
        runtime={"backend": "inprocess"},  # type: ignore[arg-type]
        sandbox={"agent_env": {"FOUNDRY_DEMO_AGENT_DELAY": AGENT_DELAY}, **sandbox},  # type: ignore[arg-type]
    )
    fake, settings = start_fake_github(base)
    services = build_services(settings)
    services.clock = SystemClock()
    provider: LocalSandboxProvider = services.driver("sandbox")
    runtime = InProcessRuntime(settings.data_dir, services, idle_seconds=3600)
    # Every host starts now, as in `foundry serve`: the sandbox host reaps leftovers and wakes tasks
    # that were queued for a sandbox before a restart.
    await runtime.start()
    app = create_app(settings, runtime=runtime, fake_github=fake)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="websockets-sansio")
    uv = uvicorn.Server(config)
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
            runtime,
            fake,
            SystemClock(),  # type: ignore[arg-type]
            provider=provider,
            remotes=settings.data_dir / "mock-remotes",
        )
    finally:
        uv.should_exit = True
        await serving
        await runtime.close()
        if close_provider:
            await provider.aclose()
        fake.stop()


@pytest.fixture
async def tasks_server(tmp_path: Path) -> AsyncIterator[TaskServer]:
    async with running_server(tmp_path) as server:
        yield server


# ------------------------------------------------------------------------------------------ helpers


async def create_task(client: httpx.AsyncClient, org: str = "acme", **body: Any) -> dict[str, Any]:
    payload = {"repoId": ACME_ROCKET, "prompt": "Document the launch procedure"} | body
    response = await client.post(f"/v1/organizations/{org}/tasks", json=payload)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def task_detail(client: httpx.AsyncClient, task_id: str, org: str = "acme") -> dict[str, Any]:
    response = await client.get(f"/v1/organizations/{org}/tasks/{task_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


async def wait_task(
    client: httpx.AsyncClient,
    task_id: str,
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float = 45,
    org: str = "acme",
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        detail = await task_detail(client, task_id, org)
        if predicate(detail):
            return detail
        assert time.monotonic() < deadline, f"task never matched; last detail: {json.dumps(detail)[:3000]}"
        await asyncio.sleep(0.05)


async def wait_summary(
    client: httpx.AsyncClient,
    task_id: str,
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float = 10,
    org: str = "acme",
) -> dict[str, Any]:
    """The task's row in its organization once ``predicate`` holds. The task pushes its summary
    through its outbox after each change, so the row follows the task's own answers by a delivery."""
    deadline = time.monotonic() + timeout
    while True:
        summaries = (await client.get(f"/v1/organizations/{org}")).json()["taskSummaries"]
        row = next((t for t in summaries if t["taskId"] == task_id), None)
        if row is not None and predicate(row):
            return row
        assert time.monotonic() < deadline, f"summary never matched; last row: {json.dumps(row)[:3000]}"
        await asyncio.sleep(0.05)


async def events(
    client: httpx.AsyncClient, task_id: str, session_id: str, since: int = 0
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        response = await client.get(
            f"/v1/organizations/acme/tasks/{task_id}/sessions/{session_id}/events", params={"since": since}
        )
        assert response.status_code == 200, response.text
        page = response.json()
        out.extend(page["events"])
        if not page["more"]:
            return out
        since = page["nextSince"]


def idle_session(detail: dict[str, Any], index: int = 0) -> bool:
    sessions = [s for s in detail["sessions"] if s["status"] != "closed"]
    return (
        detail["status"] == "idle"
        and len(sessions) > index
        and sessions[index]["status"] == "idle"
        and sessions[index]["queuedMessages"] == 0
    )
