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
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from foundry.drivers.sandbox.socket_pump import PumpBroke, SocketPump

log = logging.getLogger(__name__)

#: Events handed on between two turns of the event loop. A read of data already received does not
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
    when the server cannot be reached.
    """
    url = urlsplit(base_url)
    host = url.hostname or "127.0.0.1"
    port = url.port or (443 if url.scheme == "https" else 80)
    lines = [f"GET {path} HTTP/1.1", f"Host: {url.netloc}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    pump = SocketPump()
    try:
        # The thread's socket gives up after ``connect_timeout`` per step; this bounds the whole.
        status, response_headers = await asyncio.wait_for(
            pump.open(host, port, url.scheme == "https", request, connect_timeout), 2 * connect_timeout
        )
    except PumpBroke as exc:
        raise StreamBroke(str(exc)) from exc
    chunked = "chunked" in response_headers.get("transfer-encoding", "").lower()
    if status >= 400:
        try:
            body = bytearray()
            async for part in _body(pump, chunked, _content_length(response_headers)):
                body += part
                if len(body) > MAX_ERROR_BODY:
                    break
        finally:
            pump.close()
        return httpx.Response(status, headers=response_headers, content=bytes(body)), _empty()
    return None, _events(pump, chunked)


async def _empty() -> AsyncGenerator[tuple[int, dict[str, Any]], None]:
    return
    yield  # pragma: no cover - makes this an async generator


async def _read(pump: SocketPump) -> bytes:
    try:
        return await pump.read()
    except PumpBroke as exc:
        raise StreamBroke(f"the connection failed in the middle of the stream: {exc}") from exc


def _content_length(headers: Mapping[str, str]) -> int | None:
    value = headers.get("content-length", "")
    return int(value) if value.isdigit() else None


async def _body(pump: SocketPump, chunked: bool, length: int | None = None) -> AsyncIterator[bytes]:
    """The body's bytes as they arrive, with the chunked framing removed (or the first ``length``
    bytes: a server may keep the connection open after its answer)."""
    if not chunked:
        while (length is None or length > 0) and (data := await _read(pump)):
            if length is not None:
                data = data[:length]
                length -= len(data)
            yield data
        return
    buffer = bytearray()
    remaining = 0  # bytes left of the current chunk's data, then its CRLF (counted in `trailer`)
    trailer = 0
    while True:
        data = await _read(pump)
        if not data:
            raise StreamBroke("connection closed in the middle of the stream")
        buffer += data
        out = bytearray()
        pos = 0
        while True:
            if remaining:
                take = min(remaining, len(buffer) - pos)
                out += buffer[pos : pos + take]
                pos += take
                remaining -= take
                if remaining:
                    break
                trailer = 2
            if trailer:
                take = min(trailer, len(buffer) - pos)
                pos += take
                trailer -= take
                if trailer:
                    break
            end = buffer.find(b"\r\n", pos)
            if end < 0:
                break
            size_field = bytes(buffer[pos:end]).split(b";", 1)[0].strip()
            try:
                size = int(size_field, 16)
            except ValueError as exc:
                raise StreamBroke(f"bad chunk size {size_field[:20]!r}") from exc
            pos = end + 2
            if size == 0:
                if out:
                    yield bytes(out)
                return
            remaining = size
        del buffer[:pos]
        if out:
            yield bytes(out)


async def _events(pump: SocketPump, chunked: bool) -> AsyncGenerator[tuple[int, dict[str, Any]], None]:
    try:
        buffer = bytearray()
        async for data in _body(pump, chunked):
            buffer += data.replace(b"\r\n", b"\n") if b"\r" in data else data
            start = 0
            count = 0
            while (end := buffer.find(b"\n\n", start)) >= 0:
                parsed = parse_event_block(bytes(buffer[start:end]))
                if parsed is not None:
                    yield parsed
                    count += 1
                    if count % YIELD_EVERY == 0:
                        await asyncio.sleep(0)
                start = end + 2
            del buffer[:start]
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
