"""The realtime gateway's host pumps: one event stream per host, fanned out by topic.

One process-wide *pump* per host (role, shard) holds the only event stream of that host
(`Runtime.subscribe`) and fans its events out by topic to per-socket bounded queues. A websocket
never has a stream of its own: with one Ray streaming generator per websocket p50 was 95 ms at 100
clients, against 1.2-2.3 ms for one shared generator.

`HostPumps` opens a pump with the first topic (or listener) of its host and stops it with the last,
reconnects a broken stream with backoff and then has every subscriber of that host resynced (see
"Host failures" in `foundry.realtime.gateway`). It is split from the socket side because it runs
on its own tasks and only ever reaches a socket through `SnapshotSync.deliver` and
`GatewayState.push`; the one way back into the gateway is the ``access_changed`` hook.

Listeners: other parts of this process may read every event of a role's hosts through the same
streams (`RealtimeGateway.watch`, e.g. the session and membership cache); they are told when a stream
becomes live (registered on its host), breaks, or lost events, and keep its pump open.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from foundry.errors import ActorUnavailable
from foundry.realtime.frames import event_frame
from foundry.realtime.snapshots import SnapshotSync
from foundry.realtime.state import GatewayState, Pump, StreamListener, Sub, Topic
from foundry.runtime.events import OVERFLOW_TOPIC, Event

log = logging.getLogger(__name__)

#: An event an owner publishes when who may read its topic changed (an admin demoted, a member
#: removed): every subscriber's access is checked again before it gets anything newer, and those
#: refused now get an error frame ``forbidden`` that ends the subscription.
ACCESS_CHANGED_EVENT = "accessChanged"
#: A host stream that beats (every 2 s when idle) and has delivered nothing for this long comes
#: from a host process that stopped answering: its subscribers get a ``waiting`` frame.
STREAM_SILENT_S = 6.0
SILENCE_CHECK_S = 1.0
SILENT_DETAIL = (
    f"the part of Foundry that holds this topic has not answered for {STREAM_SILENT_S:g} s; the "
    "subscription stays and its events follow once it answers"
)


class HostPumps:
    """Opens, runs and stops the pumps of ``state.pumps``, and attaches subscriptions to them.

    Args:
        state: the gateway's shared state.
        sync: serves the subscribers' snapshots and delivers their live events.
        access_changed: called with the name of a topic whose owner published
            `ACCESS_CHANGED_EVENT` (held by a subscriber here or not: a member's removal, published
            on ``organization:<org>``, ends their task and session topics too), after
            that event was fanned out (`RealtimeGateway` re-checks its subscribers' access).
    """

    def __init__(
        self, state: GatewayState, sync: SnapshotSync, access_changed: Callable[[str], None]
    ) -> None:
        self._state = state
        self._sync = sync
        self._access_changed = access_changed

    # ----------------------------------------------------------------------------- topics

    def attach(self, sub: Sub) -> None:
        """Register an authorized subscription on its host's pump, then have it synced."""
        route = sub.route
        pump = self.pump(route.role, self._state.runtime.shard_for(route.role, route.key))
        topic = pump.topics.get(route.topic)
        if topic is None:
            topic = pump.topics[route.topic] = Topic(route)
        topic.subs.add(sub)
        sub.pump, sub.state = pump, topic
        # Registered on the pump before the snapshot is read: no live event can slip between. The
        # `subscribed` answer goes out with the first snapshot (`SnapshotSync`): only then is it
        # known that the topic exists (a made-up session id is refused by its snapshot read).
        self._sync.request_sync(sub)

    def pump(self, role: str, shard: int) -> Pump:
        """The pump of a host, opened now if this process has none."""
        pumps = self._state.pumps
        pump = pumps.get((role, shard))
        if pump is None:
            pump = Pump(role, shard)
            pumps[(role, shard)] = pump
            pump.task = self._state.spawn(self._run(pump), f"realtime-pump:{pump.name}")
            pump.silence_task = self._state.spawn(self._watch_silence(pump), f"realtime-silence:{pump.name}")
        return pump

    def add_listener(self, role: str, shard: int, listener: StreamListener) -> None:
        """Feed ``listener`` every event of a host (see `RealtimeGateway.watch`)."""
        pump = self.pump(role, shard)
        pump.listeners.append(listener)
        if pump.confirmed:
            listener.stream_live(role, shard)
        elif pump.attached and pump.verify_task is None:
            pump.verify_task = self._state.spawn(
                self._sync.verify_answered(pump, pump.generation), f"realtime-verify:{pump.name}"
            )

    def detach(self, sub: Sub) -> None:
        """Drop a subscription from its pump (once); a pump left with nothing to feed is stopped."""
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
        self._state.cancel(topic.sync_task)
        topic.sync_task = None
        if pump.topics.get(topic.name) is topic:
            del pump.topics[topic.name]
        pump.unverified.discard(topic.name)
        if not pump.topics and not pump.listeners:
            self.stop(pump)

    def stop(self, pump: Pump) -> None:
        """Stop a host stream nobody needs any more (its generator is cancelled on the host)."""
        state = self._state
        pump.stopped = True
        if state.pumps.get((pump.role, pump.shard)) is pump:
            del state.pumps[(pump.role, pump.shard)]
        state.cancel(pump.task)
        state.cancel(pump.verify_task)
        state.cancel(pump.silence_task)
        for topic in pump.topics.values():
            state.cancel(topic.sync_task)
            topic.sync_task = None
        for listener in pump.listeners:
            listener.stream_lost(pump.role, pump.shard)
        log.debug("realtime: stopped the stream of %s", pump.name)

    # ----------------------------------------------------------------------------- the stream

    async def _run(self, pump: Pump) -> None:
        state = self._state
        delay = state.backoff[0]
        first = True
        while not pump.stopped:
            if not first:
                # After a break the host is usually restarting: subscribe once it answers again, so
                # the stream (and the snapshots read right after it) meet the new incarnation.
                try:
                    await state.runtime.wait_host(pump.role, pump.shard)
                except ActorUnavailable as exc:
                    log.warning("realtime: host of %s still unreachable (%s)", pump.name, exc)
            first = False
            stream = state.runtime.subscribe(pump.role, pump.shard)
            pump.streams_opened += 1
            state.counters["streams_opened"] += 1
            received = False
            pump.heard_at = asyncio.get_running_loop().time()
            try:
                # Runs once this task is suspended inside the first `anext`, i.e. after the stream
                # was requested (Ray) or registered (in-process): snapshots may be read from then.
                asyncio.get_running_loop().call_soon(self._on_attached, pump, pump.generation)
                async for batch in stream:
                    received = True
                    self._on_heard(pump)
                    if batch:
                        self._on_batch(pump, batch)
                    else:
                        pump.beats = True  # a heartbeat: the host is alive, and idle
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
            state.counters["stream_breaks"] += 1
            self._on_broken(pump)
            if received:
                delay = state.backoff[0]
            await asyncio.sleep(delay)
            delay = min(delay * 2, state.backoff[1])

    def _on_attached(self, pump: Pump, generation: int) -> None:
        if pump.stopped or pump.generation != generation:
            return
        pump.attached = True
        if pump.listeners and pump.verify_task is None:
            # A listener needs to know when the stream is live even on an idle host (no batch).
            pump.verify_task = self._state.spawn(
                self._sync.verify_answered(pump, generation), f"realtime-verify:{pump.name}"
            )
        for topic in pump.topics.values():
            if topic.waiting and topic.sync_task is None:
                self._sync.start_round(pump, topic)

    def _on_heard(self, pump: Pump) -> None:
        pump.heard_at = asyncio.get_running_loop().time()
        if pump.silent:
            pump.silent = False
            log.info("realtime: the stream of %s delivers again", pump.name)
            for topic in pump.topics.values():
                for sub in topic.subs:
                    sub.told_waiting = False  # a later silence is told again

    async def _watch_silence(self, pump: Pump) -> None:
        """Tell the subscribers of a host whose stream stopped beating that they wait: a hung host
        process (its event loop blocked, the process stopped) breaks no stream, it only falls silent."""
        loop = asyncio.get_running_loop()
        while not pump.stopped:
            await asyncio.sleep(SILENCE_CHECK_S)
            silent_for = loop.time() - pump.heard_at
            if not pump.beats or not pump.attached or pump.silent or silent_for < STREAM_SILENT_S:
                continue
            pump.silent = True
            log.warning("realtime: the stream of %s has been silent for %.0f s", pump.name, silent_for)
            for topic in pump.topics.values():
                self._sync.tell_waiting(list(topic.subs), topic.name, SILENT_DETAIL)

    def _on_broken(self, pump: Pump) -> None:
        pump.beats = False  # the next stream may come from a host that does not beat
        pump.silent = False
        for listener in pump.listeners:
            listener.stream_lost(pump.role, pump.shard)
        pump.generation += 1
        pump.attached = False
        pump.confirmed = False
        pump.unverified.clear()
        self._state.cancel(pump.verify_task)
        pump.verify_task = None
        self._resync_all(pump)

    def _resync_all(self, pump: Pump) -> None:
        """Every subscriber of this host gets a fresh snapshot or replay (once the stream is attached)."""
        for topic in pump.topics.values():
            self._state.cancel(topic.sync_task)
            topic.sync_task = None
            topic.heard = False
            for sub in topic.subs:
                sub.syncing = True
                sub.force = True
                sub.pending.clear()
            topic.waiting = set(topic.subs)
            if pump.attached:
                self._sync.start_round(pump, topic)

    def _on_batch(self, pump: Pump, batch: list[Event]) -> None:
        topics = pump.topics
        for listener in pump.listeners:
            listener.events(pump.role, pump.shard, batch)
        if not pump.confirmed:
            for event in batch:
                if event.topic in topics:
                    topics[event.topic].heard = True
                    pump.unverified.discard(event.topic)
            self._sync.confirm(pump)
        for event in batch:
            if event.topic == OVERFLOW_TOPIC:
                log.warning("realtime: %s dropped events for this process; resyncing its topics", pump.name)
                for listener in pump.listeners:
                    listener.stream_reset(pump.role, pump.shard)
                self._resync_all(pump)
                continue
            topic = topics.get(event.topic)
            if topic is None:
                if event.event == ACCESS_CHANGED_EVENT:
                    self._access_changed(event.topic)
                continue
            topic.heard = True
            if event.event == ACCESS_CHANGED_EVENT:
                # Hold every subscriber for its re-check before the event is queued: one who lost
                # access gets `forbidden` and nothing more, not even this event.
                self._access_changed(topic.name)
            try:
                text = event_frame(event.topic, event.event, event.seq, event.data)
            except (TypeError, ValueError):
                # A role bug; the subscribers see a gap at the next event and resync.
                log.exception("realtime: event %s #%d on %s is not JSON", event.event, event.seq, event.topic)
                continue
            for sub in tuple(topic.subs):
                if sub.syncing or sub.held:
                    if len(sub.pending) >= self._state.queue_limit:
                        # Bounded like the socket queue; the gap this leaves is detected at drain.
                        log.info(
                            "realtime: %s buffered %d events during a resync; dropped them",
                            topic.name,
                            len(sub.pending),
                        )
                        sub.pending.clear()
                    sub.pending.append((event.seq, text))
                else:
                    self._sync.deliver(sub, event.seq, text)
