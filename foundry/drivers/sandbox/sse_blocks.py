"""An event stream's body cut into SSE event blocks in the receiving thread, its skipped ids re-read
at once.

sandbox-agent numbers each ACP server's events 1, 2, 3… and, under load, skips ids for a subscriber
it could not forward to in time; it keeps only its last 1,024 events for a re-read with
``Last-Event-ID``. At agent speed that is a fraction of a second of output, while the event loop
that decodes and records the stream may be that far behind (it holds everything received since):
asked from there, the skipped range was often gone. The thread that receives the stream
(`SocketPump`) sees each id as it arrives, so it asks for a skipped range at once, on a second
connection, and puts what it gets in its place. What it cannot get is left to the consumer
(`AcpEventFeed`), which tries again and reports what is truly gone.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: Longest wait for sandbox-agent to replay a skipped range from memory (it answers at once).
REPAIR_TIMEOUT_S = 2.0
_MESSAGE_LINE = b"event: message\n"


class ChunkDecoder:
    """Removes HTTP/1.1 chunked framing from bytes fed in any pieces."""

    def __init__(self) -> None:
        self.finished = False
        self._buffer = bytearray()
        self._remaining = 0  # bytes left of the current chunk's data
        self._trailer = 0  # bytes left of the CRLF after a chunk's data

    def feed(self, data: bytes) -> bytes:
        """The body's bytes in ``data`` (with what came before), without the framing."""
        buffer = self._buffer
        buffer += data
        out = bytearray()
        pos = 0
        while not self.finished:
            if self._remaining:
                take = min(self._remaining, len(buffer) - pos)
                out += buffer[pos : pos + take]
                pos += take
                self._remaining -= take
                if self._remaining:
                    break
                self._trailer = 2
            if self._trailer:
                take = min(self._trailer, len(buffer) - pos)
                pos += take
                self._trailer -= take
                if self._trailer:
                    break
            end = buffer.find(b"\r\n", pos)
            if end < 0:
                break
            size_field = bytes(buffer[pos:end]).split(b";", 1)[0].strip()
            try:
                size = int(size_field, 16)
            except ValueError as exc:
                raise ValueError(f"bad chunk size {size_field[:20]!r}") from exc
            pos = end + 2
            if size == 0:
                self.finished = True
            self._remaining = size
        del buffer[:pos]
        return bytes(out)


def block_id(block: bytes) -> int | None:
    """The ``id`` of an SSE event block, or None."""
    start = len(_MESSAGE_LINE) if block.startswith(_MESSAGE_LINE) else 0
    if block.startswith(b"id: ", start):
        end = block.find(b"\n", start)
        digits = block[start + 4 : end if end >= 0 else len(block)]
        if digits.isdigit():
            return int(digits)
    for line in block.split(b"\n"):
        name, _, value = line.partition(b":")
        if name == b"id":
            value = value.strip()
            return int(value) if value.isdigit() else None
    return None


#: ``replay(first, beyond)``: the blocks of ids ``first``..``beyond - 1`` the server still has.
Replay = Callable[[int, int], list[bytes]]


#: Streams resumed in a row without a new event before the end is left to the consumer.
MAX_IDLE_RESUMES = 2


class EventBlocks:
    """A `Receiver` for an event stream: its SSE blocks, with skipped ids re-read by ``replay``.

    ``after`` is the id the stream was asked to follow (0 for a stream from the first event, None
    when unknown: the first id seen is then the start).

    sandbox-agent also ends the stream of a subscriber it fell behind for: ``request_after(id)``
    asks for the events after ``id`` on a new connection, which the receiving thread opens at once
    (`resume`), while sandbox-agent still has what followed.
    """

    def __init__(
        self,
        chunked: bool,
        replay: Replay | None,
        name: str,
        request_after: Callable[[int], bytes] | None = None,
        *,
        after: int | None = None,
    ) -> None:
        self.framed = chunked
        self.finished = False
        self._chunks = ChunkDecoder() if chunked else None
        self._replay = replay
        self._name = name
        self._request_after = request_after
        self._text = b""  # the incomplete block at the end of what arrived
        # The id the request asked to follow (0: from the first). Ids the first read skips past it are
        # re-read at once too: a stream that connected late must not take what it saw first as its start.
        self._last_id: int | None = after
        self._id_at_restart: int | None = None
        self._idle_resumes = 0

    def resume(self) -> bytes | None:
        if self._request_after is None or self._last_id is None:
            return None
        progressed = self._last_id != self._id_at_restart
        self._idle_resumes = 0 if progressed else self._idle_resumes + 1
        if self._idle_resumes > MAX_IDLE_RESUMES:
            return None
        log.warning(
            "event stream %s ended by the server; resuming after id %d at once", self._name, self._last_id
        )
        return self._request_after(self._last_id)

    def restart(self, headers: dict[str, str]) -> None:
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self.framed = chunked
        self.finished = False
        self._chunks = ChunkDecoder() if chunked else None
        self._text = b""
        self._id_at_restart = self._last_id

    def feed(self, data: bytes) -> list[Any]:
        if self._chunks is not None:
            data = self._chunks.feed(data)
            self.finished = self._chunks.finished
        text = self._text + (data.replace(b"\r\n", b"\n") if b"\r" in data else data)
        blocks = text.split(b"\n\n")
        self._text = blocks.pop()  # an incomplete block, or b""
        out: list[Any] = []
        for block in blocks:
            event_id = block_id(block)
            if event_id is not None:
                last = self._last_id
                if last is not None and event_id <= last:
                    continue  # a resumed stream's replay of what this one delivered
                if last is not None and event_id > last + 1 and self._replay is not None:
                    out += self._repair(last + 1, event_id)
                if last is None or event_id > last:
                    self._last_id = event_id
            out.append(block)
        return out

    def _repair(self, first: int, beyond: int) -> list[bytes]:
        assert self._replay is not None
        started = time.monotonic()
        found = self._replay(first, beyond)
        log.warning(
            "event stream %s skipped ids %d..%d; re-read %d of them at once (%.0f ms)",
            self._name,
            first,
            beyond - 1,
            len(found),
            (time.monotonic() - started) * 1000,
        )
        return found


def replay_blocks(
    host: str, port: int, tls: bool, request_after: Callable[[int], bytes], first: int, beyond: int
) -> list[bytes]:
    """Ask the server again for ids ``first``..``beyond - 1`` (a new stream from ``first - 1``) and
    return the blocks it still has; blocking, for the receiving thread."""
    found: list[bytes] = []
    deadline = time.monotonic() + REPAIR_TIMEOUT_S
    sock: socket.socket | None = None
    try:
        sock = socket.create_connection((host, port), timeout=REPAIR_TIMEOUT_S)
        if tls:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        sock.sendall(request_after(first - 1))
        received = b""
        while (end := received.find(b"\r\n\r\n")) < 0:
            data = sock.recv(1 << 16)
            if not data:
                return found
            received += data
        head = received[:end].decode("latin-1").lower()
        if not head.startswith("http/1.1 200") and not head.startswith("http/1.0 200"):
            log.info("re-reading ids %d..%d: %s", first, beyond - 1, head.splitlines()[0][:100])
            return found
        blocks = EventBlocks("transfer-encoding: chunked" in head, None, "replay")
        pending = received[end + 4 :]
        while time.monotonic() < deadline:
            for block in blocks.feed(pending):
                event_id = block_id(block)
                if event_id is None or event_id < first:
                    continue
                if event_id >= beyond:
                    return found
                found.append(block)
            if blocks.finished:
                return found
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            pending = sock.recv(1 << 18)
            if not pending:
                return found
    except OSError as exc:  # timeouts included: the consumer tries again and reports what is gone
        log.info("re-reading ids %d..%d failed: %r", first, beyond - 1, exc)
    finally:
        if sock is not None:
            sock.close()
    return found
