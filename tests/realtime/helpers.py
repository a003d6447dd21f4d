"""Pieces shared by the realtime tests (in-process and Ray): the test topics, sign-in rules, a real
uvicorn server around a gateway, and a websocket client speaking the protocol."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, WebSocket
from websockets.asyncio.client import ClientConnection

from foundry.realtime import RealtimeGateway, TopicRegistry, TopicSpec, make_websocket_route
from foundry.realtime.frames import server_frames
from tests.realtime import snapshot_role

ROLE = snapshot_role.ROLE_NAME
#: The AsyncAPI Initiative's JSON Schema of AsyncAPI 3.0.0 (``schemas/3.0.0-without-$id.json`` of
#: the npm package ``@asyncapi/specs`` 6.11.1, Apache-2.0, minified), to validate our document with.
ASYNCAPI_SCHEMA = json.loads((Path(__file__).parent / "asyncapi-3.0.0.schema.json").read_text())


def make_registry() -> TopicRegistry:
    return TopicRegistry(
        [
            TopicSpec("board", ROLE),
            TopicSpec("journal", ROLE),
            # The counter role has no snapshot action: subscribing shows the refusal path.
            TopicSpec("counter", "counter"),
        ]
    )


async def authenticate(websocket: WebSocket) -> str | None:
    """Tests sign in with ``?user=<id>``; production checks the session cookie."""
    return websocket.query_params.get("user")


#: Users refused ``board:shared-*`` topics: a test adds one to take access away while subscribed.
REVOKED: set[str] = set()


async def authorize(user_id: str, topic: str) -> bool:
    """Topics whose id starts with ``private`` belong to the user ``owner`` only; ``shared`` ones
    to everyone not in `REVOKED`; ``explode`` fails."""
    if user_id == "explode":
        raise RuntimeError("the membership store is down")
    if topic.split(":")[1].startswith("shared"):
        return user_id not in REVOKED
    return not topic.split(":")[1].startswith("private") or user_id == "owner"


@asynccontextmanager
async def running_server(gateway: RealtimeGateway) -> AsyncIterator[int]:
    """A real uvicorn (websockets-sansio) on a free port serving ``WS /v1/realtime``; yields the port."""
    app = FastAPI()
    app.add_api_websocket_route("/v1/realtime", make_websocket_route(gateway, authenticate, authorize))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, ws="websockets-sansio", lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    try:
        yield int(sock.getsockname()[1])
    finally:
        await gateway.close()
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def ws_url(port: int, user: str | None = "alice") -> str:
    query = f"?user={user}" if user is not None else ""
    return f"ws://127.0.0.1:{port}/v1/realtime{query}"


def checked_frame(text: str | bytes) -> dict[str, Any]:
    """A server frame decoded, after checking it against the model of its kind (the documented
    protocol): every frame a test reads is checked, whatever the test is about."""
    assert isinstance(text, str), f"the server sent a binary frame: {text!r:.80}"
    frame = json.loads(text)
    assert isinstance(frame, dict)
    server_frames.validate_python(frame)
    return frame


class Client:
    """A websocket client speaking the realtime protocol; every frame it reads is checked against
    its model (`checked_frame`)."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn

    async def send(self, **frame: Any) -> None:
        await self.conn.send(json.dumps(frame))

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        return checked_frame(await asyncio.wait_for(self.conn.recv(), timeout))

    async def recv_n(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        return [await self.recv(timeout) for _ in range(n)]

    async def assert_quiet(self, seconds: float = 0.2) -> None:
        try:
            frame = await asyncio.wait_for(self.conn.recv(), seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame: {frame!r}")

    async def subscribe(self, topic: str, since: int | None = None) -> None:
        await self.send(op="subscribe", topic=topic, since=since)
        assert await self.recv() == {"op": "subscribed", "topic": topic}

    async def close(self) -> None:
        await self.conn.close()


async def eventually(check: Any, timeout: float = 5.0) -> None:
    """Wait until ``check()`` is true (gateway bookkeeping runs in tasks)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def settled(gateway: RealtimeGateway, timeout: float = 5.0) -> None:
    """Every host stream is confirmed and no snapshot is being read: later frames are live events."""

    def done() -> bool:
        hosts = gateway.stats()["hosts"].values()
        return all(h["confirmed"] and h["syncing"] == 0 for h in hosts)

    await eventually(done, timeout)
