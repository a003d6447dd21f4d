"""Snapshot reads over real HTTP: answered from the API process's cache once warm, and never older
than the caller's own write, through the same API process or another one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from foundry.http.app import create_app
from foundry.http.read_your_writes import COOKIE
from foundry.runtime.events import Event
from tests.http.auth_calls import ActorCalls
from tests.http.conftest import Server, free_port, serving


def app_reads(calls: ActorCalls, start: int) -> list[tuple[str, str]]:
    return [c for c in calls.calls[start:] if c in (("user", "snapshot"), ("user", "app_snapshot"))]


async def warm_app(client: httpx.AsyncClient, calls: ActorCalls) -> dict[str, Any]:
    """GET /v1/app until it is answered without asking the user actor."""
    for _ in range(200):
        start = len(calls.calls)
        response = await client.get("/v1/app")
        assert response.status_code == 200, response.text
        if not app_reads(calls, start):
            return response.json()  # type: ignore[no-any-return]
        await asyncio.sleep(0.02)
    raise AssertionError("GET /v1/app still asks the user actor")


class Held:
    """What the held process's snapshot cache did not hear: batches as ``(role, shard, batch)``."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, int, list[Event]]] = []
        self.holding = False

    def hold(self) -> None:
        """From now on the cache hears nothing (as if every event were still on its way)."""
        self.holding = True


@asynccontextmanager
async def held_process(server: Server) -> AsyncIterator[tuple[str, Held]]:
    """Another API process whose snapshot cache stops hearing events once the test says `Held.hold`."""
    app = create_app(server.settings, runtime=server.runtime, fake_github=server.github)
    held = Held()
    port = free_port()
    async with serving(app, port):
        cache = app.state.snapshot_cache
        hear = cache.events

        def events(role: str, shard: int, batch: list[Event]) -> None:
            if held.holding:
                held.batches.append((role, shard, batch))
            else:
                hear(role, shard, batch)

        cache.events = events
        # Two real API processes do not share a runtime: B must not hear of A's writes this way.
        server.runtime.written.remove(cache.wrote)
        yield f"http://127.0.0.1:{port}", held


async def test_a_warm_app_read_asks_no_actor_and_a_write_hands_the_client_its_seq(server: Server) -> None:
    calls = ActorCalls(server.runtime)
    async with server.signed_in("alice") as alice:
        before = await warm_app(alice, calls)
        organization = before["organizations"][0]["id"]
        written = await alice.post("/v1/app/active-organization", json={"organizationId": organization})
        assert written.status_code == 200, written.text
        # The seq the write committed on the user's app topic, for reads through any API process.
        topic, _, seq = written.cookies[COOKIE].partition("!")
        assert topic == f"app:{before['user']['id']}"
        assert int(seq) > 0
        assert (await alice.get("/v1/app")).json()["activeOrganizationId"] == organization
        await warm_app(alice, calls)


async def test_a_hostile_read_your_writes_cookie_is_ignored(server: Server) -> None:
    async with server.signed_in("alice") as alice:
        session = "; ".join(f"{k}={v}" for k, v in alice.cookies.items() if k != COOKIE)
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as raw:
            for value in ("x" * 7_000, "task:acme:t1!99999999999999", "app:alice!-1|||", '"quoted"'):
                response = await raw.get("/v1/app", headers={"cookie": f"{session}; {COOKIE}={value}"})
                assert response.status_code == 200, response.text
                assert response.json()["auth"]["status"] == "signed_in"
