"""Follow one ACP server's event stream without losing, repeating or silently skipping events.

sandbox-agent numbers the events of each ACP server 1, 2, 3… and replays the ones after
``Last-Event-ID`` (from a buffer of its last 1,024 events). A reader that falls behind can still miss
ids — sandbox-agent drops events for a lagging subscriber — so `AcpEventFeed`:

* reads the SSE stream in its own task into an unbounded queue, so the reader never waits on whoever
  consumes the events (a database, say) and never lags because of it;
* checks every id against the last one delivered: replays of ids already delivered are skipped; a
  jump is repaired by re-reading the missing range on a second stream opened with ``Last-Event-ID``
  (the server replays it if it still has it) while the first one is kept, and what is truly gone is
  delivered as `EventsLost`, so the consumer can say so;
* reopens a stream that broke while sandbox-agent is healthy, or that sandbox-agent ended while the
  ACP server still exists (it ends the stream of a subscriber that fell too far behind), and delivers
  `FeedEnded` when the stream ends for good (the ACP server was closed, or sandbox-agent is gone).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from foundry.errors import FoundryError

if TYPE_CHECKING:
    from foundry.drivers.sandbox.acp import AcpConnection

__all__ = ["AcpEvent", "AcpEventFeed", "EventsLost", "FeedEnded", "FeedItem"]

log = logging.getLogger(__name__)

#: How often a broken stream of a healthy sandbox-agent is reopened before the feed gives up.
MAX_RECONNECTS = 3
#: Longest wait for sandbox-agent to replay a skipped range (it answers from memory at once).
GAP_REREAD_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class AcpEvent:
    """One event of the stream: its sandbox-agent id and the JSON-RPC envelope."""

    id: int
    envelope: dict[str, Any]


@dataclass(frozen=True, slots=True)
class EventsLost:
    """Ids ``first``..``last`` (inclusive) were skipped by sandbox-agent and could not be re-read."""

    first: int
    last: int


@dataclass(frozen=True, slots=True)
class FeedEnded:
    """The stream ended for good: ``error`` is None when the server closed it (ACP server closed)."""

    error: FoundryError | None = None


FeedItem = AcpEvent | EventsLost | FeedEnded


class AcpEventFeed:
    """Follows an ACP server's events after ``after`` (None: from its first event) into `queue`.

    Items arrive in id order, each id at most once, with `EventsLost` in place of missing ids and one
    `FeedEnded` last. Call `start` once and `aclose` when done (idempotent).
    """

    def __init__(
        self, acp: AcpConnection, after: int | None, *, max_reconnects: int = MAX_RECONNECTS
    ) -> None:
        self.acp = acp
        self.queue: asyncio.Queue[FeedItem] = asyncio.Queue()
        #: The last id put in the queue (or given as ``after``).
        self.last_id = after
        #: Items delivered so far; the consumer's progress watchdog compares it over time.
        self.delivered = 0
        self._max_reconnects = max_reconnects
        self._task: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._resync_requested = False
        self._opened = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"acp-feed:{self.acp.server_id}")

    async def wait_open(self, timeout: float) -> bool:
        """Wait until the first stream is open (or the feed ended); False when ``timeout`` passed.

        A turn sends its prompt after this: a stream that connects only once the agent has produced
        more than sandbox-agent keeps (1,024 events) could no longer read the turn's first events.
        """
        if self._task is None:
            raise RuntimeError("wait_open before start")
        opened = asyncio.ensure_future(self._opened.wait())
        try:
            await asyncio.wait({opened, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            opened.cancel()
        return self._opened.is_set() or self._task.done()

    def resync(self) -> None:
        """Reopen the stream after the last delivered id (the consumer suspects it stalled)."""
        reader = self._reader
        if reader is not None and not reader.done():
            self._resync_requested = True
            reader.cancel()

    @property
    def ended(self) -> bool:
        return self._task is not None and self._task.done()

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        if not task.done():
            task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if (current := asyncio.current_task()) is not None and current.cancelling():
                raise
        except Exception:
            log.exception("event feed of %s failed", self.acp.server_id)

    async def _run(self) -> None:
        reconnects = 0
        while True:
            delivered_before = self.delivered
            self._reader = asyncio.create_task(self._follow())
            try:
                await self._reader
                # sandbox-agent also ends the stream of a subscriber that fell too far behind: only a
                # closed ACP server ends the feed; otherwise resume after the last id (what is gone by
                # then is reported by the gap check).
                progressed = self.delivered > delivered_before
                if (progressed or reconnects < self._max_reconnects) and await self._server_listed():
                    reconnects = 0 if progressed else reconnects + 1
                    log.warning(
                        "event stream of %s ended while the server runs; resuming after event %s",
                        self.acp.server_id,
                        self.last_id,
                    )
                    continue
                self.queue.put_nowait(FeedEnded(None))
                return
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if self._resync_requested and (current is None or not current.cancelling()):
                    # Our own `resync` cancelled the read, not someone cancelling the feed.
                    self._resync_requested = False
                    log.info("event feed of %s resyncing after event %s", self.acp.server_id, self.last_id)
                    continue
                self._reader.cancel()
                raise
            except FoundryError as exc:
                if self.delivered > delivered_before:
                    reconnects = 0  # it made progress: count failures in a row only
                if reconnects >= self._max_reconnects or not await self._server_alive():
                    self.queue.put_nowait(FeedEnded(exc))
                    return
                reconnects += 1
                log.warning(
                    "event stream of %s broke (%s); resuming after event %s",
                    self.acp.server_id,
                    exc,
                    self.last_id,
                )
                await asyncio.sleep(0.1 * reconnects)

    async def _follow(self) -> None:
        stream = cast(
            "AsyncGenerator[tuple[int, dict[str, Any]], None]",
            self.acp.events(self.last_id, on_open=self._opened.set),
        )
        try:
            async for event_id, envelope in stream:
                expected = (self.last_id or 0) + 1
                if event_id < expected:
                    continue  # replayed: already delivered
                if event_id > expected:
                    await self._fill_gap(expected, event_id)
                self._deliver(event_id, envelope)
        finally:
            await stream.aclose()

    def _deliver(self, event_id: int, envelope: dict[str, Any]) -> None:
        self.last_id = event_id
        self.delivered += 1
        self.queue.put_nowait(AcpEvent(event_id, envelope))

    async def _fill_gap(self, first: int, beyond: int) -> None:
        """Ids ``first``..``beyond - 1`` were skipped: re-read them on a second stream, delivering what
        sandbox-agent still has and `EventsLost` for the rest, then go on with the stream being read.

        The stream being read is kept: it already holds everything from ``beyond`` on, while a new
        stream would replay only sandbox-agent's last 1,024 events, which no longer reach back to
        ``beyond`` when the reader saw the gap late.
        """
        log.warning(
            "event stream of %s skipped from %d to %d; re-reading the range",
            self.acp.server_id,
            first,
            beyond,
        )
        found: dict[int, dict[str, Any]] = {}
        try:
            async with asyncio.timeout(GAP_REREAD_TIMEOUT_S):
                replay = cast("AsyncGenerator[tuple[int, dict[str, Any]], None]", self.acp.events(first - 1))
                try:
                    async for event_id, envelope in replay:
                        if event_id >= beyond:
                            break
                        if event_id >= first:
                            found[event_id] = envelope
                finally:
                    await replay.aclose()
        except (TimeoutError, FoundryError) as exc:
            log.warning(
                "could not re-read events %d..%d of %s: %s", first, beyond - 1, self.acp.server_id, exc
            )
        for event_id in sorted(found):
            if event_id > (self.last_id or 0) + 1:
                self._lost((self.last_id or 0) + 1, event_id - 1)
            self._deliver(event_id, found[event_id])
        if (self.last_id or 0) + 1 < beyond:
            self._lost((self.last_id or 0) + 1, beyond - 1)

    def _lost(self, first: int, last: int) -> None:
        # Re-read and still missing: sandbox-agent no longer has them.
        log.error("events %d..%d of %s are lost", first, last, self.acp.server_id)
        self.queue.put_nowait(EventsLost(first, last))
        self.last_id = last

    async def _server_listed(self) -> bool:
        try:
            servers = await self.acp.client.list_acp_servers()
        except FoundryError as exc:
            log.info("could not list the ACP servers of %s: %s", self.acp.server_id, exc)
            return False
        return any(server.get("serverId") == self.acp.server_id for server in servers)

    async def _server_alive(self) -> bool:
        try:
            await self.acp.client.health()
        except FoundryError as exc:
            log.info("sandbox-agent of %s is not healthy: %s", self.acp.server_id, exc)
            return False
        return True
