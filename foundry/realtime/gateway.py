"""The realtime gateway: actor events to browser websockets.

`RealtimeGateway` serves the websockets of this process from one event stream per actor host: its
*pumps* (`foundry.realtime.pumps`) fan each host's events out by topic to per-socket bounded queues,
and `foundry.realtime.snapshots` brings every subscriber to its topic's state and keeps it in order.
This module is the public surface and the socket side: accepting and closing sockets, their receive
and send loops, subscribe/unsubscribe, and the authorization checks (at subscribe and again after an
access change). The records and settings they all share are in `foundry.realtime.state`. The parts
are classes handed the shared state explicitly, wired together in `RealtimeGateway.__init__`.

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

Access changes: subscriptions are authorized at subscribe. When who may read a topic changes (an
admin demoted on ``billing:<org>``; a member removed on ``organization:<org>``, which covers every
topic of the organization), its owner publishes `ACCESS_CHANGED_EVENT`; every subscriber is
then held (events buffered, no snapshot) until ``authorize`` answers again, and one refused now gets
an error frame ``forbidden`` ending the subscription, before anything published after the change.

Slow clients: a socket with more than ``queue_limit`` live frames waiting is sent an error frame
``slow_consumer`` and closed with code 1013 (try again later); its backlog is dropped. Memory per
socket is bounded by that limit plus one replay.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from foundry.errors import FoundryError
from foundry.realtime import frames
from foundry.realtime.frames import ClientFrameError, Ping, Subscribe
from foundry.realtime.pumps import ACCESS_CHANGED_EVENT, HostPumps
from foundry.realtime.snapshots import SNAPSHOT_ACTION, SnapshotSync
from foundry.realtime.state import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_SIGNED_OUT,
    CLOSE_SLOW_CONSUMER,
    Authorize,
    GatewayState,
    Socket,
    StreamListener,
    Sub,
    Topic,
)
from foundry.realtime.topics import InvalidTopic, TopicRegistry
from foundry.runtime.client import Runtime

#: The topic whose `ACCESS_CHANGED_EVENT` re-checks every topic of its organization.
ORGANIZATION_PREFIX = "organization:"
#: The role of per-user topics (``app:<userId>``), which belong to no organization.
USER_ROLE = "user"

__all__ = [
    "ACCESS_CHANGED_EVENT",
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_SLOW_CONSUMER",
    "SNAPSHOT_ACTION",
    "Authorize",
    "RealtimeGateway",
    "StreamListener",
]

log = logging.getLogger(__name__)

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
            (see `Pump.confirmed`); snapshots read before then are read once more.
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
        self._state = GatewayState(
            runtime,
            registry,
            queue_limit=queue_limit,
            max_subscriptions=max_subscriptions,
            max_replay_events=max_replay_events,
            verify_delay=verify_delay,
            close_timeout=close_timeout,
            backoff=backoff,
        )
        # The snapshot rounds end refused subscriptions through the gateway (it tells the client),
        # and the pumps hand it topics whose access changed: the only calls back into this class.
        self._sync = SnapshotSync(self._state, self._end_subscription)
        self._pumps = HostPumps(self._state, self._sync, self._recheck_access)
        self._ids = itertools.count(1)
        self._started = False
        self._closed = False

    # ----------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Make the gateway accept sockets. Host streams start lazily with their first topic."""
        self._started = True
        self._closed = False

    async def close(self) -> None:
        """Close every socket (code 1001) and stop every host stream."""
        self._closed = True
        for sock in list(self._state.sockets.values()):
            sock.finish(CLOSE_GOING_AWAY, frames.error("going_away", "the server is shutting down"))
        for pump in list(self._state.pumps.values()):
            self._pumps.stop(pump)
        pending = [t for t in self._state.background if not t.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=self._state.close_timeout + 1)
            if still:
                log.warning("realtime: %d gateway tasks still running after close", len(still))

    def stats(self) -> dict[str, Any]:
        """Counters for tests, ``/readyz`` and benchmarks.

        ``hosts`` has one entry per host stream this process holds (``"<role>/<shard>"``), which is
        how tests prove there is exactly one stream per host whatever the number of sockets.
        """
        state = self._state
        return {
            "sockets": len(state.sockets),
            "subscriptions": sum(len(s.subs) for s in state.sockets.values()),
            "hosts": {
                pump.name: {
                    "topics": len(pump.topics),
                    "subscribers": sum(len(t.subs) for t in pump.topics.values()),
                    "attached": pump.attached,
                    "confirmed": pump.confirmed,
                    "syncing": sum(1 for t in pump.topics.values() if t.waiting or t.sync_task is not None),
                    "streams_opened": pump.streams_opened,
                }
                for pump in state.pumps.values()
            },
            **state.counters,
        }

    def watch(self, role: str, listener: StreamListener) -> None:
        """Feed ``listener`` every event of every host of ``role`` through this process's one
        stream per host (opened now and kept open while the gateway runs)."""
        for shard in range(self._state.runtime.shards(role)):
            self._pumps.add_listener(role, shard, listener)

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
        sock = Socket(next(self._ids), websocket, user_id, authorize)
        self._state.sockets[sock.id] = sock
        receiver = self._state.spawn(self._receive_loop(sock), f"realtime-recv:{sock.id}")
        sender = self._state.spawn(self._send_loop(sock), f"realtime-send:{sock.id}")
        try:
            await sock.done.wait()
        finally:
            for sub in list(sock.subs.values()):
                self._pumps.detach(sub)
            sock.subs.clear()
            tasks = [receiver, sender, *sock.tasks]
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            self._state.sockets.pop(sock.id, None)
            if not sock.client_gone:
                await self._close_quietly(websocket, sock.close_code or 1000, sock.close_frame)

    def end_session(self, user_id: str, session_digest: str | None) -> int:
        """Close the sockets opened with a session that was just signed out (every session of the
        user when ``session_digest`` is None): they stop at once, with close code 4401 as if they
        had connected without a session. Returns how many were closed."""
        closed = 0
        for sock in list(self._state.sockets.values()):
            if sock.user_id != user_id or sock.done.is_set():
                continue
            if session_digest is not None and sock.session_digest not in (session_digest, None):
                continue
            sock.finish(CLOSE_SIGNED_OUT, frames.error("unauthorized", "signed out: sign in again"))
            closed += 1
        if closed:
            log.info("realtime: closed %d socket(s) of user %s whose session was signed out", closed, user_id)
        return closed

    async def _close_quietly(self, websocket: WebSocket, code: int, frame: str | None) -> None:
        # A slow client may never make room for the close frame: bounded waits, then uvicorn
        # drops the connection when `serve` returns.
        timeout = self._state.close_timeout
        try:
            if frame is not None:
                await asyncio.wait_for(websocket.send_text(frame), timeout)
            await asyncio.wait_for(websocket.close(code), timeout)
        except TimeoutError:
            log.info("realtime: client did not take its close frame (code %d) in %gs", code, timeout)
        except (WebSocketDisconnect, WebSocketDisconnected, OSError) as exc:
            log.debug("realtime: client left before its close frame (code %d): %r", code, exc)

    async def _receive_loop(self, sock: Socket) -> None:
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

    async def _send_loop(self, sock: Socket) -> None:
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

    def _error(self, sock: Socket, code: str, detail: str, topic: str | None = None) -> None:
        self._state.push(sock, frames.error(code, detail, topic), live=False)

    # ----------------------------------------------------------------------------- client ops

    def _handle(self, sock: Socket, text: str | None) -> None:
        """Serve one client frame (``text`` is None for a binary frame)."""
        try:
            frame = frames.parse_client_frame(text)
        except ClientFrameError as exc:
            self._state.push(sock, exc.frame(), live=False)
            return
        if isinstance(frame, Ping):
            self._state.push(sock, frames.pong(), live=False)
        elif isinstance(frame, Subscribe):
            self._subscribe(sock, frame)
        else:
            self._unsubscribe(sock, frame.topic)

    def _subscribe(self, sock: Socket, frame: Subscribe) -> None:
        try:
            route = self._state.registry.resolve(frame.topic)
        except InvalidTopic as exc:
            self._state.push(sock, frames.error(exc.code, exc.detail, frame.topic, exc.fields), live=False)
            return
        existing = sock.subs.get(route.topic)
        if existing is not None:
            # Already held: acknowledge (unless still being authorized or read: that answer will come).
            if existing.pump is not None and not existing.first:
                self._state.push(sock, frames.subscribed(route.topic), live=False)
            return
        limit = self._state.max_subscriptions
        if len(sock.subs) >= limit:
            self._error(
                sock,
                "too_many_subscriptions",
                f"a connection may hold {limit} subscriptions; unsubscribe from some first",
                route.topic,
            )
            return
        sub = Sub(sock, route, frame.since)
        sock.subs[route.topic] = sub
        task = self._state.spawn(self._authorize_and_attach(sub), f"realtime-sub:{sock.id}:{route.topic}")
        sock.tasks.add(task)
        task.add_done_callback(sock.tasks.discard)

    def _unsubscribe(self, sock: Socket, topic: str) -> None:
        sub = sock.subs.pop(topic, None)
        if sub is not None:
            self._pumps.detach(sub)
        # Idempotent: unsubscribing from a topic the socket does not hold is not an error.
        self._state.push(sock, frames.unsubscribed(topic), live=False)

    async def _authorize_and_attach(self, sub: Sub) -> None:
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
        self._pumps.attach(sub)

    def _end_subscription(self, sub: Sub, code: str, detail: str) -> None:
        """Drop a subscription the gateway cannot serve, telling the client why."""
        sock = sub.socket
        if sock.subs.get(sub.topic) is sub:
            del sock.subs[sub.topic]
        was_closed = sub.closed
        self._pumps.detach(sub)
        if not was_closed:
            self._error(sock, code, detail, sub.topic)

    # ----------------------------------------------------------------------------- access changes

    def _recheck_access(self, name: str) -> None:
        """Hold every subscriber of topic ``name`` until its access is checked again (who may read
        the topic changed); a subscriber refused now is ended with an error frame.

        On ``organization:<org>`` the change is the member list's: every topic of that
        organization held here (its billing, tasks and sessions, on whatever host) is checked
        again, whether or not anyone here follows the organization topic itself."""
        organization_id = name[len(ORGANIZATION_PREFIX) :] if name.startswith(ORGANIZATION_PREFIX) else None
        for pump in self._state.pumps.values():
            for topic in pump.topics.values():
                route = topic.route
                if topic.name == name or (
                    organization_id is not None
                    and route.role != USER_ROLE
                    and route.ids
                    and route.ids[0] == organization_id
                ):
                    self._hold_for_recheck(topic)

    def _hold_for_recheck(self, topic: Topic) -> None:
        for sub in tuple(topic.subs):
            if sub.closed:
                continue
            sub.held += 1
            sock = sub.socket
            task = self._state.spawn(self._recheck(sub), f"realtime-recheck:{sock.id}:{sub.topic}")
            sock.tasks.add(task)
            task.add_done_callback(sock.tasks.discard)

    async def _recheck(self, sub: Sub) -> None:
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
            self._sync.request_sync(sub)
        elif not sub.syncing:
            self._sync.drain(sub)
