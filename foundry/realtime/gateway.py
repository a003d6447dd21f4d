"""The realtime gateway: actor events to browser websockets.

One process-wide *pump* per host (role, shard) holds the only event stream of that host
(`Runtime.subscribe`) and fans its events out by topic to per-socket bounded queues. A websocket
never has a stream of its own: with one Ray streaming generator per websocket p50 was 95 ms at 100
clients, against 1.2-2.3 ms for one shared generator.

The frames (JSON text) are defined in `foundry.realtime.frames`: a client subscribes to topics,
unsubscribes and pings; the server answers with control frames (``subscribed``, ``unsubscribed``,
``pong``, ``error``) and sends each topic's events ``{"topic", "event", "seq", "data"}``, a
``snapshot`` event carrying full state.

Per topic and socket the gateway guarantees: no gaps, no event twice, never an older seq after a
newer one. Event frames carry strictly increasing seqs; a ``snapshot`` frame carries a seq at least
the last one sent (equal only in the fresh snapshot after a lost host stream, see below), and the
events it contains are not sent again. The gateway relies on the runtime's seqs being contiguous per
topic (each publish adds exactly 1): a missing seq is *detected* and healed with a fresh snapshot
(or a replay) instead of being passed on. ``since`` on a full-state topic skips the snapshot when the
client already holds that seq.

Subscribing: the subscription is registered on the host's pump first (its live events buffer), then
the owner's ``snapshot`` action is called with ``{"topic", "since"}``. It answers either
``{"seq", "data"}`` (a full snapshot at ``seq``; sent as a ``"snapshot"`` event when ``seq`` is
newer than what the client holds) or ``{"seq", "events": [{"event", "seq", "data"}...]}`` (an
append-only log after ``since``; sent as the events themselves, paged until caught up). Buffered live
events then flow with ``seq`` greater than the last one sent. A repeated subscribe to a topic the
socket already has is acknowledged and changes nothing (unsubscribe first to re-read).

Host failures: when a host stream breaks (`ActorUnavailable`, the host restarting) the pump reconnects
with backoff and every subscriber of that host gets a fresh snapshot (even at an unchanged seq: it
tells the client it is live again) or the replay of what it missed. The runtime's overflow marker
(this process fell behind on the host) triggers the same resync on the stream that is still open.

Why a snapshot is sometimes read twice: `Runtime.subscribe` cannot say when the host has actually
registered a new stream (a Ray actor call is merely *submitted*), and an event published between
the snapshot read and that registration would be lost without a trace if it were the topic's last.
So snapshots read on a stream that is not yet *confirmed* are read once more when it is: when its
first batch arrives, or ``verify_delay`` after the host answered (an idle host). A topic that has
had an event through the stream needs no second reading: gap detection covers it.

Access changes: subscriptions are authorized at subscribe. When who may read a topic changes (an
admin demoted on ``billing:<org>``), its owner publishes `ACCESS_CHANGED_EVENT`; every subscriber is
then held (events buffered, no snapshot) until ``authorize`` answers again, and one refused now gets
an error frame ``forbidden`` ending the subscription, before anything published after the change.

Listeners: other parts of this process may read every event of a role's hosts through the same
streams (`RealtimeGateway.watch`, e.g. the session and membership cache); they are told when a stream
becomes live (registered on its host), breaks, or lost events, and keep its pump open.

Slow clients: a socket with more than ``queue_limit`` live frames waiting is sent an error frame
``slow_consumer`` and closed with code 1013 (try again later); its backlog is dropped. Memory per
socket is bounded by that limit plus one replay.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from foundry.errors import ActorUnavailable, CommandFailed, FoundryError
from foundry.realtime import frames
from foundry.realtime.frames import ClientFrameError, Ping, Subscribe, event_frame
from foundry.realtime.topics import InvalidTopic, TopicRegistry, TopicRoute
from foundry.runtime.client import Runtime
from foundry.runtime.events import OVERFLOW_TOPIC, Event

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


#: The owner action every topic's actor exposes.
SNAPSHOT_ACTION = "snapshot"
#: An event an owner publishes when who may read its topic changed (an admin demoted, a member
#: removed): every subscriber's access is checked again before it gets anything newer, and those
#: refused now get an error frame ``forbidden`` that ends the subscription.
ACCESS_CHANGED_EVENT = "accessChanged"
#: Close codes: 1013 "try again later" for a slow consumer, 1001 "going away" at shutdown.
CLOSE_SLOW_CONSUMER = 1013
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL_ERROR = 1011
# ------------------------------------------------------------------------------------------ state


class _Socket:
    """One accepted websocket: its subscriptions and its bounded outgoing queue."""

    def __init__(self, sid: int, websocket: WebSocket, user_id: str, authorize: Authorize) -> None:
        self.id = sid
        self.websocket = websocket
        self.user_id = user_id
        self.authorize = authorize
        self.subs: dict[str, _Sub] = {}
        # A deque + event instead of asyncio.Queue: the fan-out appends to 100s of these per event.
        self.out: deque[str] = deque()
        self.wake = asyncio.Event()
        self.done = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.close_code: int | None = None
        self.close_frame: str | None = None
        self.client_gone = False

    def finish(self, code: int | None = None, frame: str | None = None) -> None:
        """End this socket (once): drop its backlog, remember how to close it, wake `serve`."""
        if self.done.is_set():
            return
        self.close_code = code
        self.close_frame = frame
        self.out.clear()
        self.done.set()
        self.wake.set()


class _Sub:
    """One socket's subscription to one topic."""

    def __init__(self, socket: _Socket, route: TopicRoute, since: int | None) -> None:
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
        self.pump: _Pump | None = None
        self.state: _Topic | None = None
        #: Access checks in flight after `ACCESS_CHANGED_EVENT`: while any, live events wait in
        #: `pending` and no snapshot is sent (`sync_after_hold` asks for one once allowed).
        self.held = 0
        self.sync_after_hold = False


class _Topic:
    """A topic some socket of this process subscribes to, on its host's pump."""

    def __init__(self, route: TopicRoute) -> None:
        self.name = route.topic
        self.route = route
        self.subs: set[_Sub] = set()
        #: Subscribers that need a snapshot/replay; served together by one `sync_task`.
        self.waiting: set[_Sub] = set()
        self.sync_task: asyncio.Task[None] | None = None
        #: An event of this topic came through the current stream. The stream was registered on
        #: the host before it was published, and seq-gap detection covers what came before: a
        #: snapshot of this topic needs no second reading (`_Pump.confirmed`).
        self.heard = False
        #: The last seq a gap was logged at (one line per gap, not one per subscriber).
        self.gap_logged = -1


class _Pump:
    """The one event stream of a host (role, shard) in this process."""

    def __init__(self, role: str, shard: int) -> None:
        self.role = role
        self.shard = shard
        self.topics: dict[str, _Topic] = {}
        self.task: asyncio.Task[None] | None = None
        #: Bumped at every stream break; callbacks of an older stream are ignored.
        self.generation = 0
        #: The stream has been requested from the host: snapshots may be read now.
        self.attached = False
        #: The host is known to have registered the stream (a batch arrived, or `verify_delay`
        #: passed since it answered a snapshot). Topics snapshotted before that and not `heard`
        #: since are read again (see the module docstring).
        self.confirmed = False
        self.unverified: set[str] = set()
        self.verify_task: asyncio.Task[None] | None = None
        self.streams_opened = 0
        self.stopped = False
        #: Watchers of every event of this host (`RealtimeGateway.watch`); they keep the pump open.
        self.listeners: list[StreamListener] = []

    @property
    def name(self) -> str:
        return f"{self.role}/{self.shard}"


@dataclass
class _Snapshot:
    """A normalized answer of a ``snapshot`` action."""

    seq: int
    #: The snapshot frame (full-state topics), or None for a replay.
    frame: str | None
    #: Replayed events as (seq, frame), for log topics.
    events: list[tuple[int, str]]
    #: The replay reached the topic's seq (False when capped at ``max_replay_events``).
    complete: bool = True


# ------------------------------------------------------------------------------------------ gateway


class RealtimeGateway:
    """Streams actor events to websockets: one host stream per (role, shard), local fan-out.

    Args:
        runtime: the actor runtime (its `Runtime.subscribe` streams and ``snapshot`` actions).
        registry: maps topics to their owner actor.
        queue_limit: live frames a socket may have waiting before it is closed as a slow consumer.
        max_subscriptions: topics one socket may hold at once.
        max_replay_events: events one resync replays at most (more are replayed in later rounds).
        verify_delay: seconds after which an idle new host stream is assumed registered on its host
            (see `_Pump.confirmed`); snapshots read before then are read once more.
        close_timeout: seconds to wait for a slow client to take its close frame.
        backoff: (first, max) seconds between reconnects of a broken host stream.
    """

    def __init__(
        self,
        runtime: Runtime,
        registry: TopicRegistry,
        *,
        queue_limit: int = 1000,
        max_subscriptions: int = 200,
        max_replay_events: int = 5000,
        verify_delay: float = 0.5,
        close_timeout: float = 5.0,
        backoff: tuple[float, float] = (0.05, 2.0),
    ) -> None:
        if queue_limit < 1 or max_subscriptions < 1 or max_replay_events < 1:
            raise ValueError("queue_limit, max_subscriptions and max_replay_events must be positive")
        self._runtime = runtime
        self._registry = registry
        self._queue_limit = queue_limit
        # Snapshots, replays and control frames are bounded by what causes them, not by the
        # client's reading speed; they may exceed the live limit by one replay, never more.
        self._hard_limit = queue_limit + max_replay_events + max_subscriptions
        self._max_subscriptions = max_subscriptions
        self._max_replay = max_replay_events
        self._verify_delay = verify_delay
        self._close_timeout = close_timeout
        self._backoff = backoff
        self._pumps: dict[tuple[str, int], _Pump] = {}
        self._sockets: dict[int, _Socket] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._ids = itertools.count(1)
        self._started = False
        self._closed = False
        self._counters = {
            "streams_opened": 0,
            "stream_breaks": 0,
            "snapshot_calls": 0,
            "gaps": 0,
            "slow_consumers": 0,
        }

    # ----------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Make the gateway accept sockets. Host streams start lazily with their first topic."""
        self._started = True
        self._closed = False

    async def close(self) -> None:
        """Close every socket (code 1001) and stop every host stream."""
        self._closed = True
        for sock in list(self._sockets.values()):
            sock.finish(CLOSE_GOING_AWAY, frames.error("going_away", "the server is shutting down"))
        for pump in list(self._pumps.values()):
            self._stop_pump(pump)
        pending = [t for t in self._background if not t.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=self._close_timeout + 1)
            if still:
                log.warning("realtime: %d gateway tasks still running after close", len(still))

    def stats(self) -> dict[str, Any]:
        """Counters for tests, ``/readyz`` and benchmarks.

        ``hosts`` has one entry per host stream this process holds (``"<role>/<shard>"``), which is
        how tests prove there is exactly one stream per host whatever the number of sockets.
        """
        return {
            "sockets": len(self._sockets),
            "subscriptions": sum(len(s.subs) for s in self._sockets.values()),
            "hosts": {
                pump.name: {
                    "topics": len(pump.topics),
                    "subscribers": sum(len(t.subs) for t in pump.topics.values()),
                    "attached": pump.attached,
                    "confirmed": pump.confirmed,
                    "syncing": sum(1 for t in pump.topics.values() if t.waiting or t.sync_task is not None),
                    "streams_opened": pump.streams_opened,
                }
                for pump in self._pumps.values()
            },
            **self._counters,
        }

    def watch(self, role: str, listener: StreamListener) -> None:
        """Feed ``listener`` every event of every host of ``role`` through this process's one
        stream per host (opened now and kept open while the gateway runs)."""
        for shard in range(self._runtime.shards(role)):
            pump = self._pump(role, shard)
            pump.listeners.append(listener)
            if pump.confirmed:
                listener.stream_live(role, shard)
            elif pump.attached and pump.verify_task is None:
                pump.verify_task = self._spawn(
                    self._verify_answered(pump, pump.generation), f"realtime-verify:{pump.name}"
                )

    # ----------------------------------------------------------------------------- sockets

    async def serve(self, websocket: WebSocket, user_id: str, authorize: Authorize) -> None:
        """Run one accepted websocket until the client leaves, it overflows or the gateway closes.

        Args:
            websocket: an accepted websocket.
            user_id: the signed-in user (from the endpoint's authentication).
            authorize: ``authorize(user_id, topic)`` is awaited on every subscribe; False refuses
                the topic with an error frame ``forbidden``.
        """
        if not self._started or self._closed:
            await self._close_quietly(
                websocket,
                CLOSE_GOING_AWAY,
                frames.error("unavailable", "the realtime gateway is not running"),
            )
            return
        sock = _Socket(next(self._ids), websocket, user_id, authorize)
        self._sockets[sock.id] = sock
        receiver = self._spawn(self._receive_loop(sock), f"realtime-recv:{sock.id}")
        sender = self._spawn(self._send_loop(sock), f"realtime-send:{sock.id}")
        try:
            await sock.done.wait()
        finally:
            for sub in list(sock.subs.values()):
                self._detach(sub)
            sock.subs.clear()
            tasks = [receiver, sender, *sock.tasks]
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            self._sockets.pop(sock.id, None)
            if not sock.client_gone:
                await self._close_quietly(websocket, sock.close_code or 1000, sock.close_frame)

    async def _close_quietly(self, websocket: WebSocket, code: int, frame: str | None) -> None:
        # A slow client may never make room for the close frame: bounded waits, then uvicorn
        # drops the connection when `serve` returns.
        try:
            if frame is not None:
                await asyncio.wait_for(websocket.send_text(frame), self._close_timeout)
            await asyncio.wait_for(websocket.close(code), self._close_timeout)
        except TimeoutError:
            log.info(
                "realtime: client did not take its close frame (code %d) in %gs", code, self._close_timeout
            )
        except (WebSocketDisconnect, WebSocketDisconnected, OSError) as exc:
            log.debug("realtime: client left before its close frame (code %d): %r", code, exc)

    async def _receive_loop(self, sock: _Socket) -> None:
        try:
            while True:
                message = await sock.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    sock.client_gone = True
                    log.debug("realtime: socket %d (user %s) disconnected", sock.id, sock.user_id)
                    sock.finish()
                    return
                self._handle(sock, message.get("text"))
        except asyncio.CancelledError:
            raise
        except (WebSocketDisconnect, WebSocketDisconnected, OSError) as exc:
            log.info("realtime: socket %d (user %s) receive ended: %r", sock.id, sock.user_id, exc)
            sock.client_gone = True
            sock.finish()
        except Exception:
            log.exception("realtime: receiving on socket %d (user %s) failed", sock.id, sock.user_id)
            sock.finish(CLOSE_INTERNAL_ERROR, frames.error("internal_error", "the server failed; reconnect"))

    async def _send_loop(self, sock: _Socket) -> None:
        out, wake, websocket = sock.out, sock.wake, sock.websocket
        try:
            while not sock.done.is_set():
                while out:
                    await websocket.send_text(out.popleft())
                wake.clear()
                await wake.wait()
        except asyncio.CancelledError:
            raise
        except (WebSocketDisconnect, WebSocketDisconnected, OSError) as exc:
            log.info("realtime: socket %d (user %s) send ended: %r", sock.id, sock.user_id, exc)
            sock.client_gone = True
            sock.finish()
        except Exception:
            log.exception("realtime: sending on socket %d (user %s) failed", sock.id, sock.user_id)
            sock.finish(CLOSE_INTERNAL_ERROR, frames.error("internal_error", "the server failed; reconnect"))

    def _push(self, sock: _Socket, text: str, *, live: bool) -> None:
        if sock.done.is_set():
            return
        if len(sock.out) >= (self._queue_limit if live else self._hard_limit):
            self._counters["slow_consumers"] += 1
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
                    f"this connection fell more than {self._queue_limit} events behind and was closed; "
                    "reconnect and subscribe with since=<last seq> to resume",
                ),
            )
            return
        sock.out.append(text)
        sock.wake.set()

    def _error(self, sock: _Socket, code: str, detail: str, topic: str | None = None) -> None:
        self._push(sock, frames.error(code, detail, topic), live=False)

    # ----------------------------------------------------------------------------- client ops

    def _handle(self, sock: _Socket, text: str | None) -> None:
        """Serve one client frame (``text`` is None for a binary frame)."""
        try:
            frame = frames.parse_client_frame(text)
        except ClientFrameError as exc:
            self._push(sock, exc.frame(), live=False)
            return
        if isinstance(frame, Ping):
            self._push(sock, frames.pong(), live=False)
        elif isinstance(frame, Subscribe):
            self._subscribe(sock, frame)
        else:
            self._unsubscribe(sock, frame.topic)

    def _subscribe(self, sock: _Socket, frame: Subscribe) -> None:
        try:
            route = self._registry.resolve(frame.topic)
        except InvalidTopic as exc:
            self._push(sock, frames.error(exc.code, exc.detail, frame.topic, exc.fields), live=False)
            return
        existing = sock.subs.get(route.topic)
        if existing is not None:
            # Already held: acknowledge (unless still being authorized: that answer will come).
            if existing.pump is not None:
                self._push(sock, frames.subscribed(route.topic), live=False)
            return
        if len(sock.subs) >= self._max_subscriptions:
            self._error(
                sock,
                "too_many_subscriptions",
                f"a connection may hold {self._max_subscriptions} subscriptions; unsubscribe from some first",
                route.topic,
            )
            return
        sub = _Sub(sock, route, frame.since)
        sock.subs[route.topic] = sub
        task = self._spawn(self._authorize_and_attach(sub), f"realtime-sub:{sock.id}:{route.topic}")
        sock.tasks.add(task)
        task.add_done_callback(sock.tasks.discard)

    def _unsubscribe(self, sock: _Socket, topic: str) -> None:
        sub = sock.subs.pop(topic, None)
        if sub is not None:
            self._detach(sub)
        # Idempotent: unsubscribing from a topic the socket does not hold is not an error.
        self._push(sock, frames.unsubscribed(topic), live=False)

    async def _authorize_and_attach(self, sub: _Sub) -> None:
        sock = sub.socket
        try:
            allowed = await sock.authorize(sock.user_id, sub.topic)
        except FoundryError as exc:
            log.info("realtime: authorize(%s, %s) refused: %s", sock.user_id, sub.topic, exc)
            self._end_subscription(sub, exc.code, exc.detail)
            return
        except Exception:
            log.exception("realtime: authorize(%s, %s) failed", sock.user_id, sub.topic)
            self._end_subscription(sub, "internal_error", "could not check your access to this topic")
            return
        if sub.closed:  # unsubscribed meanwhile
            return
        if not allowed:
            self._end_subscription(sub, "forbidden", f"you may not subscribe to {sub.topic}")
            return
        self._attach(sub)

    def _end_subscription(self, sub: _Sub, code: str, detail: str) -> None:
        """Drop a subscription the gateway cannot serve, telling the client why."""
        sock = sub.socket
        if sock.subs.get(sub.topic) is sub:
            del sock.subs[sub.topic]
        was_closed = sub.closed
        self._detach(sub)
        if not was_closed:
            self._error(sock, code, detail, sub.topic)

    # ----------------------------------------------------------------------------- pumps

    def _attach(self, sub: _Sub) -> None:
        route = sub.route
        pump = self._pump(route.role, self._runtime.shard_for(route.role, route.key))
        topic = pump.topics.get(route.topic)
        if topic is None:
            topic = pump.topics[route.topic] = _Topic(route)
        topic.subs.add(sub)
        sub.pump, sub.state = pump, topic
        # Registered on the pump before the snapshot is read: no live event can slip between.
        self._push(sub.socket, frames.subscribed(route.topic), live=False)
        self._request_sync(sub)

    def _pump(self, role: str, shard: int) -> _Pump:
        pump = self._pumps.get((role, shard))
        if pump is None:
            pump = _Pump(role, shard)
            self._pumps[(role, shard)] = pump
            pump.task = self._spawn(self._run_pump(pump), f"realtime-pump:{pump.name}")
        return pump

    def _detach(self, sub: _Sub) -> None:
        if sub.closed:
            return
        sub.closed = True
        sub.pending.clear()
        pump, topic = sub.pump, sub.state
        if pump is None or topic is None:
            return
        topic.subs.discard(sub)
        topic.waiting.discard(sub)
        if topic.subs:
            return
        self._cancel(topic.sync_task)
        topic.sync_task = None
        if pump.topics.get(topic.name) is topic:
            del pump.topics[topic.name]
        pump.unverified.discard(topic.name)
        if not pump.topics and not pump.listeners:
            self._stop_pump(pump)

    def _stop_pump(self, pump: _Pump) -> None:
        """Stop a host stream nobody needs any more (its generator is cancelled on the host)."""
        pump.stopped = True
        if self._pumps.get((pump.role, pump.shard)) is pump:
            del self._pumps[(pump.role, pump.shard)]
        self._cancel(pump.task)
        self._cancel(pump.verify_task)
        for topic in pump.topics.values():
            self._cancel(topic.sync_task)
            topic.sync_task = None
        for listener in pump.listeners:
            listener.stream_lost(pump.role, pump.shard)
        log.debug("realtime: stopped the stream of %s", pump.name)

    async def _run_pump(self, pump: _Pump) -> None:
        delay = self._backoff[0]
        first = True
        while not pump.stopped:
            if not first:
                # After a break the host is usually restarting: subscribe once it answers again, so
                # the stream (and the snapshots read right after it) meet the new incarnation.
                try:
                    await self._runtime.wait_host(pump.role, pump.shard)
                except ActorUnavailable as exc:
                    log.warning("realtime: host of %s still unreachable (%s)", pump.name, exc)
            first = False
            stream = self._runtime.subscribe(pump.role, pump.shard)
            pump.streams_opened += 1
            self._counters["streams_opened"] += 1
            received = False
            try:
                # Runs once this task is suspended inside the first `anext`, i.e. after the stream
                # was requested (Ray) or registered (in-process): snapshots may be read from then.
                asyncio.get_running_loop().call_soon(self._on_attached, pump, pump.generation)
                async for batch in stream:
                    received = True
                    self._on_batch(pump, batch)
                raise ActorUnavailable(f"the event stream of {pump.name} ended")
            except ActorUnavailable as exc:
                log.warning("realtime: stream of %s broke (%s); reconnecting in %.2fs", pump.name, exc, delay)
            except Exception:
                log.exception("realtime: stream of %s failed; reconnecting in %.2fs", pump.name, delay)
            finally:
                # Closing the generator cancels it on the host (`RayRuntime.subscribe`'s finally).
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    try:
                        await aclose()
                    except Exception:
                        log.exception("realtime: closing the stream of %s failed", pump.name)
            self._counters["stream_breaks"] += 1
            self._on_broken(pump)
            if received:
                delay = self._backoff[0]
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff[1])

    def _on_attached(self, pump: _Pump, generation: int) -> None:
        if pump.stopped or pump.generation != generation:
            return
        pump.attached = True
        if pump.listeners and pump.verify_task is None:
            # A listener needs to know when the stream is live even on an idle host (no batch).
            pump.verify_task = self._spawn(
                self._verify_answered(pump, generation), f"realtime-verify:{pump.name}"
            )
        for topic in pump.topics.values():
            if topic.waiting and topic.sync_task is None:
                self._start_round(pump, topic)

    def _on_broken(self, pump: _Pump) -> None:
        for listener in pump.listeners:
            listener.stream_lost(pump.role, pump.shard)
        pump.generation += 1
        pump.attached = False
        pump.confirmed = False
        pump.unverified.clear()
        self._cancel(pump.verify_task)
        pump.verify_task = None
        self._resync_all(pump)

    def _resync_all(self, pump: _Pump) -> None:
        """Every subscriber of this host gets a fresh snapshot or replay (once the stream is attached)."""
        for topic in pump.topics.values():
            self._cancel(topic.sync_task)
            topic.sync_task = None
            topic.heard = False
            for sub in topic.subs:
                sub.syncing = True
                sub.force = True
                sub.pending.clear()
            topic.waiting = set(topic.subs)
            if pump.attached:
                self._start_round(pump, topic)

    def _on_batch(self, pump: _Pump, batch: list[Event]) -> None:
        topics = pump.topics
        for listener in pump.listeners:
            listener.events(pump.role, pump.shard, batch)
        if not pump.confirmed:
            for event in batch:
                if event.topic in topics:
                    topics[event.topic].heard = True
                    pump.unverified.discard(event.topic)
            self._confirm(pump)
        for event in batch:
            if event.topic == OVERFLOW_TOPIC:
                log.warning("realtime: %s dropped events for this process; resyncing its topics", pump.name)
                for listener in pump.listeners:
                    listener.stream_reset(pump.role, pump.shard)
                self._resync_all(pump)
                continue
            topic = topics.get(event.topic)
            if topic is None:
                continue
            topic.heard = True
            try:
                text = event_frame(event.topic, event.event, event.seq, event.data)
            except (TypeError, ValueError):
                # A role bug; the subscribers see a gap at the next event and resync.
                log.exception("realtime: event %s #%d on %s is not JSON", event.event, event.seq, event.topic)
                continue
            for sub in tuple(topic.subs):
                if sub.syncing or sub.held:
                    if len(sub.pending) >= self._queue_limit:
                        # Bounded like the socket queue; the gap this leaves is detected at drain.
                        log.info(
                            "realtime: %s buffered %d events during a resync; dropped them",
                            topic.name,
                            len(sub.pending),
                        )
                        sub.pending.clear()
                    sub.pending.append((event.seq, text))
                else:
                    self._deliver(sub, event.seq, text)
            if event.event == ACCESS_CHANGED_EVENT:
                self._recheck_access(topic)

    def _recheck_access(self, topic: _Topic) -> None:
        """Hold every subscriber of ``topic`` until its access is checked again (who may read the
        topic changed); a subscriber refused now is ended with an error frame."""
        for sub in tuple(topic.subs):
            if sub.closed:
                continue
            sub.held += 1
            sock = sub.socket
            task = self._spawn(self._recheck(sub), f"realtime-recheck:{sock.id}:{sub.topic}")
            sock.tasks.add(task)
            task.add_done_callback(sock.tasks.discard)

    async def _recheck(self, sub: _Sub) -> None:
        sock = sub.socket
        code, detail = "forbidden", f"you may no longer subscribe to {sub.topic}"
        try:
            allowed = await sock.authorize(sock.user_id, sub.topic)
        except FoundryError as exc:
            log.info("realtime: re-checking authorize(%s, %s) refused: %s", sock.user_id, sub.topic, exc)
            allowed, code, detail = False, exc.code, exc.detail
        except Exception:
            # Fail closed: the subscriber may subscribe again, which checks access afresh.
            log.exception("realtime: re-checking authorize(%s, %s) failed", sock.user_id, sub.topic)
            allowed, code, detail = False, "internal_error", "could not check your access to this topic"
        if sub.closed:
            return
        if not allowed:
            log.info("realtime: %s lost access to %s; subscription ended", sock.user_id, sub.topic)
            self._end_subscription(sub, code, detail)
            return
        sub.held -= 1
        if sub.held:
            return
        if sub.sync_after_hold:
            sub.sync_after_hold = False
            self._request_sync(sub)
        elif not sub.syncing:
            self._drain(sub)

    def _deliver(self, sub: _Sub, seq: int, text: str) -> None:
        last = sub.last_seq
        if last is not None and seq <= last:
            return  # already sent (in the snapshot or replay)
        if last is not None and seq != last + 1:
            self._counters["gaps"] += 1
            topic = sub.state
            if topic is not None and topic.gap_logged != seq:
                topic.gap_logged = seq
                log.info(
                    "realtime: %s jumped from seq %d to %d (events lost); resyncing", sub.topic, last, seq
                )
            sub.pending.append((seq, text))
            self._request_sync(sub)
            return
        sub.last_seq = seq
        self._push(sub.socket, text, live=True)

    def _confirm(self, pump: _Pump) -> None:
        """The host has registered our stream: re-read snapshots that were read before it may have."""
        pump.confirmed = True
        if pump.verify_task is not asyncio.current_task():
            self._cancel(pump.verify_task)
        pump.verify_task = None
        for listener in pump.listeners:
            listener.stream_live(pump.role, pump.shard)
        names, pump.unverified = pump.unverified, set()
        for name in names:
            topic = pump.topics.get(name)
            if topic is not None:
                for sub in topic.subs:
                    self._request_sync(sub)

    async def _verify_later(self, pump: _Pump, generation: int) -> None:
        await asyncio.sleep(self._verify_delay)
        if not pump.stopped and pump.generation == generation and not pump.confirmed:
            self._confirm(pump)

    async def _verify_answered(self, pump: _Pump, generation: int) -> None:
        """Confirm an idle stream ``verify_delay`` after its host answers a call."""
        try:
            await self._runtime.wait_host(pump.role, pump.shard)
        except ActorUnavailable as exc:
            # The stream breaks too and is verified again once reopened.
            log.warning("realtime: host of %s unreachable while verifying its stream (%s)", pump.name, exc)
            if pump.verify_task is asyncio.current_task():
                pump.verify_task = None
            return
        await self._verify_later(pump, generation)

    # ----------------------------------------------------------------------------- snapshots

    def _request_sync(self, sub: _Sub) -> None:
        pump, topic = sub.pump, sub.state
        if pump is None or topic is None or sub.closed:
            return
        sub.syncing = True
        topic.waiting.add(sub)
        if pump.attached and topic.sync_task is None:
            self._start_round(pump, topic)

    def _start_round(self, pump: _Pump, topic: _Topic) -> None:
        topic.sync_task = self._spawn(self._sync_round(pump, topic), f"realtime-sync:{topic.name}")

    async def _sync_round(self, pump: _Pump, topic: _Topic) -> None:
        """Serve every waiting subscriber of a topic, with one snapshot call per round."""
        delay = 0.2
        repeats = 0  # rounds asked for again right after a complete one
        try:
            while topic.waiting and not pump.stopped:
                if repeats > 3:
                    # Subscribers keep finding gaps right after a snapshot: the owner's snapshot seq
                    # lags its events (a role bug). Slow down instead of spinning on actor calls.
                    log.warning("realtime: %s needed %d snapshots in a row", topic.name, repeats)
                    await asyncio.sleep(min(0.05 * 2 ** (repeats - 3), 2.0))
                batch = [s for s in topic.waiting if not s.closed]
                topic.waiting.clear()
                batch = self._unheld(batch)
                if not batch:
                    break
                unconfirmed = not pump.confirmed
                bases = [s.last_seq for s in batch]
                since = None if any(b is None for b in bases) else min(b for b in bases if b is not None)
                try:
                    snap = await self._fetch(topic.route, since)
                except ActorUnavailable as exc:
                    log.warning(
                        "realtime: snapshot of %s unavailable (%s); retrying in %.1fs", topic.name, exc, delay
                    )
                    topic.waiting.update(s for s in batch if not s.closed)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                except FoundryError as exc:
                    log.info("realtime: snapshot of %s refused: %s", topic.name, exc)
                    for sub in batch:
                        self._end_subscription(sub, exc.code, exc.detail)
                    continue
                except Exception:
                    log.exception("realtime: snapshot of %s failed", topic.name)
                    for sub in batch:
                        self._end_subscription(sub, "internal_error", "could not read this topic's snapshot")
                    continue
                delay = 0.2
                repeats = repeats + 1 if snap.complete else 0
                for sub in self._unheld(batch):
                    if sub.closed:
                        continue
                    self._apply(sub, snap)
                    if sub in topic.waiting:
                        continue  # asked again while we read: keep buffering for the next round
                    if not snap.complete:
                        self._request_sync(sub)  # the rest of a capped replay
                        continue
                    self._drain(sub)
                if unconfirmed and not topic.heard:
                    if pump.confirmed:
                        for sub in batch:
                            self._request_sync(sub)
                    else:
                        pump.unverified.add(topic.name)
                        if pump.verify_task is None:
                            pump.verify_task = self._spawn(
                                self._verify_later(pump, pump.generation), f"realtime-verify:{pump.name}"
                            )
        finally:
            if topic.sync_task is asyncio.current_task():
                topic.sync_task = None

    @staticmethod
    def _unheld(batch: list[_Sub]) -> list[_Sub]:
        """The subscribers whose access is not being checked again; the others get their snapshot
        once it is (`_recheck`)."""
        for sub in batch:
            if sub.held:
                sub.sync_after_hold = True
        return [s for s in batch if not s.held]

    async def _fetch(self, route: TopicRoute, since: int | None) -> _Snapshot:
        """Call the owner's ``snapshot`` action (paging through a replay) and check its answer."""
        self._counters["snapshot_calls"] += 1
        result = await self._runtime.call(
            route.role, route.key, SNAPSHOT_ACTION, {"topic": route.topic, "since": since}
        )
        seq = _checked_seq(result, route)
        if "events" not in result:
            if "data" not in result:
                raise _malformed(route, "it has neither 'data' nor 'events'")
            return _Snapshot(seq, event_frame(route.topic, "snapshot", seq, result["data"]), [])
        events = _checked_events(result, route)
        exhausted = False
        # The owner may page its replay: ask again after the last event until caught up or capped.
        while events and events[-1][0] < seq and len(events) < self._max_replay:
            self._counters["snapshot_calls"] += 1
            more = await self._runtime.call(
                route.role, route.key, SNAPSHOT_ACTION, {"topic": route.topic, "since": events[-1][0]}
            )
            seq = max(seq, _checked_seq(more, route))
            page = [e for e in _checked_events(more, route) if e[0] > events[-1][0]]
            if not page:
                exhausted = True  # the log holds nothing more (some seqs were not log entries)
                break
            events.extend(page)
        events = events[: self._max_replay]
        complete = exhausted or not events or events[-1][0] >= seq
        return _Snapshot(seq, None, events, complete)

    def _apply(self, sub: _Sub, snap: _Snapshot) -> None:
        """Send a subscriber what it lacks from a snapshot or replay."""
        last = sub.last_seq
        if sub.first and last is not None and snap.seq < last:
            # The client claims a seq the owner has not reached (a stale client after a data reset):
            # its `since` is ignored, so it is brought to the owner's state instead of waiting forever.
            log.info(
                "realtime: %s since=%d is ahead of seq %d; sending from scratch", sub.topic, last, snap.seq
            )
            last = None
        if snap.frame is not None:
            if last is None or snap.seq > last or (sub.force and snap.seq == last):
                self._push(sub.socket, snap.frame, live=False)
                last = snap.seq
        else:
            for seq, text in snap.events:
                if last is None or seq > last:
                    self._push(sub.socket, text, live=False)
                    last = seq
            if snap.complete:
                last = snap.seq if last is None else max(last, snap.seq)
        sub.last_seq = last
        sub.first = False
        sub.force = False

    def _drain(self, sub: _Sub) -> None:
        """Deliver the live events buffered while a snapshot was read (those newer than it)."""
        pending, sub.pending = sub.pending, []
        sub.syncing = False
        for seq, text in pending:
            if sub.syncing or sub.held:  # a gap started another round: keep the rest for it
                sub.pending.append((seq, text))
            else:
                self._deliver(sub, seq, text)

    # ----------------------------------------------------------------------------- tasks

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("realtime: task %s crashed", task.get_name(), exc_info=task.exception())

    @staticmethod
    def _cancel(task: asyncio.Task[Any] | None) -> None:
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()


def _malformed(route: TopicRoute, why: str) -> CommandFailed:
    log.error(
        "realtime: %s.%s answered a malformed snapshot for %s: %s",
        route.role,
        SNAPSHOT_ACTION,
        route.topic,
        why,
    )
    return CommandFailed(f"the owner of {route.topic} answered a malformed snapshot")


def _checked_seq(result: Any, route: TopicRoute) -> int:
    if not isinstance(result, dict):
        raise _malformed(route, f"expected an object, got {type(result).__name__}")
    seq = result.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise _malformed(route, f"seq {seq!r} is not a non-negative integer")
    return seq


def _checked_events(result: dict[str, Any], route: TopicRoute) -> list[tuple[int, str]]:
    raw = result.get("events")
    if not isinstance(raw, list):
        raise _malformed(route, "'events' is not a list")
    out: list[tuple[int, str]] = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("event"), str):
            raise _malformed(route, f"replayed event {item!r:.80} has no 'event' name")
        seq = item.get("seq")
        if isinstance(seq, bool) or not isinstance(seq, int) or (out and seq <= out[-1][0]):
            raise _malformed(route, f"replayed seqs must be increasing integers, got {seq!r}")
        out.append((seq, event_frame(route.topic, item["event"], seq, item.get("data"))))
    return out
