"""A user's unread sessions travel live on their own ``app:<userId>`` topic (the sidebar's dot)."""

from __future__ import annotations

from typing import Any

import httpx

from tests.tasks.conftest import TaskServer, create_task, idle_session, wait_task


def unread_of(frame: dict[str, Any]) -> list[dict[str, str]]:
    return list((frame.get("data") or {}).get("unread", []))


async def unread_now(client: httpx.AsyncClient) -> list[dict[str, str]]:
    """The caller's unread sessions as ``GET /v1/app`` reports them."""
    return unread_of({"data": await app_snapshot(client)})


async def app_snapshot(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/v1/app")
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_unread_sessions_reach_the_owner_live_and_only_the_owner(tasks_server: TaskServer):
    async with (
        tasks_server.signed_in("alice") as alice,
        tasks_server.signed_in("carol") as carol,
        tasks_server.websocket(alice) as ws,
    ):
        alice_id = (await app_snapshot(alice))["auth"]["currentUserId"]
        topic = f"app:{alice_id}"
        await ws.subscribe(topic)
        snapshot = await ws.until(lambda f: f.get("topic") == topic and f.get("event") == "snapshot")
        assert unread_of(snapshot) == []

        created = await create_task(alice, prompt="Unread when it ends")
        mine = {"organizationId": "acme", "taskId": created["taskId"], "sessionId": created["sessionId"]}
        # The turn ends: alice's topic says so, live (no read of the task needed).
        updated = await ws.until(lambda f: f.get("topic") == topic and mine in unread_of(f), timeout=60)
        assert updated["event"] == "appUpdated"
        assert mine in await unread_now(alice)
        # carol, who does not own the task, has nothing unread, and cannot follow alice's topic.
        assert await unread_now(carol) == []
        async with tasks_server.websocket(carol) as carol_ws:
            await carol_ws.subscribe(topic)
            refused = await carol_ws.next_frame()
            assert refused["op"] == "error", refused

        # A draft save changes no unread flag: nothing is published for it.
        await wait_task(alice, created["taskId"], idle_session)
        base = f"/v1/organizations/acme/tasks/{created['taskId']}/sessions/{created['sessionId']}"
        assert (await alice.put(base + "/draft", json={"text": "later"})).status_code == 200
        # alice reads it: the next update on her topic no longer lists it.
        assert (await alice.post(base + "/read")).status_code == 200
        cleared = await ws.until(lambda f: f.get("topic") == topic and f.get("event") == "appUpdated")
        assert mine not in unread_of(cleared)
        assert mine not in await unread_now(alice)
