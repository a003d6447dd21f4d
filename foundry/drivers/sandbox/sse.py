"""A lean reader of sandbox-agent's ACP event streams (``text/event-stream`` over HTTP/1.1).

sandbox-agent writes every event as its own HTTP chunk. Through httpx that costs one parser round
trip and one event-loop step per event (about 75 µs each, measured), which caps one host at a little
over 10,000 events a second and lets a busy reader fall behind, whereupon sandbox-agent drops events
for it. This reader speaks the few bytes of HTTP a stream needs, receives them in a thread of its own
(`SocketPump`: a busy event loop does not stop the reading) and decodes the chunked framing and the
events from large reads in one pass.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from foundry.drivers.sandbox.socket_pump import PumpBroke, RawBody, Receiver, SocketPump
from foundry.drivers.sandbox.sse_blocks import ChunkDecoder, EventBlocks, replay_blocks

log = logging.getLogger(__name__)

#: Blocks handed on between two turns of the event loop. A read of data already received does not
#: wait, so a stream that is always ahead would otherwise be read (a 256 KB read is over a thousand
#: events) without the loop running anything else: Stop, other sessions' turns, requests.
YIELD_EVERY = 100
#: Largest error body read from a refused stream request.
MAX_ERROR_BODY = 64 * 1024
_MESSAGE_LINE = b"event: message\n"


class StreamBroke(Exception):
    """The connection failed or ended in the middle of the HTTP framing."""


async def open_event_stream(
    base_url: str, path: str, headers: Mapping[str, str], *, connect_timeout: float
) -> tuple[httpx.Response | None, AsyncGenerator[tuple[int, dict[str, Any]], None]]:
    """GET ``path`` as an event stream.

    Returns ``(error_response, events)``: an `httpx.Response` with the body when the server refused
    (status >= 400; ``events`` is then empty), else ``None`` and the ``(id, envelope)`` iterator,
    which ends when the server ends the stream. Raises `StreamBroke` or `OSError`/`TimeoutError`
    when the server cannot be reached. Ids the server skips are re-read at once (`sse_blocks`).
    """
    url = urlsplit(base_url)
    host = url.hostname or "127.0.0.1"
    port = url.port or (443 if url.scheme == "https" else 80)
    tls = url.scheme == "https"
    requested = _header(headers, "last-event-id")
    # Ids are numbered from 1, so a stream without ``Last-Event-ID`` follows id 0.
    start = int(requested) if requested is not None and requested.isdigit() else 0

    def request(after: int | None) -> bytes:
        lines = [f"GET {path} HTTP/1.1", f"Host: {url.netloc}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers.items() if name.lower() != "last-event-id"]
        if after is not None:
            lines.append(f"Last-Event-ID: {after}")
        elif requested is not None:
            lines.append(f"Last-Event-ID: {requested}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def receiver_for(status: int, response_headers: dict[str, str]) -> Receiver:
        if status >= 400:
            return RawBody()

        def replay(first: int, beyond: int) -> list[bytes]:
            return replay_blocks(host, port, tls, request, first, beyond)

        return EventBlocks(_chunked(response_headers), replay, f"{host}:{port}{path}", request, after=start)

    pump = SocketPump(receiver_for)
    try:
        # The thread's socket gives up after ``connect_timeout`` per step; this bounds the whole.
        status, response_headers = await asyncio.wait_for(
            pump.open(host, port, tls, request(None), connect_timeout), 2 * connect_timeout
        )
    except PumpBroke as exc:
        raise StreamBroke(str(exc)) from exc
    if status >= 400:
        try:
            body = await _error_body(pump, _chunked(response_headers), _content_length(response_headers))
        finally:
            pump.close()
        return httpx.Response(status, headers=response_headers, content=body), _empty()
    return None, _events(pump)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    return next((value for key, value in headers.items() if key.lower() == name), None)


def _chunked(headers: Mapping[str, str]) -> bool:
    return "chunked" in headers.get("transfer-encoding", "").lower()


def _content_length(headers: Mapping[str, str]) -> int | None:
    value = headers.get("content-length", "")
    return int(value) if value.isdigit() else None


async def _empty() -> AsyncGenerator[tuple[int, dict[str, Any]], None]:
    return
    yield  # pragma: no cover - makes this an async generator


async def _read(pump: SocketPump) -> list[Any]:
    try:
        return await pump.read_items()
    except PumpBroke as exc:
        raise StreamBroke(f"the connection failed in the middle of the stream: {exc}") from exc


async def _error_body(pump: SocketPump, chunked: bool, length: int | None) -> bytes:
    """A refused request's body (at most about `MAX_ERROR_BODY`): a server may keep the connection
    open after it, so a length or the last chunk ends it."""
    decoder = ChunkDecoder() if chunked else None
    body = bytearray()
    while len(body) <= MAX_ERROR_BODY and (length is None or len(body) < length):
        data = b"".join(await _read(pump))
        if not data:
            break
        body += decoder.feed(data) if decoder is not None else data
        if decoder is not None and decoder.finished:
            break
    return bytes(body[:length] if length is not None else body)


async def _events(pump: SocketPump) -> AsyncGenerator[tuple[int, dict[str, Any]], None]:
    try:
        while blocks := await _read(pump):
            for count, block in enumerate(blocks, 1):
                parsed = parse_event_block(block)
                if parsed is not None:
                    yield parsed
                if count % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            await asyncio.sleep(0)
    finally:
        pump.close()


def parse_event_block(block: bytes) -> tuple[int, dict[str, Any]] | None:
    """``(id, JSON data)`` of one SSE event block, or None (comments, other event types, bad data)."""
    # sandbox-agent writes every event as ``event: message``, ``id: N`` and one ``data:`` line: take
    # that shape with a few slices, since this runs for every event an agent streams.
    start = len(_MESSAGE_LINE) if block.startswith(_MESSAGE_LINE) else 0
    if block.startswith(b"id: ", start):
        newline = block.find(b"\n", start)
        if block.startswith(b"data: ", newline + 1) and block.find(b"\n", newline + 1) < 0:
            digits = block[start + 4 : newline]
            if digits.isdigit():
                return _decoded(int(digits), block[newline + 7 :], digits)
    event_type = b"message"
    event_id: bytes | None = None
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue  # comment / keep-alive
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"id":
            event_id = value
        elif name == b"event":
            event_type = value
    if not data or event_type != b"message":
        return None
    try:
        number = int(event_id) if event_id is not None else None
    except ValueError:
        number = None
    if number is None:
        log.warning("skipping sse event without a numeric id id=%r", event_id)
        return None
    return _decoded(number, b"\n".join(data), event_id)


def _decoded(number: int, payload: bytes, event_id: bytes | None) -> tuple[int, dict[str, Any]] | None:
    try:
        envelope = orjson.loads(payload)
    except orjson.JSONDecodeError:
        # orjson refuses some valid JSON (integers beyond 64 bits): the standard library decides.
        try:
            envelope = json.loads(payload)
        except ValueError:
            log.warning("skipping malformed sse event id=%r data=%r", event_id, payload[:200])
            return None
    if not isinstance(envelope, dict):
        log.warning("skipping sse event whose data is not an object id=%r", event_id)
        return None
    return number, envelope
