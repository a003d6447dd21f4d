"""Events published by instances and the per-host fan-out to subscribers."""

from __future__ import annotations

import asyncio
import logging
import pickle
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from foundry.errors import ActorUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """One published event. ``seq`` is monotonic per topic, stamped by the owning instance."""

    topic: str
    event: str
    seq: int
    data: Any

    def as_frame(self) -> dict[str, Any]:
        return {"topic": self.topic, "event": self.event, "seq": self.seq, "data": self.data}


def encode_batch(events: list[Event]) -> bytes:
    """A batch as one message for another process: plain tuples pickled once, because a stream of
    transcript events carries thousands of events a second and pickling each `Event` object (by the
    generic path of an inter-process transport) cost more than the rest of its trip."""
    return pickle.dumps([(e.topic, e.event, e.seq, e.data) for e in events], protocol=pickle.HIGHEST_PROTOCOL)


def decode_batch(message: bytes) -> list[Event]:
    """The batch that `encode_batch` sent."""
    return [Event(topic, event, seq, data) for topic, event, seq, data in pickle.loads(message)]


#: Queued to every subscriber when the hub closes.
_CLOSED: list[Event] = []

#: Published in place of events when a subscriber fell too far behind and lost some: the consumer
#: must re-read snapshots (the realtime gateway does this) instead of trusting its stream.
OVERFLOW_TOPIC = "$overflow"


class EventHub:
    """Fans a host's events out to its subscribers through bounded queues.

    A subscriber that stops reading is not allowed to grow memory: when its queue is full it gets an
    overflow marker and its backlog is dropped.
    """

    def __init__(self, max_queued: int = 10_000) -> None:
        self._subscribers: set[asyncio.Queue[list[Event]]] = set()
        self._max_queued = max_queued
        self._closed = False

    def close(self) -> None:
        """The host is going away: every subscription ends with `ActorUnavailable`, as a Ray stream
        of a dead host does, so subscribers reconnect to its successor instead of waiting forever."""
        self._closed = True
        for queue in list(self._subscribers):
            queue.put_nowait(_CLOSED)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def publish(self, events: list[Event]) -> None:
        if not events:
            return
        for queue in list(self._subscribers):
            if queue.qsize() >= self._max_queued:
                log.warning("event subscriber fell behind; dropping %d queued batches", queue.qsize())
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait([Event(OVERFLOW_TOPIC, "overflow", 0, None)])
                continue
            queue.put_nowait(list(events))

    async def subscribe(self, heartbeat_s: float | None = None) -> AsyncIterator[list[Event]]:
        """Yield batches of events in publication order, coalescing whatever queued up meanwhile.

        With ``heartbeat_s``, an empty batch is yielded after that long without events: a reader in
        another process can then tell a quiet host from one that stopped answering.
        """
        queue: asyncio.Queue[list[Event]] = asyncio.Queue()
        self._subscribers.add(queue)
        try:
            while True:
                if self._closed:
                    raise ActorUnavailable("the host's event stream closed: the host stopped")
                if heartbeat_s is None:
                    batch = await queue.get()
                else:
                    try:
                        batch = await asyncio.wait_for(queue.get(), heartbeat_s)
                    except TimeoutError:
                        yield []
                        continue
                while not queue.empty() and batch is not _CLOSED:
                    more = queue.get_nowait()
                    if more is _CLOSED:
                        # Deliver what came before the close first; the next round raises.
                        break
                    batch.extend(more)
                if batch is _CLOSED:
                    continue
                yield batch
        finally:
            self._subscribers.discard(queue)
