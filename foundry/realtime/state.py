"""The realtime gateway's shared state: sockets, subscriptions, topics, host pumps.

`RealtimeGateway` (`foundry.realtime.gateway`) is split by concern: the socket side and the
subscribe/authorize flow stay in the gateway, the per-host stream readers are `HostPumps`
(`foundry.realtime.pumps`) and bringing each subscriber to a topic's state is `SnapshotSync`
(`foundry.realtime.snapshots`). They all work on the same records, defined here, and on one
`GatewayState` handed to each of them explicitly: its settings, every socket and pump of this
process, the counters behind `RealtimeGateway.stats`, the background tasks, and `GatewayState.push`,
the one place a frame is queued onto a socket (so the slow-consumer bound holds for every sender).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from starlette.websockets import WebSocket

from foundry.realtime import frames
from foundry.realtime.topics import TopicRegistry, TopicRoute
from foundry.runtime.client import Runtime
from foundry.runtime.events import Event

log = logging.getLogger(__name__)

#: ``authorize(user_id, topic)``: may this user read this topic?
Authorize = Callable[[str, str], Awaitable[bool]]


class StreamListener(Protocol):
    """Something else of this process fed by the host streams (`RealtimeGateway.watch`), such as
    the session cache. Called synchronously from the pump, in stream order."""

    def stream_live(self, role: str, shard: int) -> None:
        """The stream is registered on the host: every event published from now on will arrive."""

    def stream_lost(self, role: str, shard: int) -> None:
        """The stream broke or stopped: events may be missed until ``stream_live`` again."""

    def stream_reset(self, role: str, shard: int) -> None:
        """The stream stays open but this process fell behind and lost some of its events."""

    def events(self, role: str, shard: int, batch: list[Event]) -> None:
        """A batch of the host's events (every topic)."""


#: Close codes: 1013 "try again later" for a slow consumer, 1001 "going away" at shutdown.
CLOSE_SLOW_CONSUMER = 1013
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL_ERROR = 1011
#: The socket's session ended (signed out): as for a connection without a session.
CLOSE_SIGNED_OUT = 4401
# ------------------------------------------------------------------------------------------ state


class Socket:
    """One accepted websocket: its subscriptions and its bounded outgoing queue."""

    def __init__(self, sid: int, websocket: WebSocket, user_id: str, authorize: Authorize) -> None:
        self.id = sid
        self.websocket = websocket
        self.user_id = user_id
        self.authorize = authorize
        self.subs: dict[str, Sub] = {}
        # A deque + event instead of asyncio.Queue: the fan-out appends to 100s of these per event.
        self.out: deque[str] = deque()
        self.wake = asyncio.Event()
        self.done = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.close_code: int | None = None
        self.close_frame: str | None = None
        self.client_gone = False
        #: Digest of the session the socket was opened with (`foundry.auth` digests), if known:
        #: signing that session out closes the socket.
        self.session_digest: str | None = getattr(websocket.state, "session_digest", None)

    def finish(self, code: int | None = None, frame: str | None = None) -> None:
        """End this socket (once): drop its backlog, remember how to close it, wake `serve`."""
        if self.done.is_set():
            return
        self.close_code = code
        self.close_frame = frame
        self.out.clear()
        self.done.set()
        self.wake.set()


class Sub:
    """One socket's subscription to one topic."""

    def __init__(self, socket: Socket, route: TopicRoute, since: int | None) -> None:
        self.socket = socket
        self.route = route
        self.topic = route.topic
        #: The last seq this socket has for the topic (sent by us, or the client's ``since``).
        self.last_seq: int | None = since
        #: True while a snapshot/replay is due or in flight: live events wait in `pending`.
        self.syncing = True
        self.pending: list[tuple[int, str]] = []
        #: Resend a snapshot even at an unchanged seq (after the host stream was lost).
        self.force = False
        #: No snapshot applied yet: the client's ``since`` is still unverified.
        self.first = True
        self.closed = False
        self.pump: Pump | None = None
        self.state: Topic | None = None
        #: Access checks in flight after `ACCESS_CHANGED_EVENT`: while any, live events wait in
        #: `pending` and no snapshot is sent (`sync_after_hold` asks for one once allowed).
        self.held = 0
        self.sync_after_hold = False
        #: Told (a `waiting` frame) that its topic's owner does not answer; reset by the next snapshot.
        self.told_waiting = False


class Topic:
    """A topic some socket of this process subscribes to, on its host's pump."""

    def __init__(self, route: TopicRoute) -> None:
        self.name = route.topic
        self.route = route
        #: Why this topic's snapshot cannot be read yet (its owner is slow or does not answer), while
        #: that lasts: a subscriber that joins meanwhile is told so at once.
        self.slow: str | None = None
        self.subs: set[Sub] = set()
        #: Subscribers that need a snapshot/replay; served together by one `sync_task`.
        self.waiting: set[Sub] = set()
        self.sync_task: asyncio.Task[None] | None = None
        #: An event of this topic came through the current stream. The stream was registered on
        #: the host before it was published, and seq-gap detection covers what came before: a
        #: snapshot of this topic needs no second reading (`Pump.confirmed`).
        self.heard = False
        #: The last seq a gap was logged at (one line per gap, not one per subscriber).
        self.gap_logged = -1


class Pump:
    """The one event stream of a host (role, shard) in this process."""

    def __init__(self, role: str, shard: int) -> None:
        self.role = role
        self.shard = shard
        self.topics: dict[str, Topic] = {}
        self.task: asyncio.Task[None] | None = None
        #: Bumped at every stream break; callbacks of an older stream are ignored.
        self.generation = 0
        #: The stream has been requested from the host: snapshots may be read now.
        self.attached = False
        #: The host is known to have registered the stream (a batch arrived, or `verify_delay`
        #: passed since it answered a snapshot). Topics snapshotted before that and not `heard`
        #: since are read again (see `foundry.realtime.snapshots`).
        self.confirmed = False
        self.unverified: set[str] = set()
        self.verify_task: asyncio.Task[None] | None = None
        self.streams_opened = 0
        self.stopped = False
        #: Watchers of every event of this host (`RealtimeGateway.watch`); they keep the pump open.
        self.listeners: list[StreamListener] = []
        #: The stream's heartbeats (empty batches of an idle host in another process): seen on this
        #: stream, when it last delivered anything, and whether its subscribers were told it is silent.
        self.beats = False
        self.heard_at = 0.0
        self.silent = False
        self.silence_task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return f"{self.role}/{self.shard}"


# ------------------------------------------------------------------------------------------ shared


class GatewayState:
    """Everything the gateway's parts share (see `RealtimeGateway` for the settings).

    Args:
        runtime: the actor runtime.
        registry: maps topics to their owner actor.
        queue_limit, max_subscriptions, max_replay_events, verify_delay, close_timeout, backoff:
            as for `RealtimeGateway`.
    """

    def __init__(
        self,
        runtime: Runtime,
        registry: TopicRegistry,
        *,
        queue_limit: int,
        max_subscriptions: int,
        max_replay_events: int,
        verify_delay: float,
        close_timeout: float,
        backoff: tuple[float, float],
    ) -> None:
        self.runtime = runtime
        self.registry = registry
        self.queue_limit = queue_limit
        # Snapshots, replays and control frames are bounded by what causes them, not by the
        # client's reading speed; they may exceed the live limit by one replay, never more.
        self.hard_limit = queue_limit + max_replay_events + max_subscriptions
        self.max_subscriptions = max_subscriptions
        self.max_replay = max_replay_events
        self.verify_delay = verify_delay
        self.close_timeout = close_timeout
        self.backoff = backoff
        self.pumps: dict[tuple[str, int], Pump] = {}
        self.sockets: dict[int, Socket] = {}
        self.background: set[asyncio.Task[Any]] = set()
        self.counters = {
            "streams_opened": 0,
            "stream_breaks": 0,
            "snapshot_calls": 0,
            "gaps": 0,
            "slow_consumers": 0,
        }

    def push(self, sock: Socket, text: str, *, live: bool) -> None:
        """Queue a frame for ``sock``; a socket over its limit is closed as a slow consumer."""
        if sock.done.is_set():
            return
        if len(sock.out) >= (self.queue_limit if live else self.hard_limit):
            self.counters["slow_consumers"] += 1
            log.warning(
                "realtime: socket %d (user %s) has %d frames waiting; closing it as a slow consumer",
                sock.id,
                sock.user_id,
                len(sock.out),
            )
            sock.finish(
                CLOSE_SLOW_CONSUMER,
                frames.error(
                    "slow_consumer",
                    f"this connection fell more than {self.queue_limit} events behind and was closed; "
                    "reconnect and subscribe with since=<last seq> to resume",
                ),
            )
            return
        sock.out.append(text)
        sock.wake.set()

    # ----------------------------------------------------------------------------- tasks

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run ``coro`` as a background task of the gateway (awaited at `RealtimeGateway.close`)."""
        task = asyncio.create_task(coro, name=name)
        self.background.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("realtime: task %s crashed", task.get_name(), exc_info=task.exception())

    @staticmethod
    def cancel(task: asyncio.Task[Any] | None) -> None:
        """Cancel ``task`` unless it is None, done, or the task calling this."""
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
