"""WS /v1/realtime as a browser uses it: cookie authentication, topic authorization, live updates."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import websockets

from tests.http.conftest import Server
from tests.realtime.helpers import checked_frame


@asynccontextmanager
async def socket(server: Server, cookie: str | None, origin: str | None = None) -> AsyncIterator[Any]:
    headers = {}
    if cookie:
        headers["Cookie"] = f"foundry_session={cookie}"
    if origin:
        headers["Origin"] = origin
    url = server.url.replace("http://", "ws://") + "/v1/realtime"
    async with websockets.connect(url, additional_headers=headers) as ws:
        yield ws


async def frame(ws: Any, timeout: float = 5.0) -> dict[str, Any]:
    return checked_frame(await asyncio.wait_for(ws.recv(), timeout))


async def subscribe(ws: Any, topic: str) -> list[dict[str, Any]]:
    """Subscribe and return the frames up to the snapshot (or the error)."""
    await ws.send(json.dumps({"op": "subscribe", "topic": topic}))
    frames = []
    while True:
        f = await frame(ws)
        frames.append(f)
        if f.get("event") == "snapshot" or f.get("op") == "error":
            return frames


@pytest.mark.parametrize(
    ("login", "topic", "allowed"),
    [
        ("alice", "organization:acme", True),
        ("alice", "organization:globex", False),
        ("bob", "organization:acme", False),
        ("bob", "organization:globex", True),
        ("carol", "organization:acme", True),
        ("carol", "organization:globex", True),
        ("alice", "task:globex:t1", False),
        ("bob", "session:acme:t1:s1", False),
        ("alice", "organization:app", False),
    ],
)
async def test_subscribe_authorization_matrix(server: Server, login: str, topic: str, allowed: bool) -> None:
    async with server.signed_in(login) as client:
        cookie = client.cookies["foundry_session"]
    async with socket(server, cookie) as ws:
        frames = await subscribe(ws, topic)
    last = frames[-1]
    if allowed:
        assert last["event"] == "snapshot"
        assert last["topic"] == topic
    else:
        assert last == {"op": "error", "topic": topic, "error": "forbidden", "detail": last["detail"]}


async def test_app_topic_only_for_its_own_user(server: Server) -> None:
    async with server.signed_in("alice") as alice, server.signed_in("bob") as bob:
        alice_id = (await alice.get("/v1/app")).json()["user"]["id"]
        bob_cookie = bob.cookies["foundry_session"]
        alice_cookie = alice.cookies["foundry_session"]
    async with socket(server, bob_cookie) as ws:
        assert (await subscribe(ws, f"app:{alice_id}"))[-1]["error"] == "forbidden"
    async with socket(server, alice_cookie) as ws:
        snap = (await subscribe(ws, f"app:{alice_id}"))[-1]
    assert snap["data"]["user"]["githubLogin"] == "alice"


async def test_unauthenticated_and_cross_site_sockets_are_refused(server: Server) -> None:
    async with socket(server, None) as ws:
        refused = await frame(ws)
        assert refused["error"] == "unauthorized"
        with pytest.raises(websockets.ConnectionClosed) as info:
            await frame(ws)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 4401
    async with server.signed_in("alice") as alice:
        cookie = alice.cookies["foundry_session"]
    async with socket(server, cookie, origin="https://evil.example") as ws:
        assert (await frame(ws))["error"] == "unauthorized"


async def test_settings_change_reaches_subscribers_live(server: Server) -> None:
    async with server.signed_in("carol") as carol, server.signed_in("alice") as alice:
        cookie = alice.cookies["foundry_session"]
        async with socket(server, cookie) as ws:
            snap = (await subscribe(ws, "organization:acme"))[-1]
            assert snap["data"]["settings"]["displayName"]
            response = await carol.patch("/v1/organizations/acme/settings", json={"displayName": "Live ACME"})
            assert response.status_code == 200
            update = await frame(ws)
    assert update["topic"] == "organization:acme"
    assert update["event"] == "organizationUpdated"
    assert update["seq"] > snap["seq"]
    assert update["data"]["settings"]["displayName"] == "Live ACME"


async def test_a_real_session_speaks_the_documented_protocol(server: Server) -> None:
    """Organization and task topics on the real app; every frame is checked against its model by
    `frame`, and the errors name what was wrong."""
    async with server.signed_in("carol") as carol, server.signed_in("alice") as alice:
        cookie = alice.cookies["foundry_session"]
        async with socket(server, cookie) as ws:
            snapshot = (await subscribe(ws, "organization:acme"))[-1]
            assert snapshot["event"] == "snapshot"
            update = await carol.patch("/v1/organizations/acme/settings", json={"displayName": "Acme 2"})
            assert update.status_code == 200, update.text
            event = await frame(ws)
            assert (event["event"], event["seq"]) == ("organizationUpdated", snapshot["seq"] + 1)
            # A task the organization does not list: refused, and no task database is made.
            missing = (await subscribe(ws, "task:acme:no-such-task"))[-1]
            assert (missing["error"], missing["topic"]) == ("not_found", "task:acme:no-such-task")
            forbidden = (await subscribe(ws, "organization:globex"))[-1]
            assert forbidden["error"] == "forbidden"
            await ws.send(json.dumps({"op": "subscribe", "topic": "organization:acme", "since": "1"}))
            invalid = await frame(ws)
            assert invalid == {**invalid, "error": "invalid_input", "fields": ["since"]}
            await ws.send(json.dumps({"op": "subscribe", "topic": "tasks:acme"}))
            unknown = await frame(ws)
            assert unknown == {
                **unknown,
                "error": "invalid_topic",
                "fields": ["topic"],
                "topic": "tasks:acme",
            }
            assert "organization" in unknown["detail"]
            await ws.send(json.dumps({"op": "unsubscribe", "topic": "organization:acme"}))
            assert await frame(ws) == {"op": "unsubscribed", "topic": "organization:acme"}
            await ws.send(json.dumps({"op": "ping"}))
            assert await frame(ws) == {"op": "pong"}


@pytest.mark.parametrize("origin", ["http://[", "https://[::1", "http://foundry.example]"])
async def test_an_unparsable_origin_is_refused_like_a_foreign_one(
    server: Server, origin: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Not a 1011 with a traceback in the log: the header comes from the client."""
    async with server.signed_in("alice") as alice:
        cookie = alice.cookies["foundry_session"]
    async with socket(server, cookie, origin=origin) as ws:
        refused = await frame(ws)
        assert refused["error"] == "unauthorized"
        with pytest.raises(websockets.ConnectionClosed) as info:
            await frame(ws)
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 4401
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]


async def test_sockets_that_vanish_mid_subscribe_leave_the_organization_working(server: Server) -> None:
    # A browser that navigates away drops its socket while the gateway is still reading the snapshot
    # it asked for; in a process that hosts the actors that read is cancelled wherever it is. Once,
    # a read cancelled during its BEGIN left the organization's database connection inside a
    # transaction, and from then on every action of the organization failed.
    async with server.signed_in("carol") as carol:
        cookie = carol.cookies["foundry_session"]
        url = server.url.replace("http://", "ws://") + "/v1/realtime"
        for steps in range(80):
            ws = await websockets.connect(url, additional_headers={"Cookie": f"foundry_session={cookie}"})
            await ws.send(json.dumps({"op": "subscribe", "topic": "organization:acme"}))
            for _ in range(steps % 20):
                await asyncio.sleep(0)
            await asyncio.sleep(0.0005 * (steps // 20))
            ws.transport.abort()
        for _ in range(3):
            assert (await carol.get("/v1/organizations/acme/members")).status_code == 200
            changed = await carol.patch("/v1/organizations/acme/settings", json={"displayName": "Still ACME"})
            assert changed.status_code == 200, changed.text
        async with socket(server, cookie) as ws:
            snap = (await subscribe(ws, "organization:acme"))[-1]
        assert snap["data"]["settings"]["displayName"] == "Still ACME"
