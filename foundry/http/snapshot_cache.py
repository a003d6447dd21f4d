"""Snapshots cached in the API process, kept current by the hosts' event streams, never older than
the caller's own writes.

A read of ``GET /v1/app`` or ``GET …/tasks/{taskId}`` costs a Ray hop per actor it asks (the task,
the organization for the task's summary, the user for the caller's own state of it). This cache
answers them from memory:

* ``topic`` entries: the data of a full-state topic, ``task:<org>:<task>`` (``taskUpdated``) and
  ``app:<user>`` (``appUpdated``): every change of such a topic is published as an event carrying the
  whole new state, so an entry is *updated* by the events, not merely dropped.
* ``summary`` entries: a task's row in its organization (``task_summary``), updated from the
  organization's ``taskSummariesUpdated`` (whole rows) and dropped when the task leaves the list.
* ``viewer`` entries: the caller's own state of a task (``get_task_state``), dropped on the user
  actor's ``viewerStateChanged``.

Each entry carries a seq of its *guard topic* (the topic itself; ``organization:<org>`` for a
summary; ``viewer-state:<user>`` for a viewer state): the newest event of that topic the entry is known
to reflect. A read asks for a seq (`required`): the largest of what writes through this process
committed on the guard topic (`wrote`, from the runtime's outcomes) and what the client says it wrote
through any API process (the read-your-writes cookie); an entry below it is a miss, answered by the
actor (which has the write) and stored again.

Liveness, generations and races between actor reads and events are `StreamTrust`'s, as for the
session cache: nothing is served from a host whose stream is not live, and a fill that raced a change
of its key is refused. Entries are stored as JSON bytes (a hit returns a fresh copy the route may
change), within a byte budget (LRU).
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from foundry.auth.cache_events import VIEWER_PREFIX, VIEWER_STATE_CHANGED
from foundry.errors import InvalidInput
from foundry.http.stream_trust import Host, StreamTrust, Ticket
from foundry.runtime.client import Runtime
from foundry.runtime.events import Event

log = logging.getLogger(__name__)

#: Bytes of cached JSON kept at most (least recently used dropped first).
MAX_BYTES = 64 * 1024 * 1024
#: Topics whose floor (the newest seq written through this process) is remembered.
MAX_FLOORS = 100_000

TASK_PREFIX = "task:"
APP_PREFIX = "app:"
ORGANIZATION_PREFIX = "organization:"
SESSION_PREFIX = "session:"
#: Guard topics a read may require a seq of (the read-your-writes cookie carries only these).
GUARDED_PREFIXES = (TASK_PREFIX, APP_PREFIX, ORGANIZATION_PREFIX, VIEWER_PREFIX)
#: The event that carries the whole state of a full-state topic.
FULL_STATE_EVENT = {TASK_PREFIX: "taskUpdated", APP_PREFIX: "appUpdated"}
SUMMARIES_UPDATED = "taskSummariesUpdated"

#: Roles whose host streams feed this cache.
ROLES = ("task", "user", "organization")

Key = tuple[str, ...]


@dataclass
class _Entry:
    seq: int
    blob: bytes
    host: Host


class SnapshotCache:
    """See the module docstring. A stream listener of the realtime gateway for `ROLES`."""

    def __init__(
        self,
        runtime: Runtime,
        task_key: Callable[[str, str], str],
        *,
        max_bytes: int = MAX_BYTES,
        max_floors: int = MAX_FLOORS,
    ) -> None:
        self._runtime = runtime
        self._task_key = task_key
        self._max_bytes = max_bytes
        self._max_floors = max_floors
        self._trust = StreamTrust()
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._bytes = 0
        #: guard topic -> newest seq committed on it by a write through this process.
        self._floors: OrderedDict[str, int] = OrderedDict()
        #: guard topic -> newest seq heard on its stream (the seq an actor read is known to reach).
        self._heard: OrderedDict[str, int] = OrderedDict()
        #: session topic -> newest seq heard (see `events`).
        self._session_seqs: dict[str, int] = {}
        self._counters = {"hits": 0, "misses": 0, "behind": 0, "fills": 0, "refused_fills": 0, "updates": 0}

    # ----------------------------------------------------------------------------- reads

    def required(self, guard: str, client_seqs: dict[str, int] | None = None) -> int:
        """The seq a read guarded by ``guard`` must reach: this process's writes and the client's."""
        need = self._floors.get(guard, 0)
        if client_seqs:
            need = max(need, client_seqs.get(guard, 0))
        return need

    def get(self, key: Key, need: int) -> Any | None:
        """A fresh copy of the cached data of ``key`` at seq ``need`` or later; None for a miss."""
        entry = self._entries.get(key)
        if entry is None or not self._trust.is_live(entry.host):
            self._counters["misses"] += 1
            return None
        if entry.seq < need:
            self._counters["behind"] += 1
            return None
        self._entries.move_to_end(key)
        self._counters["hits"] += 1
        return orjson.loads(entry.blob)

    def begin(self, key: Key) -> Ticket | None:
        """A ticket for an actor read of ``key`` (None: the answer will not be cached)."""
        host = self._host_of(key)
        return self._trust.begin((host,) if host is not None else None)

    def fill(self, ticket: Ticket | None, key: Key, data: Any, seq: int | None = None) -> None:
        """Store what an actor just answered for ``key`` (at ``seq``, or at the newest seq heard on
        its guard topic), unless something changed since ``ticket`` or a newer entry is there."""
        host = self._host_of(key)
        guard = guard_topic(key)
        if seq is None:
            seq = self._heard.get(guard, 0) if guard is not None else 0
        entry = self._entries.get(key)
        ok = (
            host is not None
            and self._trust.may_fill(ticket, key, _group(key))
            and (entry is None or entry.seq < seq)
        )
        self._counters["fills" if ok else "refused_fills"] += 1
        if ok and host is not None:
            self._store(key, _Entry(seq, _encode(data), host))

    # ----------------------------------------------------------------------------- writes

    def wrote(self, seqs: dict[str, int]) -> None:
        """Writes through this process committed ``seqs``: later reads must reach them."""
        for topic, seq in seqs.items():
            if topic.startswith(GUARDED_PREFIXES) and seq > self._floors.get(topic, 0):
                self._floors[topic] = seq
                self._floors.move_to_end(topic)
        while len(self._floors) > self._max_floors:
            self._floors.popitem(last=False)

    # ----------------------------------------------------------------------------- stream listener

    def stream_live(self, role: str, shard: int) -> None:
        self._trust.went_live((role, shard))

    def stream_lost(self, role: str, shard: int) -> None:
        self._trust.went_away((role, shard))
        self._forget_host((role, shard))

    def stream_reset(self, role: str, shard: int) -> None:
        self._trust.fell_behind((role, shard))
        self._forget_host((role, shard))

    def events(self, role: str, shard: int, batch: list[Event]) -> None:
        host = (role, shard)
        session_seqs = self._session_seqs
        for event in batch:
            topic = event.topic
            if topic.startswith(SESSION_PREFIX):
                # Transcripts: the bulk of a task host's stream. Only their seqs are kept, for the
                # sessions' ``lastSeq`` in a cached task detail (a transcript event publishes no
                # ``taskUpdated``): a plain assignment per event.
                session_seqs[topic] = event.seq
                continue
            if topic.startswith(TASK_PREFIX):
                self._heard_seq(topic, event.seq)
                self._full_state(("topic", topic), event, FULL_STATE_EVENT[TASK_PREFIX], host)
            elif topic.startswith(APP_PREFIX):
                self._heard_seq(topic, event.seq)
                self._full_state(("topic", topic), event, FULL_STATE_EVENT[APP_PREFIX], host)
            elif topic.startswith(ORGANIZATION_PREFIX):
                self._heard_seq(topic, event.seq)
                if event.event == SUMMARIES_UPDATED:
                    self._summaries(topic[len(ORGANIZATION_PREFIX) :], event, host)
            elif topic.startswith(VIEWER_PREFIX):
                self._heard_seq(topic, event.seq)
                if event.event == VIEWER_STATE_CHANGED:
                    self._viewer_changed(topic[len(VIEWER_PREFIX) :], event.data)
        if len(session_seqs) > self._max_floors:
            # Forgotten seqs would leave cached details behind their transcripts: drop those too.
            session_seqs.clear()
            self._drop_where(lambda k: k[0] == "topic" and k[1].startswith(TASK_PREFIX))

    def session_seq(self, topic: str) -> int:
        """The newest seq heard on a session topic (0: none heard since its stream was live)."""
        return self._session_seqs.get(topic, 0)

    # ----------------------------------------------------------------------------- observability

    def stats(self) -> dict[str, Any]:
        return {
            "entries": len(self._entries),
            "bytes": self._bytes,
            "live": self._trust.live_hosts,
            **self._counters,
        }

    # ----------------------------------------------------------------------------- internals

    def _full_state(self, key: Key, event: Event, full_event: str, host: Host) -> None:
        entry = self._entries.get(key)
        if event.event == full_event and entry is not None:
            if event.seq > entry.seq:
                self._store(key, _Entry(event.seq, _encode(event.data), host))
                self._counters["updates"] += 1
            return
        # Not cached (or an event that is not the whole state): a read racing it must not store an
        # answer older than the event.
        self._trust.invalidate(key)
        if entry is not None:
            self._drop(key)

    def _summaries(self, organization_id: str, event: Event, host: Host) -> None:
        data = event.data if isinstance(event.data, dict) else {}
        upserted = data.get("upserted")
        removed = data.get("removed")
        if not isinstance(upserted, list) or not isinstance(removed, list):
            log.error("snapshot cache: %s of %s without lists: %r", SUMMARIES_UPDATED, organization_id, data)
            self._trust.invalidate(("group", "summary", organization_id))
            self._drop_where(lambda k: k[0] == "summary" and k[1] == organization_id)
            return
        for summary in upserted:
            task_id = summary.get("taskId") if isinstance(summary, dict) else None
            if not isinstance(task_id, str):
                continue
            key: Key = ("summary", organization_id, task_id)
            entry = self._entries.get(key)
            if entry is not None and event.seq > entry.seq:
                self._store(key, _Entry(event.seq, _encode(summary), host))
                self._counters["updates"] += 1
            elif entry is None:
                self._trust.invalidate(key)
        for task_id in removed:
            key = ("summary", organization_id, str(task_id))
            self._trust.invalidate(key)
            self._drop(key)

    def _viewer_changed(self, user_id: str, data: Any) -> None:
        organization_id = data.get("organizationId") if isinstance(data, dict) else None
        task_id = data.get("taskId") if isinstance(data, dict) else None
        if not isinstance(organization_id, str) or not isinstance(task_id, str):
            log.error("snapshot cache: %s for %s without a task: %r", VIEWER_STATE_CHANGED, user_id, data)
            self._trust.invalidate(("group", "viewer", user_id))
            self._drop_where(lambda k: k[0] == "viewer" and k[1] == user_id)
            return
        key: Key = ("viewer", user_id, organization_id, task_id)
        self._trust.invalidate(key)
        self._drop(key)

    def _heard_seq(self, topic: str, seq: int) -> None:
        if seq > self._heard.get(topic, 0):
            self._heard[topic] = seq
            self._heard.move_to_end(topic)
            if len(self._heard) > self._max_floors:
                self._heard.popitem(last=False)

    def _host_of(self, key: Key) -> Host | None:
        """The host whose stream tells of changes to ``key``; None for a key no host can hold."""
        try:
            kind = key[0]
            if kind == "topic":
                topic = key[1]
                if topic.startswith(TASK_PREFIX):
                    organization_id, _, task_id = topic[len(TASK_PREFIX) :].partition(":")
                    return ("task", self._runtime.shard_for("task", self._task_key(organization_id, task_id)))
                if topic.startswith(APP_PREFIX):
                    return ("user", self._runtime.shard_for("user", topic[len(APP_PREFIX) :]))
                return None
            if kind == "summary":
                return ("organization", self._runtime.shard_for("organization", key[1]))
            if kind == "viewer":
                return ("user", self._runtime.shard_for("user", key[1]))
        except InvalidInput:
            return None
        return None

    def _store(self, key: Key, entry: _Entry) -> None:
        self._drop(key)
        self._entries[key] = entry
        self._bytes += len(entry.blob)
        while self._bytes > self._max_bytes and self._entries:
            _, oldest = self._entries.popitem(last=False)
            self._bytes -= len(oldest.blob)

    def _drop(self, key: Key) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old.blob)

    def _drop_where(self, doomed: Callable[[Key], bool]) -> None:
        for key in [k for k in self._entries if doomed(k)]:
            self._drop(key)

    def _forget_host(self, host: Host) -> None:
        self._drop_where(lambda k: self._entries[k].host == host)
        if host[0] == "task":
            # Session seqs are kept for every task host together: forget them all, and the details
            # of every task host with them (they would be patched with nothing newer).
            self._session_seqs.clear()
            self._drop_where(lambda k: k[0] == "topic" and k[1].startswith(TASK_PREFIX))


def guard_topic(key: Key) -> str | None:
    """The topic whose seq says how new an entry is (see the module docstring)."""
    if key[0] == "topic":
        return key[1]
    if key[0] == "summary":
        return f"{ORGANIZATION_PREFIX}{key[1]}"
    if key[0] == "viewer":
        return f"{VIEWER_PREFIX}{key[1]}"
    return None


def _group(key: Key) -> Key:
    """What a malformed event invalidates as a whole: an organization's summaries, a user's viewer
    states (a topic entry is its own group)."""
    return ("group", key[0], key[1]) if key[0] in ("summary", "viewer") else key


def _encode(data: Any) -> bytes:
    try:
        return orjson.dumps(data)
    except TypeError:
        # Beyond orjson (an integer over 64 bits, say): the standard library's JSON reads the same.
        return json.dumps(data).encode()
