"""Snapshot synchronisation: bringing each subscriber to its topic's state, then keeping it in order.

A subscriber that is new, saw a seq gap or lost its host stream waits for a *round*: one read of the
owner's ``snapshot`` action (paged for a long replay) serves every waiting subscriber of the topic
(`SnapshotSync`), its answer checked before anything of it is sent (`_checked_seq`,
`_checked_events`). What each one lacks is sent from the answer, then the live events buffered
meanwhile (`SnapshotSync.drain`), every live event passing `SnapshotSync.deliver`, which drops what
was already sent and turns a gap into a new round. This is where the ordering guarantees of
`foundry.realtime.gateway` are kept; it is split from the pumps (`foundry.realtime.pumps`) because it
only needs the shared state, so the pumps call into it and never the other way round.

Why a snapshot is sometimes read twice: `Runtime.subscribe` cannot say when the host has actually
registered a new stream (a Ray actor call is merely *submitted*), and an event published between
the snapshot read and that registration would be lost without a trace if it were the topic's last.
So snapshots read on a stream that is not yet *confirmed* are read once more when it is: when its
first batch arrives, or ``verify_delay`` after the host answered (an idle host). A topic that has
had an event through the stream needs no second reading: gap detection covers it. That confirmation
(`SnapshotSync.confirm`) lives here with the rounds it re-requests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from foundry.errors import ActorUnavailable, CommandFailed, FoundryError
from foundry.realtime.frames import event_frame, subscribed, waiting
from foundry.realtime.state import GatewayState, Pump, Sub, Topic
from foundry.realtime.topics import TopicRoute

log = logging.getLogger(__name__)

#: The owner action every topic's actor exposes.
SNAPSHOT_ACTION = "snapshot"


#: How long a snapshot may take before its subscribers are told they wait.
WAITING_AFTER_S = 3.0
SLOW_DETAIL = (
    f"the part of Foundry that holds this topic has not answered for {WAITING_AFTER_S:g} s; the "
    "subscription stays and its state follows once it answers"
)


def _waiting_detail(exc: ActorUnavailable) -> str:
    # The error's first sentence names what does not answer; the rest is advice for HTTP writes.
    reason = exc.detail.split(". ", 1)[0].rstrip(".")
    return (
        f"the part of Foundry that holds this topic does not answer right now ({reason}); the "
        "subscription stays and its state follows once it answers"
    )


@dataclass
class Snapshot:
    """A normalized answer of a ``snapshot`` action."""

    seq: int
    #: The snapshot frame (full-state topics), or None for a replay.
    frame: str | None
    #: Replayed events as (seq, frame), for log topics.
    events: list[tuple[int, str]]
    #: The replay reached the topic's seq (False when capped at ``max_replay_events``).
    complete: bool = True


class SnapshotSync:
    """Snapshot rounds, in-order delivery and stream confirmation for every subscriber.

    Args:
        state: the gateway's shared state.
        end_subscription: ``end_subscription(sub, code, detail)`` drops a subscription whose
            snapshot the owner refused, telling the client why (`RealtimeGateway`).
    """

    def __init__(self, state: GatewayState, end_subscription: Callable[[Sub, str, str], None]) -> None:
        self._state = state
        self._end_subscription = end_subscription

    # ----------------------------------------------------------------------------- rounds

    def request_sync(self, sub: Sub) -> None:
        """Have ``sub`` sent a snapshot or replay (buffering its live events until then)."""
        pump, topic = sub.pump, sub.state
        if pump is None or topic is None or sub.closed:
            return
        sub.syncing = True
        topic.waiting.add(sub)
        if topic.slow is not None:
            self._tell_waiting(topic, [sub], topic.slow)  # joins a wait already under way
        if pump.attached and topic.sync_task is None:
            self.start_round(pump, topic)

    def _tell_waiting(self, topic: Topic, subs: list[Sub], detail: str) -> None:
        """Say once to each of ``subs`` that ``topic``'s state cannot be read yet (and why)."""
        topic.slow = detail
        self.tell_waiting(subs, topic.name, detail)

    def tell_waiting(self, subs: list[Sub], topic: str, detail: str) -> None:
        """Send each of ``subs`` one ``waiting`` frame for ``topic`` (until it is served again)."""
        for sub in subs:
            if not sub.told_waiting and not sub.closed:
                sub.told_waiting = True
                self._state.push(sub.socket, waiting(topic, detail), live=False)

    def start_round(self, pump: Pump, topic: Topic) -> None:
        """Serve ``topic``'s waiting subscribers now (its host stream is attached)."""
        topic.sync_task = self._state.spawn(self._sync_round(pump, topic), f"realtime-sync:{topic.name}")

    async def _sync_round(self, pump: Pump, topic: Topic) -> None:
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
                fetch = asyncio.ensure_future(self._fetch(topic.route, since))
                try:
                    # Retried quietly (a restart takes a second or two), but a subscriber is told it
                    # waits rather than left to guess why nothing comes.
                    if not (await asyncio.wait({fetch}, timeout=WAITING_AFTER_S))[0]:
                        self._tell_waiting(topic, batch, SLOW_DETAIL)
                    snap = await fetch
                except ActorUnavailable as exc:
                    log.warning(
                        "realtime: snapshot of %s unavailable (%s); retrying in %.1fs", topic.name, exc, delay
                    )
                    still = [s for s in batch if not s.closed]
                    topic.waiting.update(still)
                    self._tell_waiting(topic, still, _waiting_detail(exc))
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
                finally:
                    if not fetch.done():
                        fetch.cancel()  # this round was cancelled (the stream broke, say)
                delay = 0.2
                topic.slow = None
                repeats = repeats + 1 if snap.complete else 0
                for sub in self._unheld(batch):
                    if sub.closed:
                        continue
                    self._apply(sub, snap)
                    if sub in topic.waiting:
                        continue  # asked again while we read: keep buffering for the next round
                    if not snap.complete:
                        self.request_sync(sub)  # the rest of a capped replay
                        continue
                    self.drain(sub)
                if unconfirmed and not topic.heard:
                    if pump.confirmed:
                        for sub in batch:
                            self.request_sync(sub)
                    else:
                        pump.unverified.add(topic.name)
                        if pump.verify_task is None:
                            pump.verify_task = self._state.spawn(
                                self._verify_later(pump, pump.generation), f"realtime-verify:{pump.name}"
                            )
        finally:
            topic.slow = None
            if topic.sync_task is asyncio.current_task():
                topic.sync_task = None

    @staticmethod
    def _unheld(batch: list[Sub]) -> list[Sub]:
        """The subscribers whose access is not being checked again; the others get their snapshot
        once it is (`RealtimeGateway._recheck`)."""
        for sub in batch:
            if sub.held:
                sub.sync_after_hold = True
        return [s for s in batch if not s.held]

    async def _fetch(self, route: TopicRoute, since: int | None) -> Snapshot:
        """Call the owner's ``snapshot`` action (paging through a replay) and check its answer."""
        state = self._state
        state.counters["snapshot_calls"] += 1
        result = await state.runtime.call(
            route.role, route.key, SNAPSHOT_ACTION, {"topic": route.topic, "since": since}
        )
        seq = _checked_seq(result, route)
        if "events" not in result:
            if "data" not in result:
                raise _malformed(route, "it has neither 'data' nor 'events'")
            return Snapshot(seq, event_frame(route.topic, "snapshot", seq, result["data"]), [])
        events = _checked_events(result, route)
        exhausted = False
        # The owner may page its replay: ask again after the last event until caught up or capped.
        while events and events[-1][0] < seq and len(events) < state.max_replay:
            state.counters["snapshot_calls"] += 1
            more = await state.runtime.call(
                route.role, route.key, SNAPSHOT_ACTION, {"topic": route.topic, "since": events[-1][0]}
            )
            seq = max(seq, _checked_seq(more, route))
            page = [e for e in _checked_events(more, route) if e[0] > events[-1][0]]
            if not page:
                exhausted = True  # the log holds nothing more (some seqs were not log entries)
                break
            events.extend(page)
        events = events[: state.max_replay]
        complete = exhausted or not events or events[-1][0] >= seq
        return Snapshot(seq, None, events, complete)

    def _apply(self, sub: Sub, snap: Snapshot) -> None:
        """Send a subscriber what it lacks from a snapshot or replay (after `subscribed`, the first
        time: the topic is known to exist once its snapshot was read)."""
        if sub.first:
            self._state.push(sub.socket, subscribed(sub.topic), live=False)
        sub.told_waiting = False
        last = sub.last_seq
        if sub.first and last is not None and snap.seq < last:
            # The client claims a seq the owner has not reached (a stale client after a data reset):
            # its `since` is ignored, so it is brought to the owner's state instead of waiting forever.
            log.info(
                "realtime: %s since=%d is ahead of seq %d; sending from scratch", sub.topic, last, snap.seq
            )
            last = None
            if snap.frame is None:
                # An append-only log read after that `since` holds nothing: read it from the start.
                sub.last_seq, sub.first = None, False
                self.request_sync(sub)
                return
        if snap.frame is not None:
            if last is None or snap.seq > last or (sub.force and snap.seq == last):
                self._state.push(sub.socket, snap.frame, live=False)
                last = snap.seq
        else:
            for seq, text in snap.events:
                if last is None or seq > last:
                    self._state.push(sub.socket, text, live=False)
                    last = seq
            if snap.complete:
                last = snap.seq if last is None else max(last, snap.seq)
        sub.last_seq = last
        sub.first = False
        sub.force = False

    # ----------------------------------------------------------------------------- delivery

    def drain(self, sub: Sub) -> None:
        """Deliver the live events buffered while a snapshot was read (those newer than it)."""
        pending, sub.pending = sub.pending, []
        sub.syncing = False
        for seq, text in pending:
            if sub.syncing or sub.held:  # a gap started another round: keep the rest for it
                sub.pending.append((seq, text))
            else:
                self.deliver(sub, seq, text)

    def deliver(self, sub: Sub, seq: int, text: str) -> None:
        """Send a live event unless already sent; a gap before it starts a new round instead."""
        last = sub.last_seq
        if last is not None and seq <= last:
            return  # already sent (in the snapshot or replay)
        if last is not None and seq != last + 1:
            self._state.counters["gaps"] += 1
            topic = sub.state
            if topic is not None and topic.gap_logged != seq:
                topic.gap_logged = seq
                log.info(
                    "realtime: %s jumped from seq %d to %d (events lost); resyncing", sub.topic, last, seq
                )
            sub.pending.append((seq, text))
            self.request_sync(sub)
            return
        sub.last_seq = seq
        self._state.push(sub.socket, text, live=True)

    # ----------------------------------------------------------------------------- confirmation

    def confirm(self, pump: Pump) -> None:
        """The host has registered our stream: re-read snapshots that were read before it may have."""
        pump.confirmed = True
        if pump.verify_task is not asyncio.current_task():
            self._state.cancel(pump.verify_task)
        pump.verify_task = None
        for listener in pump.listeners:
            listener.stream_live(pump.role, pump.shard)
        names, pump.unverified = pump.unverified, set()
        for name in names:
            topic = pump.topics.get(name)
            if topic is not None:
                for sub in topic.subs:
                    self.request_sync(sub)

    async def _verify_later(self, pump: Pump, generation: int) -> None:
        await asyncio.sleep(self._state.verify_delay)
        if not pump.stopped and pump.generation == generation and not pump.confirmed:
            self.confirm(pump)

    async def verify_answered(self, pump: Pump, generation: int) -> None:
        """Confirm an idle stream ``verify_delay`` after its host answers a call."""
        try:
            await self._state.runtime.wait_host(pump.role, pump.shard)
        except ActorUnavailable as exc:
            # The stream breaks too and is verified again once reopened.
            log.warning("realtime: host of %s unreachable while verifying its stream (%s)", pump.name, exc)
            if pump.verify_task is asyncio.current_task():
                pump.verify_task = None
            return
        await self._verify_later(pump, generation)


# ------------------------------------------------------------------------------------------ checks


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
