"""Transcript tests: the real HTTP server (in-process runtime), real sandbox-agent servers running the
scripted agent (`scripted_agent.py`) as ``mock``, real websocket clients, and an SSE proxy that can
drop event ids between sandbox-agent and Foundry."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from foundry.drivers.sandbox import SandboxEndpoint
from tests.http.conftest import free_port
from tests.realtime.helpers import checked_frame
from tests.tasks.conftest import TaskServer, WsClient, create_task, events, running_server, wait_task

SCRIPTED_AGENT = Path(__file__).with_name("scripted_agent.py")
#: The command sandbox-agent runs for ``?agent=mock`` in these tests (``-I``: the sandbox's cwd and
#: environment cannot shadow the installed ``acp`` package).
SCRIPTED_COMMAND = f"{sys.executable} -I {SCRIPTED_AGENT}"
CHUNK = re.compile(r"^#(\d+) $")


@pytest.fixture
async def scripted_server(tmp_path: Path) -> AsyncIterator[TaskServer]:
    async with running_server(tmp_path, agent_commands={"mock": SCRIPTED_COMMAND}) as server:
        yield server


# ------------------------------------------------------------------------------------------ transcripts


def chunks(log: list[dict[str, Any]]) -> list[int]:
    """The numbers of the scripted agent's message chunks, in transcript order."""
    out = []
    for event in log:
        if event["event"] == "agentUpdate" and event["data"]["kind"] == "agent_message_chunk":
            match = CHUNK.match(event["data"]["update"]["content"]["text"])
            if match:
                out.append(int(match.group(1)))
    return out


def lost_count(log: list[dict[str, Any]]) -> float:
    """How many event ids the transcript's `eventsLost` markers cover (infinite for an open range:
    the stream stalled and everything after ``from`` is gone)."""
    total = 0.0
    for event in log:
        if event["event"] == "eventsLost":
            first, last = event["data"]["from"], event["data"]["to"]
            total += float("inf") if last is None else last - first + 1
    return total


def terminal(log: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in log if e["event"] in ("turnEnded", "turnFailed", "turnCancelled")]


def assert_seqs_dense(log: list[dict[str, Any]]) -> None:
    seqs = [e["seq"] for e in log]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "seqs have gaps or duplicates"


async def session_log(client: httpx.AsyncClient, task_id: str, session_id: str) -> list[dict[str, Any]]:
    return await events(client, task_id, session_id)


async def wait_turns(
    client: httpx.AsyncClient, task_id: str, session_id: str, count: int, timeout: float = 60
) -> list[dict[str, Any]]:
    """The session's transcript once it holds ``count`` terminal turn events."""
    deadline = time.monotonic() + timeout
    while True:
        log = await session_log(client, task_id, session_id)
        if len(terminal(log)) >= count:
            return log
        assert time.monotonic() < deadline, f"only {terminal(log)} after {timeout}s; tail {log[-3:]}"
        await asyncio.sleep(0.1)


class TopicCollector:
    """Reads a websocket in the background and keeps every event frame of its topics."""

    def __init__(self, ws: WsClient) -> None:
        self.ws = ws
        self.frames: dict[str, list[dict[str, Any]]] = {}
        self.errors: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    async def subscribe(self, topics: list[str]) -> None:
        for topic in topics:
            self.frames.setdefault(topic, [])
            await self.ws.subscribe(topic)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws.ws:
            try:
                frame = checked_frame(raw)  # the documented protocol, at agent speed too
            except (AssertionError, ValueError) as exc:
                self.errors.append({"frame_not_as_documented": str(exc)[:500]})
                continue
            if frame.get("op") == "error":
                self.errors.append(frame)
            elif "seq" in frame and frame.get("topic") in self.frames:
                self.frames[frame["topic"]].append(
                    {"seq": frame["seq"], "event": frame["event"], "data": frame["data"]}
                )

    async def until_terminal(self, topic: str, count: int = 1, timeout: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(terminal(self.frames[topic])) < count:
            assert not self.errors, self.errors
            assert time.monotonic() < deadline, f"websocket saw {terminal(self.frames[topic])} on {topic}"
            await asyncio.sleep(0.02)
        return self.frames[topic]

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


async def start_task(client: httpx.AsyncClient, prompt: str) -> tuple[str, str]:
    created = await create_task(client, prompt=prompt)
    return created["taskId"], created["sessionId"]


async def wait_running(client: httpx.AsyncClient, task_id: str) -> None:
    await wait_task(client, task_id, lambda d: d["sessions"][0]["status"] == "running", timeout=60)


# ------------------------------------------------------------------------------------------ SSE proxy


@dataclass
class SseProxy:
    """A real HTTP proxy in front of one sandbox-agent that drops chosen event ids from ACP event
    streams: on the first stream of each ACP server only (``once``; a re-read repairs the gap) or on
    every stream (the events are gone for good)."""

    upstream: str = ""
    drop: range = range(0)
    once: bool = True
    #: On the first stream only: forward the event with this id (and those after it) only once
    #: sandbox-agent has sent ``hold_until`` (read on, kept here): the reader sees what follows a gap
    #: late, when the missing ids may have left sandbox-agent's buffer of the last 1,024 events.
    hold_at: int | None = None
    hold_until: int = 0
    port: int = field(default_factory=free_port)
    streams: int = 0
    dropped: list[int] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> Starlette:
        methods = ["GET", "POST", "DELETE", "PUT"]
        return Starlette(routes=[Route("/{path:path}", self._forward, methods=methods)])

    async def _forward(self, request: Request) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        client = httpx.AsyncClient(base_url=self.upstream, timeout=httpx.Timeout(30, read=None))
        outgoing = client.build_request(
            request.method,
            request.url.path,
            params=request.query_params,
            headers=headers,
            content=await request.body(),
        )
        upstream = await client.send(outgoing, stream=True)
        if "text/event-stream" not in upstream.headers.get("content-type", ""):
            body = await upstream.aread()
            await upstream.aclose()
            await client.aclose()
            kept = {k: v for k, v in upstream.headers.items() if k.lower() in ("content-type",)}
            return Response(body, upstream.status_code, headers=kept)
        self.streams += 1
        dropping = not (self.once and request.url.path in self._seen)
        self._seen.add(request.url.path)

        async def relay() -> AsyncIterator[bytes]:
            block: list[str] = []
            held: list[bytes] | None = None
            try:
                async for line in upstream.aiter_lines():
                    if line:
                        block.append(line)
                        continue
                    ids = [int(x[3:].strip()) for x in block if x.startswith("id:")]
                    data = ("\n".join(block) + "\n\n").encode()
                    block = []
                    if dropping and ids and ids[0] in self.drop:
                        self.dropped.append(ids[0])
                        continue
                    if dropping and ids and ids[0] == self.hold_at:
                        held = []
                    if held is not None:
                        held.append(data)
                        if ids and ids[0] >= self.hold_until:
                            for item in held:
                                yield item
                            held = None
                        continue
                    yield data
            finally:
                await upstream.aclose()
                await client.aclose()

        return StreamingResponse(relay(), upstream.status_code, media_type="text/event-stream")

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[SseProxy]:
        config = uvicorn.Config(self.app(), host="127.0.0.1", port=self.port, log_level="warning")
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        try:
            yield self
        finally:
            server.should_exit = True
            await task


def route_through(server: TaskServer, proxy: SseProxy) -> None:
    """Hand out the proxy as the endpoint of every sandbox (the provider itself is untouched)."""
    provider = server.provider
    create, status = provider.create, provider.status

    def proxied(endpoint: SandboxEndpoint) -> SandboxEndpoint:
        proxy.upstream = endpoint.base_url
        return dataclasses.replace(endpoint, base_url=proxy.url)

    async def proxied_create(sandbox_id: str, **kwargs: Any) -> SandboxEndpoint:
        return proxied(await create(sandbox_id, **kwargs))

    async def proxied_status(sandbox_id: str) -> Any:
        result = await status(sandbox_id)
        if result.endpoint is None:
            return result
        return dataclasses.replace(result, endpoint=proxied(result.endpoint))

    provider.create = proxied_create  # type: ignore[method-assign]
    provider.status = proxied_status  # type: ignore[method-assign]
