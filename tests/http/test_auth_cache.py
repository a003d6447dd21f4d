"""Signed-in requests answered from the API process's session and membership cache: no actor hop
when cached, and never a stale answer (sign-out, expiry, a broken host stream)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx

from tests.http.auth_calls import ActorCalls, BreakableStreams
from tests.http.conftest import Server, second_process

ORG_PATH = "/v1/organizations/acme"


def cookie_header(client: httpx.AsyncClient) -> str:
    return "; ".join(f"{c.name}={c.value}" for c in client.cookies.jar)


@asynccontextmanager
async def client_of(url: str, cookie: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``url`` that always sends ``cookie`` (a copy kept past a sign-out)."""
    async with httpx.AsyncClient(base_url=url, timeout=10, headers={"cookie": cookie}) as client:
        yield client


async def within(seconds: float, probe: Callable[[], Awaitable[bool]], what: str) -> None:
    """``probe()`` must come true within ``seconds`` (one event delivery, not a cache timeout)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not await probe():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {seconds}s: {what}")
        await asyncio.sleep(0.01)


async def test_a_cached_signed_in_get_makes_no_session_or_membership_call(server: Server) -> None:
    calls = ActorCalls(server.runtime)
    async with server.signed_in("alice") as alice:
        await calls.warm(lambda: alice.get(ORG_PATH))
        for path in (ORG_PATH, f"{ORG_PATH}/members", "/v1/app"):
            response, auth = await calls.auth_calls(lambda p=path: alice.get(p))  # type: ignore[misc]
            assert response.status_code == 200, response.text
            # GET /v1/app's data is the app snapshot, from the snapshot cache or the user's
            # ``snapshot`` action: not an authentication call either way.
            assert auth == [], (path, auth)


async def test_sign_out_through_one_process_is_refused_by_the_other_at_once(server: Server) -> None:
    calls = ActorCalls(server.runtime)
    async with server.signed_in("alice") as alice, second_process(server) as other:
        cookie = cookie_header(alice)
        async with client_of(other, cookie) as b, client_of(server.url, cookie) as a:
            await calls.prime(lambda: b.get(ORG_PATH))
            await calls.prime(lambda: a.get(ORG_PATH))
            assert (await alice.post("/v1/auth/sign-out")).status_code == 200

            async def refused(client: httpx.AsyncClient) -> bool:
                response = await client.get(ORG_PATH)
                assert response.status_code in (200, 401), response.text
                return response.status_code == 401

            await within(1.0, lambda: refused(b), "process B refusing the signed-out cookie")
            await within(1.0, lambda: refused(a), "process A refusing the signed-out cookie")
            assert (await b.get("/v1/auth/session")).status_code == 401


async def test_an_expired_session_is_refused_without_any_event(server: Server) -> None:
    calls = ActorCalls(server.runtime)
    async with server.signed_in("alice") as alice:
        await calls.prime(lambda: alice.get(ORG_PATH))
        server.clock.advance(server.settings.auth.session_ttl_seconds * 1000 + 1)
        response = await alice.get(ORG_PATH)
        assert response.status_code == 401, response.text
        assert "sign in again" in response.json()["detail"]


async def test_a_broken_user_stream_falls_back_to_the_actors(server: Server) -> None:
    calls = ActorCalls(server.runtime)
    streams = BreakableStreams(server.runtime)  # before process B opens its streams
    async with server.signed_in("alice") as alice, second_process(server) as other:
        cookie = cookie_header(alice)
        async with client_of(other, cookie) as b:
            await calls.prime(lambda: b.get(ORG_PATH))
            streams.cut("user")

            async def asks_the_actor() -> bool:
                response, auth = await calls.auth_calls(lambda: b.get(ORG_PATH))
                assert response.status_code == 200, response.text
                return ("user", "get_session") in auth

            await within(1.0, asks_the_actor, "process B asking the user actor while its stream is down")
            # Signed out through A; B cannot hear it (its stream is down) and must still refuse.
            assert (await alice.post("/v1/auth/sign-out")).status_code == 200
            response, auth = await calls.auth_calls(lambda: b.get(ORG_PATH))
            assert response.status_code == 401, response.text
            assert ("user", "get_session") in auth

            # Back up: the old session stays refused and a new one is cached again.
            streams.restore("user")
            async with server.signed_in("alice") as again, client_of(other, cookie_header(again)) as b2:
                await calls.prime(lambda: b2.get(ORG_PATH), timeout=8.0)
            assert (await b.get(ORG_PATH)).status_code == 401


async def test_the_cache_serves_again_once_a_broken_stream_is_back(server: Server) -> None:
    calls = ActorCalls(server.runtime)
    streams = BreakableStreams(server.runtime)  # before process B opens its streams
    async with (
        server.signed_in("alice") as alice,
        second_process(server) as other,
        client_of(other, cookie_header(alice)) as b,
    ):
        await calls.warm(lambda: b.get(ORG_PATH))
        streams.cut("organization")

        async def asks_the_organization() -> bool:
            response, auth = await calls.auth_calls(lambda: b.get(ORG_PATH))
            assert response.status_code == 200, response.text
            return ("organization", "member_role") in auth

        await within(1.0, asks_the_organization, "process B asking while the organization stream is down")
        streams.restore("organization")
        await calls.warm(lambda: b.get(ORG_PATH), timeout=8.0)


async def test_signing_out_closes_the_sessions_websockets_on_every_process(server: Server) -> None:
    """A websocket authenticates once, at connect: after sign-out it kept subscribing and receiving
    live events. Its session's sign-out now closes it (4401, as a connection without a session),
    on this process and another one; a socket of the user's other session stays open."""
    import json

    from websockets.asyncio.client import connect

    async with (
        server.signed_in("alice") as alice,
        server.signed_in("alice") as other_session,
        second_process(server) as other,
    ):
        sockets = []
        for base, client in ((server.url, alice), (other, alice), (server.url, other_session)):
            ws = await connect(
                base.replace("http://", "ws://") + "/v1/realtime",
                additional_headers={"Cookie": cookie_header(client)},
            )
            await ws.send(json.dumps({"op": "subscribe", "topic": "organization:acme"}))
            while json.loads(await asyncio.wait_for(ws.recv(), 10)).get("event") != "snapshot":
                pass
            sockets.append(ws)
        try:
            assert (await alice.post("/v1/auth/sign-out")).status_code == 200
            for ws in sockets[:2]:
                frames = await _frames_until_closed(ws)
                assert ws.close_code == 4401
                assert frames[-1]["error"] == "unauthorized", frames
            kept = sockets[2]
            await kept.send(json.dumps({"op": "ping"}))
            answer: dict[str, Any] = {}
            while answer.get("op") != "pong":  # live events of its subscription may come first
                answer = json.loads(await asyncio.wait_for(kept.recv(), 10))
                assert answer.get("op") != "error", answer
        finally:
            for ws in sockets:
                await ws.close()


async def _frames_until_closed(ws: Any) -> list[dict[str, Any]]:
    """Every frame until the server closes the socket (within 5 s of each other)."""
    import json

    from websockets.exceptions import ConnectionClosed

    frames: list[dict[str, Any]] = []
    try:
        while True:
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
    except ConnectionClosed:
        return frames
