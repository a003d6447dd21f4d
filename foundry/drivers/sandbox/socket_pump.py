"""Receive a response in a thread of its own, so that a busy event loop never stops the reading.

sandbox-agent drops the events of a subscriber whose socket does not take them in time and keeps only
its last 1,024 for a re-read. A host's event loop also runs every other instance's work (hundreds of
awake tasks, a long query, a burst of requests); a reader on that loop stopped reading whenever the
loop was busy for half a second, and a fast agent's events were lost for good. `SocketPump` keeps
taking the bytes off the socket in a thread (a blocking `recv` does not hold the GIL) into memory, up
to `MAX_BUFFERED` bytes, and the loop takes them from there when it can.

Between two `recv` calls the thread needs the GIL, which a busy loop thread hands over only every
``sys.getswitchinterval()`` (5 ms by default, longer inside a long C call): measured with three
10,000-event floods beside a thread busy with Python work, a reader lost events in 2 of 9 floods at
5 ms and in none of 9 at 1 ms (a reader outside Python, curl, lost none even beside five CPU
burners). A process that reads event streams therefore switches every `GIL_SWITCH_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)

#: The GIL switch interval of a process that reads event streams (see the module doc).
GIL_SWITCH_S = 0.001

#: Bytes asked for per `recv`: many events arrive per call when the agent is fast.
RECV_SIZE = 1 << 18
#: Bytes held for a consumer that is behind before the pump stops reading (and sandbox-agent's own
#: buffer, then its gap reports, take over): about 200,000 events of an agent streaming tokens.
MAX_BUFFERED = 64 << 20
#: Longest response head accepted.
MAX_HEAD = 64 * 1024


class PumpBroke(Exception):
    """The connection failed, or ended before the response head (or a framed body) was complete."""


class _Ended(Exception):
    """The server ended the body."""


class _Closed(Exception):
    """This side closed the exchange."""


class Receiver(Protocol):
    """Turns the body's bytes into items, in the pump's thread (e.g. de-chunked event blocks)."""

    #: The body's framing says it is complete (a chunked body's last chunk arrived).
    finished: bool
    #: The body has a framing whose end must arrive before the connection closes.
    framed: bool

    def feed(self, data: bytes) -> list[Any]: ...

    def resume(self) -> bytes | None:
        """The request that goes on where the ended body stopped, or None (the exchange ends)."""
        ...

    def restart(self, headers: dict[str, str]) -> None:
        """A new body (the answer to `resume`'s request) follows, with these headers."""
        ...


class RawBody:
    """The body's bytes as they arrive."""

    finished = False
    framed = False

    def feed(self, data: bytes) -> list[Any]:
        return [data]

    def resume(self) -> bytes | None:
        return None

    def restart(self, headers: dict[str, str]) -> None:
        raise AssertionError("a raw body is never resumed")


#: ``receiver_for(status, headers)``: how the thread turns this response's body into items.
ReceiverFor = Callable[[int, dict[str, str]], Receiver]


class SocketPump:
    """One HTTP/1.1 exchange on its own connection: `open` sends the request and returns the response
    head; `read_items` then returns what the thread made of the body as it arrives (its bytes, by
    default; ``[]`` at the end); `close` ends it."""

    def __init__(self, receiver_for: ReceiverFor | None = None) -> None:
        if sys.getswitchinterval() > GIL_SWITCH_S:
            sys.setswitchinterval(GIL_SWITCH_S)
        self._loop = asyncio.get_running_loop()
        self._receiver_for = receiver_for or (lambda status, headers: RawBody())
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._chunks: deque[Any] = deque()
        self._buffered = 0
        self._ended = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._sock: socket.socket | None = None
        self._closed = False

    async def open(
        self, host: str, port: int, tls: bool, request: bytes, timeout: float
    ) -> tuple[int, dict[str, str]]:
        """Connect, send ``request`` and return ``(status, headers)``; the body is then being read."""
        head: asyncio.Future[tuple[int, dict[str, str]]] = self._loop.create_future()
        args = (host, port, tls, request, timeout, head)
        thread = threading.Thread(target=self._run, args=args, name=f"sse {host}:{port}", daemon=True)
        thread.start()
        try:
            return await head
        except BaseException:
            self.close()
            raise

    async def read(self) -> bytes:
        """The raw body's bytes received since the last read (waits for more); ``b""`` at the end."""
        return b"".join(await self.read_items())

    async def read_items(self) -> list[Any]:
        """The items received since the last read (waits for some); ``[]`` once the body ended."""
        while True:
            with self._lock:
                if self._chunks:
                    items = list(self._chunks)
                    self._chunks.clear()
                    self._buffered = 0
                    self._room.notify()
                    return items
                if self._error is not None:
                    raise PumpBroke(str(self._error) or type(self._error).__name__) from self._error
                if self._ended:
                    return []
                waiter = self._waiter = self._loop.create_future()
            await waiter

    def close(self) -> None:
        """End the exchange: the thread stops and the connection closes (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            sock = self._sock
            self._room.notify()
        if sock is not None:
            # Wakes a `recv` in progress; the thread closes the socket once it is out of it. An
            # OSError means it is disconnected already: the `recv` has returned or will at once.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    # ------------------------------------------------------------------------------------ the thread

    def _run(
        self,
        host: str,
        port: int,
        tls: bool,
        request: bytes,
        timeout: float,
        head: asyncio.Future[tuple[int, dict[str, str]]],
    ) -> None:
        try:
            sock, status, headers, rest = self._connect(host, port, tls, request, timeout)
        except BaseException as exc:  # handed to the awaiting coroutine, which raises it
            self._call_loop(_settle, head, None, exc)
            return
        receiver = self._receiver_for(status, headers)
        self._call_loop(_settle, head, (status, headers), None)
        end: BaseException | None = None
        while True:
            try:
                end = self._body(sock, receiver, rest)
            finally:
                sock.close()
            if end is None or isinstance(end, _Closed):
                break
            # The server ended the body: a receiver that can go on where it stopped (an event stream
            # the server ended because it fell behind) is given a new connection at once.
            again = receiver.resume() if self._resumable(status) else None
            if again is None:
                break
            try:
                sock, status, headers, rest = self._connect(host, port, tls, again, timeout)
            except (OSError, PumpBroke) as exc:
                log.info("could not resume the stream from %s:%d: %r", host, port, exc)
                end = _Ended()  # as the server ended it: the consumer decides what follows
                break
            if status != 200:
                sock.close()
                log.info("resuming the stream from %s:%d answered %d", host, port, status)
                break
            receiver.restart(headers)
            end = None
        with self._lock:
            if end is not None and not isinstance(end, (_Closed, _Ended)) and not self._closed:
                self._error = end
            self._ended = True
            self._wake()

    def _resumable(self, status: int) -> bool:
        return status == 200 and not self._closed

    def _connect(
        self, host: str, port: int, tls: bool, request: bytes, timeout: float
    ) -> tuple[socket.socket, int, dict[str, str], bytes]:
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            if tls:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            with self._lock:
                if self._closed:
                    raise PumpBroke("closed while connecting")
                self._sock = sock
            sock.sendall(request)
            status, headers, rest = _read_head(sock)
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        return sock, status, headers, rest

    def _body(self, sock: socket.socket, receiver: Receiver, rest: bytes) -> BaseException | None:
        """Receive one response body; how it ended (`_Ended`, `_Closed` by us, or the error)."""
        if rest and (end := self._take(receiver, rest)) is not None:
            return end
        while True:
            with self._lock:
                while self._buffered >= MAX_BUFFERED and not self._closed:
                    self._room.wait()
                if self._closed:
                    return _Closed()
            try:
                data = sock.recv(RECV_SIZE)
            except OSError as exc:
                return _Closed() if self._closed else exc
            if not data:
                if receiver.framed and not receiver.finished:
                    return PumpBroke("connection closed in the middle of the stream")
                return _Ended()
            if (end := self._take(receiver, data)) is not None:
                return end

    def _take(self, receiver: Receiver, data: bytes) -> BaseException | None:
        """Hand ``data`` to the consumer through ``receiver``; how the body ended, once it has."""
        try:
            items = receiver.feed(data)
        except Exception as exc:  # the body is not what it claims (a bad chunk size, say)
            return exc
        with self._lock:
            self._chunks.extend(items)
            self._buffered += len(data)
            self._wake()
        return _Ended() if receiver.finished else None

    def _wake(self) -> None:
        # Called with the lock held: one loop wake-up per wait, however many reads arrive meanwhile.
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._call_loop(_settle, waiter, None, None)

    def _call_loop(self, *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(*args)
        except RuntimeError:
            # The loop is closed (its process is stopping): nobody is left to read the stream.
            log.info("event loop closed under an open event stream; the stream ends")
            self.close()


def _settle(future: asyncio.Future[object], result: object, error: BaseException | None) -> None:
    if future.done():
        return  # its awaiting coroutine was cancelled
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """``(status, headers, bytes of the body already received)``."""
    received = b""
    while (end := received.find(b"\r\n\r\n")) < 0:
        if len(received) > MAX_HEAD:
            raise PumpBroke("the response head is over 64 KB")
        data = sock.recv(RECV_SIZE)
        if not data:
            raise PumpBroke("connection closed in the response headers")
        received += data
    lines = received[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise PumpBroke(f"bad HTTP status line {lines[0][:100]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers, received[end + 4 :]
