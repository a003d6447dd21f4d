"""The realtime gateway through a real uvicorn server and real websocket clients."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from foundry.runtime.events import OVERFLOW_TOPIC, Event
from tests.realtime.conftest import Connect, ControlledRuntime, RealtimeServer, StartServer
from tests.realtime.helpers import ROLE, Client, checked_frame, eventually, settled


async def bump(runtime: ControlledRuntime, key: str, **body: Any) -> int:
    result = await runtime.actor(ROLE, key).send("bump", body, wait=True)
    return int(result["value"])


async def append(runtime: ControlledRuntime, key: str, count: int = 1, text: str = "line") -> int:
    result = await runtime.actor(ROLE, key).send("append", {"count": count, "text": text}, wait=True)
    return int(result["seq"])


async def read_until_closed(client: Client) -> tuple[list[dict[str, Any]], int | None]:
    """Every frame left on the connection, and the close code the server sent."""
    frames = []
    try:
        while True:
            frames.append(checked_frame(await asyncio.wait_for(client.conn.recv(), 10)))
    except ConnectionClosed as closed:
        return frames, closed.rcvd.code if closed.rcvd is not None else None


def board(frames: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    return [(f["event"], f["seq"], f["data"]["value"]) for f in frames]


async def test_subscribe_sends_a_snapshot_then_live_events_in_order(
    server: RealtimeServer, connect_client: Connect
) -> None:
    await bump(server.runtime, "k1", times=3)
    client = await connect_client(server.url())
    await client.subscribe("board:k1")
    assert await client.recv() == {"topic": "board:k1", "event": "snapshot", "seq": 3, "data": {"value": 3}}
    await settled(server.gateway)

    for _ in range(5):
        await bump(server.runtime, "k1")
    frames = await client.recv_n(5)
    assert board(frames) == [("boardUpdated", seq, seq) for seq in range(4, 9)]
    assert all(set(f) == {"topic", "event", "seq", "data"} and f["topic"] == "board:k1" for f in frames)
    await client.assert_quiet()


async def test_two_sockets_on_one_topic_both_get_everything(
    server: RealtimeServer, connect_client: Connect
) -> None:
    first, second = await connect_client(server.url("ann")), await connect_client(server.url("bob"))
    for client in (first, second):
        await client.subscribe("board:k2")
        assert (await client.recv())["seq"] == 0
    await settled(server.gateway)

    ref = server.runtime.actor(ROLE, "k2")
    await asyncio.gather(*(ref.send("bump", {}) for _ in range(30)))
    for client in (first, second):
        frames = await client.recv_n(30)
        assert board(frames) == [("boardUpdated", seq, seq) for seq in range(1, 31)]


async def test_one_host_stream_whatever_the_number_of_sockets(
    server: RealtimeServer, connect_client: Connect
) -> None:
    clients = [await connect_client(server.url(f"user{i}")) for i in range(12)]
    for client in clients:
        for topic in ("board:a", "board:b", "journal:c"):
            await client.subscribe(topic)
            await client.recv() if topic.startswith("board") else None
    stats = server.gateway.stats()
    assert stats["streams_opened"] == 1
    assert stats["sockets"] == 12
    assert stats["subscriptions"] == 36
    assert list(stats["hosts"]) == [f"{ROLE}/0"]
    assert stats["hosts"][f"{ROLE}/0"]["streams_opened"] == 1
    assert stats["hosts"][f"{ROLE}/0"]["subscribers"] == 36
    hub = server.runtime.host(ROLE, 0).hub
    assert hub.subscriber_count == 1

    await bump(server.runtime, "a")
    for client in clients:
        assert board([await client.recv()]) == [("boardUpdated", 1, 1)]

    # Disconnects are noticed at once and the stream goes away with its last subscriber.
    for client in clients:
        await client.close()
    await eventually(lambda: server.gateway.stats()["sockets"] == 0)
    await eventually(lambda: server.gateway.stats()["hosts"] == {} and hub.subscriber_count == 0)


async def test_resubscribe_with_since_replays_exactly_the_gap(
    server: RealtimeServer, connect_client: Connect
) -> None:
    await append(server.runtime, "j1", count=5)
    client = await connect_client(server.url())
    await client.subscribe("journal:j1")
    frames = await client.recv_n(5)
    assert [(f["event"], f["seq"], f["data"]["text"]) for f in frames] == [
        ("line", seq, f"line-{seq - 1}") for seq in range(1, 6)
    ]
    await client.close()

    # 150 lines while away: more than one page of the owner's replay.
    await append(server.runtime, "j1", count=150, text="more")
    again = await connect_client(server.url())
    await again.subscribe("journal:j1", since=5)
    frames = await again.recv_n(150)
    assert [f["seq"] for f in frames] == list(range(6, 156))
    assert [f["data"]["text"] for f in frames] == [f"more-{i}" for i in range(150)]
    await settled(server.gateway)

    await append(server.runtime, "j1", text="live")
    assert await again.recv() == {
        "topic": "journal:j1",
        "event": "line",
        "seq": 156,
        "data": {"text": "live-0"},
    }
    await again.assert_quiet()


async def test_unauthorized_subscribe_is_refused_and_leaks_nothing(
    server: RealtimeServer, connect_client: Connect
) -> None:
    mallory = await connect_client(server.url("mallory"))
    await mallory.send(op="subscribe", topic="board:private-1")
    refused = await mallory.recv()
    assert refused["op"] == "error"
    assert refused["error"] == "forbidden"
    assert refused["topic"] == "board:private-1"
    assert refused["detail"]
    assert server.gateway.stats()["subscriptions"] == 0
    assert server.gateway.stats()["hosts"] == {}

    await bump(server.runtime, "private-1")
    await mallory.assert_quiet()
    await mallory.send(op="ping")
    assert await mallory.recv() == {"op": "pong"}

    owner = await connect_client(server.url("owner"))
    await owner.subscribe("board:private-1")
    assert (await owner.recv())["data"] == {"value": 1}
    await bump(server.runtime, "private-1")
    assert (await owner.recv())["seq"] == 2
    await mallory.assert_quiet()


BAD_FRAMES: list[tuple[str, str | bytes, str, str | None, list[str] | None]] = [
    # (name, frame, error code, topic echoed, fields named)
    ("not_json", "not json", "bad_json", None, None),
    ("array", "[1, 2]", "bad_json", None, None),
    ("binary", b"\x00\x01", "bad_json", None, None),
    ("nested", '{"a":' * 200 + "1" + "}" * 200, "bad_json", None, None),
    ("unknown_op", '{"op": "dance"}', "unknown_op", None, ["op"]),
    ("no_op", '{"topic": "board:x"}', "unknown_op", None, ["op"]),
    ("op_not_a_string", '{"op": {"subscribe": true}}', "unknown_op", None, ["op"]),
    ("unknown_kind", '{"op": "subscribe", "topic": "nope:x"}', "invalid_topic", "nope:x", ["topic"]),
    ("no_id", '{"op": "subscribe", "topic": "board"}', "invalid_topic", "board", ["topic"]),
    ("two_ids", '{"op": "subscribe", "topic": "board:a:b"}', "invalid_topic", "board:a:b", ["topic"]),
    ("dots", '{"op": "subscribe", "topic": "board:../etc"}', "invalid_topic", "board:../etc", ["topic"]),
    ("empty_id", '{"op": "subscribe", "topic": "board:"}', "invalid_topic", "board:", ["topic"]),
    ("topic_number", '{"op": "subscribe", "topic": 5}', "invalid_topic", None, ["topic"]),
    ("missing_topic", '{"op": "subscribe"}', "invalid_topic", None, ["topic"]),
    ("since_negative", '{"op": "subscribe", "topic": "board:ok", "since": -1}', "invalid_input", "board:ok",
     ["since"]),
    ("since_string", '{"op": "subscribe", "topic": "board:ok", "since": "3"}', "invalid_input", "board:ok",
     ["since"]),
    ("since_bool", '{"op": "subscribe", "topic": "board:ok", "since": false}', "invalid_input", "board:ok",
     ["since"]),
    ("unsubscribe_no_topic", '{"op": "unsubscribe"}', "invalid_topic", None, ["topic"]),
    ("unsubscribe_list", '{"op": "unsubscribe", "topic": ["board:ok"]}', "invalid_topic", None, ["topic"]),
    ("large", "x" * 20_000, "too_large", None, None),
    ("one_megabyte", '{"op": "ping", "pad": "' + "x" * 2**20 + '"}', "too_large", None, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("frame", "code", "topic", "fields"), [f[1:] for f in BAD_FRAMES], ids=[f[0] for f in BAD_FRAMES]
)
async def test_bad_frames_get_an_error_frame_and_the_socket_stays_usable(
    server: RealtimeServer,
    connect_client: Connect,
    frame: str | bytes,
    code: str,
    topic: str | None,
    fields: list[str] | None,
) -> None:
    client = await connect_client(server.url())
    await client.conn.send(frame)
    error = await client.recv()
    assert error["op"] == "error"
    assert error["error"] == code
    assert isinstance(error["detail"], str)
    assert error.get("topic") == topic
    # The error names the offending field, in `fields` and in the sentence.
    assert error.get("fields") == fields
    for field in fields or []:
        assert field in error["detail"]
    await client.send(op="ping")
    assert await client.recv() == {"op": "pong"}
    await client.subscribe("board:ok")
    assert (await client.recv())["event"] == "snapshot"


async def test_a_socket_holds_a_limited_number_of_subscriptions(
    start_server: StartServer, connect_client: Connect
) -> None:
    server = await start_server(max_subscriptions=2)
    client = await connect_client(server.url())
    for topic in ("board:m1", "board:m2"):
        await client.subscribe(topic)
        await client.recv()
    await client.send(op="subscribe", topic="board:m3")
    error = await client.recv()
    assert (error["error"], error["topic"]) == ("too_many_subscriptions", "board:m3")

    await client.send(op="unsubscribe", topic="board:m1")
    assert await client.recv() == {"op": "unsubscribed", "topic": "board:m1"}
    await client.subscribe("board:m3")
    assert (await client.recv())["topic"] == "board:m3"
    # Subscribing again to a held topic is acknowledged and sends nothing more.
    await client.subscribe("board:m3")
    await client.assert_quiet()


async def test_unsubscribe_stops_events_and_the_host_stream(
    server: RealtimeServer, connect_client: Connect
) -> None:
    client = await connect_client(server.url())
    await client.subscribe("board:u")
    await client.recv()
    assert list(server.gateway.stats()["hosts"]) == [f"{ROLE}/0"]
    await client.send(op="unsubscribe", topic="board:u")
    assert await client.recv() == {"op": "unsubscribed", "topic": "board:u"}
    await eventually(lambda: server.gateway.stats()["hosts"] == {})
    await bump(server.runtime, "u")
    await client.assert_quiet()


async def test_a_slow_consumer_is_closed_with_1013_and_the_others_keep_up(
    start_server: StartServer, connect_client: Connect
) -> None:
    server = await start_server(queue_limit=20)
    fast = await connect_client(server.url("fast"))
    await fast.subscribe("board:s")
    await fast.recv()
    # A client that stops reading: a tiny receive buffer, no read-ahead in the client library, and
    # no compression (the padding would shrink to nothing).
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.setblocking(False)
    await asyncio.get_running_loop().sock_connect(raw, ("127.0.0.1", server.port))
    slow = await connect_client(server.url("slow"), sock=raw, max_queue=1, compression=None)
    await slow.subscribe("board:s")
    await slow.recv()
    await settled(server.gateway)

    fast_frames: list[dict[str, Any]] = []
    target = asyncio.get_running_loop().create_future()

    async def read_fast() -> None:
        while True:
            fast_frames.append(await fast.recv(timeout=10))
            if target.done() and fast_frames[-1]["seq"] >= target.result():
                return

    reader = asyncio.create_task(read_fast())
    sent = 0
    while server.gateway.stats()["slow_consumers"] == 0:
        assert sent < 2000, "the slow client was never dropped"
        sent = await bump(server.runtime, "s", times=20, pad=32_000)
    target.set_result(sent)
    await asyncio.wait_for(reader, 20)
    assert [f["seq"] for f in fast_frames] == list(range(1, sent + 1))

    slow_frames, close_code = await read_until_closed(slow)
    assert close_code == 1013
    assert slow_frames[-1]["op"] == "error"
    assert slow_frames[-1]["error"] == "slow_consumer"
    seqs = [f["seq"] for f in slow_frames[:-1]]
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(seqs) < sent
    assert server.gateway.stats()["sockets"] == 1
    assert server.gateway.stats()["subscriptions"] == 1


async def test_an_unauthenticated_connection_is_refused_with_4401(
    server: RealtimeServer, connect_client: Connect
) -> None:
    client = await connect_client(server.url(user=None))
    frame = await client.recv()
    assert frame["op"] == "error"
    assert frame["error"] == "unauthorized"
    with pytest.raises(ConnectionClosed) as closed:
        await client.conn.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4401
    assert server.gateway.stats()["sockets"] == 0


async def test_a_topic_whose_owner_has_no_snapshot_is_refused(
    server: RealtimeServer, connect_client: Connect
) -> None:
    client = await connect_client(server.url())
    await client.send(op="subscribe", topic="counter:x")
    error = await client.recv()  # the refusal alone: never acknowledged first
    assert (error["op"], error["topic"], error["error"]) == ("error", "counter:x", "not_found")
    await eventually(lambda: server.gateway.stats()["subscriptions"] == 0)
    await eventually(lambda: server.gateway.stats()["hosts"] == {})


async def test_a_broken_host_stream_resyncs_every_subscriber(
    server: RealtimeServer, connect_client: Connect
) -> None:
    await bump(server.runtime, "r", times=2)
    await append(server.runtime, "r", count=2)
    client = await connect_client(server.url())
    await client.subscribe("board:r")
    assert (await client.recv())["seq"] == 2
    await client.subscribe("journal:r")
    assert [f["seq"] for f in await client.recv_n(2)] == [1, 2]
    await settled(server.gateway)

    server.runtime.break_streams()
    await append(server.runtime, "r", text="during")  # lost with the stream, or live after it
    frames = await client.recv_n(2)
    by_topic = {f["topic"]: f for f in frames}
    # A fresh snapshot even though nothing changed: the client knows it is live again.
    assert by_topic["board:r"] == {"topic": "board:r", "event": "snapshot", "seq": 2, "data": {"value": 2}}
    assert (by_topic["journal:r"]["seq"], by_topic["journal:r"]["data"]) == (3, {"text": "during-0"})
    await settled(server.gateway)
    assert server.gateway.stats()["hosts"][f"{ROLE}/0"]["streams_opened"] == 2

    await bump(server.runtime, "r")
    assert board([await client.recv()]) == [("boardUpdated", 3, 3)]
    await client.assert_quiet()


async def test_the_runtime_overflow_marker_resends_snapshots(
    server: RealtimeServer, connect_client: Connect
) -> None:
    client = await connect_client(server.url())
    await client.subscribe("board:o")
    assert (await client.recv())["seq"] == 0
    await settled(server.gateway)
    server.runtime.host(ROLE, 0).hub.publish([Event(OVERFLOW_TOPIC, "overflow", 0, None)])
    assert await client.recv() == {"topic": "board:o", "event": "snapshot", "seq": 0, "data": {"value": 0}}
    await bump(server.runtime, "o")
    assert (await client.recv())["seq"] == 1
    assert server.gateway.stats()["streams_opened"] == 1


async def test_a_lost_event_is_healed_by_a_snapshot(server: RealtimeServer, connect_client: Connect) -> None:
    client = await connect_client(server.url())
    await client.subscribe("board:g")
    assert (await client.recv())["seq"] == 0
    await settled(server.gateway)

    server.runtime.drop_next.add("board:g")
    await bump(server.runtime, "g")  # seq 1 never reaches the gateway
    await bump(server.runtime, "g")  # seq 2 reveals the gap
    assert await client.recv() == {"topic": "board:g", "event": "snapshot", "seq": 2, "data": {"value": 2}}
    assert server.gateway.stats()["gaps"] == 1
    await bump(server.runtime, "g")
    assert board([await client.recv()]) == [("boardUpdated", 3, 3)]
    await client.assert_quiet()


async def test_closing_the_gateway_closes_sockets_with_1001(
    server: RealtimeServer, connect_client: Connect
) -> None:
    client: Client = await connect_client(server.url())
    await client.subscribe("board:z")
    await client.recv()
    await server.gateway.close()
    frame = await client.recv()
    assert frame["error"] == "going_away"
    with pytest.raises(ConnectionClosed) as closed:
        await client.conn.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1001
    assert server.gateway.stats()["hosts"] == {}


async def test_under_churn_every_client_sees_increasing_seqs_and_the_whole_log(
    server: RealtimeServer, connect_client: Connect
) -> None:
    """Writers, late joiners, broken streams, lost events and overflow markers at once."""
    runtime = server.runtime
    stop = asyncio.Event()

    async def write() -> None:
        while not stop.is_set():
            await asyncio.gather(bump(runtime, "w"), append(runtime, "w"), bump(runtime, "w", times=3))

    async def follow(client: Client, frames: dict[str, list[dict[str, Any]]]) -> None:
        while True:
            frame = await client.recv(timeout=10)
            if "topic" in frame and "seq" in frame:
                frames.setdefault(frame["topic"], []).append(frame)

    writer = asyncio.create_task(write())
    followers = []
    seen: list[dict[str, list[dict[str, Any]]]] = []
    for i in range(6):
        client = await connect_client(server.url(f"u{i}"))
        await client.send(op="subscribe", topic="board:w")
        await client.send(op="subscribe", topic="journal:w")
        seen.append({})
        followers.append(asyncio.create_task(follow(client, seen[-1])))
        await asyncio.sleep(0.05)
        if i == 2:
            runtime.break_streams()
        if i == 3:
            runtime.drop_next.update({"board:w", "journal:w"})
        if i == 4:
            runtime.host(ROLE, 0).hub.publish([Event(OVERFLOW_TOPIC, "overflow", 0, None)])
    stop.set()
    await writer
    final_board = await bump(runtime, "w")
    final_log = await append(runtime, "w")

    def caught_up() -> bool:
        return all(
            s.get("board:w", [{}])[-1].get("seq") == final_board
            and s.get("journal:w", [{}])[-1].get("seq") == final_log
            for s in seen
        )

    await eventually(caught_up, timeout=10)
    for task in followers:
        task.cancel()
    for frames in seen:
        assert frames["board:w"][0]["event"] == "snapshot"
        for prev, cur in zip(frames["board:w"], frames["board:w"][1:], strict=False):
            if cur["event"] == "snapshot":
                # Never older; the same seq only for the fresh snapshot after a lost host stream.
                assert cur["seq"] >= prev["seq"]
            else:
                assert cur["seq"] == prev["seq"] + 1, "live events are contiguous"
        assert frames["board:w"][-1]["data"]["value"] == final_board
        assert [f["seq"] for f in frames["journal:w"]] == list(range(1, final_log + 1))


async def test_a_failing_authorization_check_is_an_error_frame_not_a_dead_socket(
    server: RealtimeServer, connect_client: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    client = await connect_client(server.url("explode"))
    await client.send(op="subscribe", topic="board:e")
    error = await client.recv()
    assert (error["topic"], error["error"]) == ("board:e", "internal_error")
    assert "authorize(explode, board:e) failed" in caplog.text
    await client.send(op="ping")
    assert await client.recv() == {"op": "pong"}


async def test_since_skips_what_the_client_already_holds(
    server: RealtimeServer, connect_client: Connect
) -> None:
    await bump(server.runtime, "h", times=4)
    client = await connect_client(server.url())
    await client.subscribe("board:h", since=4)  # already current: no snapshot
    await settled(server.gateway)
    await client.assert_quiet()
    await bump(server.runtime, "h")
    assert board([await client.recv()]) == [("boardUpdated", 5, 5)]
    # A client claiming more than the owner has (stale after a reset) is brought back to the truth.
    stale = await connect_client(server.url())
    await stale.subscribe("board:h", since=99)
    assert await stale.recv() == {"topic": "board:h", "event": "snapshot", "seq": 5, "data": {"value": 5}}


async def test_a_replay_longer_than_the_cap_arrives_whole_over_several_rounds(
    start_server: StartServer, connect_client: Connect
) -> None:
    server = await start_server(max_replay_events=30)
    await append(server.runtime, "long", count=75)
    client = await connect_client(server.url())
    await client.subscribe("journal:long")
    assert [f["seq"] for f in await client.recv_n(75)] == list(range(1, 76))
    await settled(server.gateway)
    await append(server.runtime, "long")
    assert (await client.recv())["seq"] == 76
    await client.assert_quiet()
