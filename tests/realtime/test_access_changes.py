"""Access taken away while subscribed: after the owner's access-changed event, a subscriber the
authorization now refuses gets ``forbidden`` and nothing published after the change; the others
carry on without a gap."""

from __future__ import annotations

from typing import Any

from tests.realtime.conftest import Connect, ControlledRuntime, RealtimeServer
from tests.realtime.helpers import REVOKED, ROLE


async def bump(runtime: ControlledRuntime, key: str, **body: Any) -> int:
    result = await runtime.actor(ROLE, key).send("bump", body, wait=True)
    return int(result["value"])


async def test_a_subscriber_who_lost_access_gets_nothing_published_after_the_change(
    server: RealtimeServer, connect_client: Connect
) -> None:
    stays = await connect_client(server.url("owner"))
    leaves = await connect_client(server.url("guest"))
    for client in (stays, leaves):
        await client.subscribe("board:shared-1")
        assert (await client.recv())["event"] == "snapshot"
    # One event through first: the host stream is confirmed, so no snapshot is re-read below
    # (a re-read would rightly send a snapshot instead of the events this test counts).
    await bump(server.runtime, "shared-1")
    for client in (stays, leaves):
        assert (await client.recv())["seq"] == 1
    REVOKED.add("guest")
    try:
        # The change and three more events in one transaction: they arrive in one batch.
        await bump(server.runtime, "shared-1", times=3, access_changed=True)
        got = [await leaves.recv()]
        while got[-1].get("op") != "error":
            got.append(await leaves.recv())
        # Not even the change itself: it is queued behind the re-check that refuses the subscriber.
        assert [f.get("event") for f in got[:-1]] == []
        assert got[-1] == {**got[-1], "error": "forbidden", "topic": "board:shared-1"}
        kept = await stays.recv_n(4)
        assert [(f["event"], f["seq"]) for f in kept] == [
            ("accessChanged", 2),
            ("boardUpdated", 3),
            ("boardUpdated", 4),
            ("boardUpdated", 5),
        ]
        await bump(server.runtime, "shared-1")
        assert (await stays.recv())["seq"] == 6
        await leaves.assert_quiet()
        # Subscribing again is checked afresh, and refused.
        await leaves.send(op="subscribe", topic="board:shared-1")
        again = await leaves.recv()
        assert again == {**again, "error": "forbidden", "topic": "board:shared-1"}
    finally:
        REVOKED.discard("guest")


async def test_subscribers_still_allowed_are_held_then_get_everything_in_order(
    server: RealtimeServer, connect_client: Connect
) -> None:
    client = await connect_client(server.url("owner"))
    await client.subscribe("board:shared-2")
    assert (await client.recv())["event"] == "snapshot"
    await bump(server.runtime, "shared-2")  # the host stream is confirmed (see above)
    assert (await client.recv())["seq"] == 1
    for _ in range(3):
        await bump(server.runtime, "shared-2", times=2, access_changed=True)
    frames = await client.recv_n(9)
    assert [f["seq"] for f in frames] == list(range(2, 11))
    assert [f["event"] for f in frames].count("accessChanged") == 3
    await client.assert_quiet()
