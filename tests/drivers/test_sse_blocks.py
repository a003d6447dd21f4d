"""SSE event blocks as sandbox-agent writes them, and the other shapes the format allows, decode the
same way: the shortcut for sandbox-agent's own layout must not change what an event means."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from foundry.drivers.sandbox.sse import open_event_stream, parse_event_block

ENVELOPE = b'{"jsonrpc":"2.0","method":"session/update","params":{"update":{"text":"h\xc3\xa9"}}}'
DECODED = {"jsonrpc": "2.0", "method": "session/update", "params": {"update": {"text": "hé"}}}


@pytest.mark.parametrize(
    "block",
    [
        b"event: message\nid: 42\ndata: " + ENVELOPE,  # sandbox-agent's layout
        b"id: 42\ndata: " + ENVELOPE,
        b"id: 42\nevent: message\ndata: " + ENVELOPE,
        b"data: " + ENVELOPE + b"\nid: 42",
        b"event: message\nid:42\ndata:" + ENVELOPE,
        b": keep-alive\nevent: message\nid: 42\ndata: " + ENVELOPE,
        b"event: message\nid: 42\ndata: " + ENVELOPE.replace(b",", b"\ndata: ,", 1),  # two data lines
    ],
)
def test_every_layout_of_an_event_decodes_alike(block: bytes) -> None:
    assert parse_event_block(block) == (42, DECODED)


@pytest.mark.parametrize(
    "block",
    [
        b"event: log\nid: 42\ndata: " + ENVELOPE,  # another event type
        b"event: message\nid: x\ndata: " + ENVELOPE,  # no numeric id
        b"event: message\ndata: " + ENVELOPE,  # no id at all
        b"event: message\nid: 42\ndata: [1, 2]",  # not an object
        b"event: message\nid: 42\ndata: {broken",  # not JSON
        b": keep-alive",
    ],
)
def test_blocks_that_are_not_events_are_skipped(block: bytes) -> None:
    assert parse_event_block(block) is None


def test_64_bit_integers_are_exact() -> None:
    block = b'event: message\nid: 7\ndata: {"id": 9223372036854775807, "low": -9223372036854775808}'
    assert parse_event_block(block) == (7, {"id": 2**63 - 1, "low": -(2**63)})


async def test_a_stream_that_is_always_ahead_leaves_the_event_loop_time_for_other_work() -> None:
    # A fast agent's events are already received when the reader asks for more, so no read waits: the
    # process that hosts every session's turns (and Stop) must still get to run between the events.
    events = 20_000
    body = b"".join(b'event: message\nid: %d\ndata: {"n": %d}\n\n' % (n, n) for n in range(1, events + 1))

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
        writer.write(head + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    turns = 0

    async def other_work() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    async with server:
        url = f"http://127.0.0.1:{port}"
        refused, stream = await open_event_stream(url, "/events", {}, connect_timeout=5)
        assert refused is None
        await asyncio.sleep(0.2)  # the whole stream is in the socket before the first read
        other = asyncio.create_task(other_work())
        try:
            received = [event_id async for event_id, _ in stream]
        finally:
            other.cancel()
    assert received == list(range(1, events + 1))
    # Other work ran at least every few hundred events (it got one turn per read of 256 KB before).
    assert turns >= events / 300, turns


async def test_streams_closed_early_or_refused_leave_no_thread_or_connection_behind() -> None:
    # Each stream is received by a thread of its own: closing the stream (the reader stopped, Stop, a
    # resync) must end that thread and its connection, whether or not the server ever ends the stream.
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            request = await reader.readline()
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            if b"/refused" in request:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nno server")
            else:
                head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
                writer.write(head + b'event: message\nid: 1\ndata: {"n": 1}\n\n')
            await writer.drain()
            await reader.read()  # until the client hangs up: the server never ends a stream
        finally:
            connections -= 1
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    before = threading.active_count()
    async with server:
        for round_ in range(30):
            path = "/refused" if round_ % 3 == 0 else "/events"
            refused, stream = await open_event_stream(url, path, {}, connect_timeout=5)
            if refused is not None:
                assert refused.status_code == 404
                assert refused.text == "no server"
                continue
            assert await anext(stream) == (1, {"n": 1})
            await stream.aclose()
        for _ in range(100):
            if threading.active_count() == before and connections == 0:
                break
            await asyncio.sleep(0.05)
    assert threading.active_count() == before
    assert connections == 0


async def _read_while_busy(serve: Any) -> list[int]:
    """The ids ``serve`` streams to a reader whose event loop is busy for a second after opening."""
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        refused, stream = await open_event_stream(url, "/events", {}, connect_timeout=5)
        assert refused is None
        await asyncio.sleep(0.05)
        time.sleep(1.0)  # the event loop is busy elsewhere
        return [event_id async for event_id, _ in stream]


CHUNKED_OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


async def _request_head(reader: asyncio.StreamReader) -> bytes:
    """The request's head (its lines up to the blank one), as a test server reads it."""
    head = b""
    while (line := await reader.readline()) not in (b"\r\n", b""):
        head += line
    return head


def _chunked_event(n: int) -> bytes:
    """Event ``n`` as sandbox-agent writes it: one SSE block in one HTTP chunk."""
    body = b'event: message\nid: %d\ndata: {"n": %d}\n\n' % (n, n)
    return b"%x\r\n%s\r\n" % (len(body), body)


async def test_ids_the_server_skips_are_re_read_at_once_even_while_the_reader_is_behind() -> None:
    # sandbox-agent skips ids for a subscriber it could not serve in time and keeps only its last
    # 1,024 events: a skipped range must be asked for at once, not when the (busy) consumer reaches
    # it. This server can replay a skipped range for 300 ms only; the consumer is a second behind.
    sent_gap_at: list[float] = []
    replays: list[tuple[int, float]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await _request_head(reader)
        writer.write(CHUNKED_OK)
        if b"Last-Event-ID: 39" in head:  # the re-read of the skipped range
            replays.append((39, time.monotonic()))
            if time.monotonic() - sent_gap_at[0] < 0.3:
                writer.write(b"".join(_chunked_event(n) for n in range(40, 101)))
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(b"".join(_chunked_event(n) for n in range(1, 40)))
            await writer.drain()
            writer.write(b"".join(_chunked_event(n) for n in range(60, 101)) + b"0\r\n\r\n")
            sent_gap_at.append(time.monotonic())
        await writer.drain()
        writer.close()

    assert await _read_while_busy(serve) == list(range(1, 101))
    assert len(replays) == 1


async def test_a_stream_the_server_ends_while_it_runs_is_resumed_at_once_where_it_stopped() -> None:
    # sandbox-agent ends the stream of a subscriber it fell behind for, although the agent goes on:
    # the reader resumes after the last id at once (this server replays for 300 ms only), not when
    # the busy consumer reaches the end; a server that is gone (404) ends the stream for good.
    ended_at: list[float] = []
    asked: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await _request_head(reader)
        asked.append(head)
        if b"Last-Event-ID: 50" in head and time.monotonic() - ended_at[0] < 0.3:
            writer.write(CHUNKED_OK + b"".join(_chunked_event(n) for n in range(51, 101)) + b"0\r\n\r\n")
        elif b"Last-Event-ID" in head:
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        else:
            writer.write(CHUNKED_OK + b"".join(_chunked_event(n) for n in range(1, 51)) + b"0\r\n\r\n")
            ended_at.append(time.monotonic())
        await writer.drain()
        writer.close()

    assert await _read_while_busy(serve) == list(range(1, 101))
    assert [b"Last-Event-ID: 50" in h for h in asked] == [False, True, False]
    assert b"Last-Event-ID: 100" in asked[2]


async def test_a_stream_whose_first_ids_are_skipped_re_reads_them_at_once() -> None:
    # A stream asked for from the first event (no Last-Event-ID) whose first block is already id 20
    # skipped 1..19: it must re-read them at once like any other gap, not take 20 as its start.
    replays: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await _request_head(reader)
        writer.write(CHUNKED_OK)
        if b"Last-Event-ID: 0" in head:  # the re-read, answered only while the reader is behind
            replays.append(head)
            writer.write(b"".join(_chunked_event(n) for n in range(1, 61)) + b"0\r\n\r\n")
        else:
            writer.write(b"".join(_chunked_event(n) for n in range(20, 61)) + b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    assert await _read_while_busy(serve) == list(range(1, 61))
    assert len(replays) == 1
