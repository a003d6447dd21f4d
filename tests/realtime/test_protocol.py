"""The documented protocol against what a real session produces (every frame read by `Client` is
already checked against its model; these tests make sure every kind of frame is exercised)."""

from __future__ import annotations

import json
import time

from foundry.realtime import frames
from tests.realtime.conftest import Connect, RealtimeServer
from tests.realtime.helpers import ROLE, settled


async def test_a_session_produces_every_documented_frame_kind(
    server: RealtimeServer, connect_client: Connect
) -> None:
    await server.runtime.actor(ROLE, "p").send("append", {"count": 3, "text": "l"}, wait=True)
    client = await connect_client(server.url())
    seen: list[dict[str, object]] = []

    async def recv() -> dict[str, object]:
        frame = await client.recv()
        seen.append(frame)
        return frame

    await client.send(op="subscribe", topic="board:p")
    assert (await recv())["op"] == "subscribed"
    assert (await recv())["event"] == "snapshot"
    await client.send(op="subscribe", topic="journal:p", since=1)
    assert (await recv())["op"] == "subscribed"
    assert [(f["event"], f["seq"]) for f in [await recv(), await recv()]] == [("line", 2), ("line", 3)]
    await settled(server.gateway)
    await server.runtime.actor(ROLE, "p").send("bump", {}, wait=True)
    assert (await recv())["event"] == "boardUpdated"
    await client.send(op="subscribe", topic="board:private-1")
    assert (await recv())["error"] == "forbidden"
    await client.send(op="subscribe", topic="counter:x")  # its owner has no snapshot action
    assert (await recv())["error"] == "not_found"  # never acknowledged first
    await client.send(op="subscribe", topic="board:p", since="yesterday")
    assert (await recv())["error"] == "invalid_input"
    await client.send(op="unsubscribe", topic="board:p")
    assert (await recv())["op"] == "unsubscribed"
    await client.send(op="ping")
    assert (await recv())["op"] == "pong"

    kinds = {type(frames.server_frames.validate_python(frame)) for frame in seen}
    assert kinds == set(frames.SERVER_FRAMES) - {frames.Waiting}  # the next test's
    codes = {frame["error"] for frame in seen if frame.get("op") == "error"}
    assert codes <= set(frames.ERROR_CODES)


async def test_a_burst_of_hostile_frames_leaves_the_connection_usable(
    server: RealtimeServer, connect_client: Connect
) -> None:
    client = await connect_client(server.url())
    hostile: list[str | bytes] = [
        "{",
        "[]",
        "null",
        '"subscribe"',
        b"\xff",
        "[" * 10_000 + "]" * 10_000,
        '{"op": "subscribe", "topic": null}',
        '{"op": "subscribe", "topic": "board:ok", "since": 1e400}',
        '{"op": "subscribe", "topic": "board:ok", "since": 99999999999999999999999}',
        '{"op": "subscribe", "topic": "board:\\ud800"}',
        json.dumps({"op": "unsubscribe", "topic": "board:" + "x" * 10_000}),
        json.dumps({"op": "ping", "deep": [[[[[[[[[[1]]]]]]]]]]}),
    ] * 20
    for frame in hostile:
        await client.conn.send(frame)
    answers = [await client.recv() for _ in hostile]
    # Each got exactly one answer, in order; the only good frame is the ping with extra fields.
    assert [a.get("op") for a in answers] == ["pong" if "deep" in str(f) else "error" for f in hostile]
    await client.subscribe("board:ok")
    assert (await client.recv())["event"] == "snapshot"
    assert server.gateway.stats()["sockets"] == 1


async def test_a_subscriber_whose_topic_cannot_be_read_yet_is_told_it_waits_then_served(
    server: RealtimeServer, connect_client: Connect
) -> None:
    # The topic's host process hangs or restarts: the subscription is not ended (a restart takes a
    # second or two), but the client hears why nothing comes instead of waiting in silence.
    await server.runtime.actor(ROLE, "p").send("append", {"count": 1, "text": "l"}, wait=True)
    server.runtime.unavailable_snapshots = 3
    client = await connect_client(server.url())
    await client.send(op="subscribe", topic="board:p")
    told = await client.recv()
    frames.server_frames.validate_python(told)
    assert told["op"] == "waiting"
    assert told["topic"] == "board:p"
    assert "gave no answer within 5 s" in str(told["detail"])
    # Once, however many attempts fail; then the subscription is served as usual.
    assert (await client.recv())["op"] == "subscribed"
    assert (await client.recv())["event"] == "snapshot"
    assert server.runtime.unavailable_snapshots == 0


async def test_subscribers_of_a_topic_whose_owner_is_slow_are_told_they_wait_then_served(
    server: RealtimeServer, connect_client: Connect
) -> None:
    # The owner answers, but slowly (a host busy elsewhere, or about to be found hung): after 3 s the
    # subscriber hears why nothing comes yet, and one who joins meanwhile hears it at once.
    await server.runtime.actor(ROLE, "p").send("append", {"count": 1, "text": "l"}, wait=True)
    server.runtime.snapshot_delay = 5.0
    first = await connect_client(server.url())
    started = time.monotonic()
    await first.send(op="subscribe", topic="board:p")
    told = await first.recv()
    assert told["op"] == "waiting"
    assert 2.5 < time.monotonic() - started < 4.5
    assert "has not answered for 3 s" in str(told["detail"])
    second = await connect_client(server.url())
    joined = time.monotonic()
    await second.send(op="subscribe", topic="board:p")
    assert (await second.recv())["op"] == "waiting"
    assert time.monotonic() - joined < 1
    server.runtime.snapshot_delay = 0.0
    for client in (first, second):
        assert (await client.recv())["op"] == "subscribed"
        assert (await client.recv())["event"] == "snapshot"
