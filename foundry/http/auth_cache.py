"""Session and membership answers cached in the API process, kept honest by the hosts' event streams.

Every signed-in request checks its session (the user actor) and, on organization routes, the
caller's membership (the user's organization list and the organization's member role). Asked of the
actors that is two or three hops per request; answered from here it is none.

What keeps an entry from outliving the fact it caches:

* It is filled only while the event streams of the hosts it depends on are *live* (the realtime
  gateway's pumps: registered on the host, not broken), and only if nothing that could change it
  was heard between the start of the actor read and the fill (`Ticket`).
* The events that change it evict it as soon as they are delivered: ``sessionRevoked`` (sign-out),
  ``membersChanged`` (an organization's member left or changed role), ``appUpdated`` (the user's
  organization list, which travels whole in it).
* A broken stream, or one that fell behind its host (the overflow marker), forgets every entry of
  that host, and none is served or filled until the stream is live again: a request then asks the
  actors, so a sign-out during a host restart is never missed.
* A session's expiry is checked on every hit against the clock the actors use.
* Negative answers (unknown session, not a member) are never cached: a fresh sign-in or membership
  works at once. Memory is bounded (LRU).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from foundry.auth.cache_events import (
    APP_PREFIX,
    APP_UPDATED,
    MEMBERS_CHANGED,
    MEMBERS_PREFIX,
    SESSION_REVOKED,
    SESSIONS_PREFIX,
    session_digest,
)
from foundry.clock import Clock
from foundry.errors import InvalidInput
from foundry.http.stream_trust import MAX_INVALIDATIONS, Host, StreamTrust, Ticket
from foundry.runtime.client import Runtime
from foundry.runtime.events import Event

log = logging.getLogger(__name__)

#: Entries kept at most (least recently used dropped first).
MAX_SESSIONS = 10_000
MAX_MEMBERSHIPS = 10_000
USER_ROLE = "user"
ORGANIZATION_ROLE = "organization"

_Host = Host


class AuthCache:
    """Valid sessions and memberships of this API process (see the module docstring).

    It is a stream listener of the realtime gateway (`RealtimeGateway.watch`) for the ``user`` and
    ``organization`` roles: ``stream_live``, ``stream_lost``, ``stream_reset`` and ``events``.
    """

    def __init__(
        self,
        runtime: Runtime,
        clock: Clock,
        *,
        max_sessions: int = MAX_SESSIONS,
        max_memberships: int = MAX_MEMBERSHIPS,
        max_invalidations: int = MAX_INVALIDATIONS,
    ) -> None:
        self._runtime = runtime
        self._clock = clock
        #: Called with ``(user_id, session digest or None for all)`` when a session is signed out.
        self.revocation_listeners: list[Callable[[str, str | None], None]] = []
        self._max_sessions = max_sessions
        self._max_memberships = max_memberships
        #: (user, session digest) -> expiresAt (ms)
        self._sessions: OrderedDict[tuple[str, str], int] = OrderedDict()
        #: (user, organization) -> role
        self._memberships: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._trust = StreamTrust(max_invalidations)
        self._counters = {"hits": 0, "misses": 0, "fills": 0, "refused_fills": 0, "evictions": 0}

    # ----------------------------------------------------------------------------- stream listener

    def stream_live(self, role: str, shard: int) -> None:
        """The host's stream is registered on it: from now on every change there is heard."""
        self._trust.went_live((role, shard))
        log.info("auth cache: %s/%d live", role, shard)

    def stream_lost(self, role: str, shard: int) -> None:
        """The stream broke (or stopped): forget the host's entries and stop trusting it."""
        host = (role, shard)
        was_live = self._trust.went_away(host)
        self._forget_host(host)
        if was_live:
            log.info("auth cache: %s/%d lost; asking the actors until it is back", role, shard)

    def stream_reset(self, role: str, shard: int) -> None:
        """The stream is open but lost events (this process fell behind): forget the host's entries."""
        host = (role, shard)
        self._trust.fell_behind(host)
        self._forget_host(host)

    def events(self, role: str, shard: int, batch: list[Event]) -> None:
        for event in batch:
            topic = event.topic
            if event.event == SESSION_REVOKED and topic.startswith(SESSIONS_PREFIX):
                self._session_revoked(topic[len(SESSIONS_PREFIX) :], event.data)
            elif event.event == APP_UPDATED and topic.startswith(APP_PREFIX):
                self._organizations_changed(topic[len(APP_PREFIX) :], event.data)
            elif event.event == MEMBERS_CHANGED and topic.startswith(MEMBERS_PREFIX):
                self._members_changed(topic[len(MEMBERS_PREFIX) :])

    # ----------------------------------------------------------------------------- sessions

    def session_valid(self, user_id: str, session_id: str) -> bool:
        """True only for a cached, unexpired session on a live user host; False means "ask the actor"."""
        key = (user_id, session_digest(session_id))
        expires_at = self._sessions.get(key)
        if expires_at is None or not self._trust.trusted(self._hosts_of(user_id)):
            self._counters["misses"] += 1
            return False
        if expires_at <= self._clock.now_ms():
            del self._sessions[key]
            self._counters["misses"] += 1
            return False
        self._sessions.move_to_end(key)
        self._counters["hits"] += 1
        return True

    def begin_session(self, user_id: str) -> Ticket | None:
        return self._trust.begin(self._hosts_of(user_id))

    def fill_session(self, ticket: Ticket | None, user_id: str, session_id: str, expires_at: int) -> None:
        """Cache a session the user actor just confirmed (if nothing changed since ``ticket``)."""
        digest = session_digest(session_id)
        if not self._may_fill(ticket, ("session", user_id, digest)):
            return
        self._sessions[(user_id, digest)] = expires_at
        self._sessions.move_to_end((user_id, digest))
        while len(self._sessions) > self._max_sessions:
            self._sessions.popitem(last=False)

    # ----------------------------------------------------------------------------- memberships

    def role(self, user_id: str, organization_id: str) -> str | None:
        """The caller's cached role in the organization, or None ("ask the actors")."""
        key = (user_id, organization_id)
        role = self._memberships.get(key)
        if role is None or not self._trust.trusted(self._hosts_of(user_id, organization_id)):
            self._counters["misses"] += 1
            return None
        self._memberships.move_to_end(key)
        self._counters["hits"] += 1
        return role

    def begin_membership(self, user_id: str, organization_id: str) -> Ticket | None:
        return self._trust.begin(self._hosts_of(user_id, organization_id))

    def fill_membership(self, ticket: Ticket | None, user_id: str, organization_id: str, role: str) -> None:
        """Cache a membership both actors just confirmed (if nothing changed since ``ticket``)."""
        if not self._may_fill(ticket, ("user", user_id), ("org", organization_id)):
            return
        self._memberships[(user_id, organization_id)] = role
        self._memberships.move_to_end((user_id, organization_id))
        while len(self._memberships) > self._max_memberships:
            self._memberships.popitem(last=False)

    # ----------------------------------------------------------------------------- observability

    def stats(self) -> dict[str, Any]:
        return {
            "sessions": len(self._sessions),
            "memberships": len(self._memberships),
            "live": self._trust.live_hosts,
            **self._counters,
        }

    # ----------------------------------------------------------------------------- internals

    def _hosts_of(self, user_id: str, organization_id: str | None = None) -> tuple[_Host, ...] | None:
        """The hosts an answer depends on; None for a key no host can hold (never cached)."""
        try:
            user = (USER_ROLE, self._runtime.shard_for(USER_ROLE, user_id))
            if organization_id is None:
                return (user,)
            return (user, (ORGANIZATION_ROLE, self._runtime.shard_for(ORGANIZATION_ROLE, organization_id)))
        except InvalidInput:
            return None

    def _may_fill(self, ticket: Ticket | None, *keys: tuple[str, ...]) -> bool:
        ok = self._trust.may_fill(ticket, *keys)
        self._counters["fills" if ok else "refused_fills"] += 1
        return ok

    def _invalidate(self, key: tuple[str, ...]) -> None:
        self._trust.invalidate(key)

    def _forget_host(self, host: _Host) -> None:
        role, shard = host
        if role == USER_ROLE:
            for key in [k for k in self._sessions if self._runtime.shard_for(USER_ROLE, k[0]) == shard]:
                del self._sessions[key]
            self._drop_memberships(lambda key: self._runtime.shard_for(USER_ROLE, key[0]) == shard)
        elif role == ORGANIZATION_ROLE:
            self._drop_memberships(lambda key: self._runtime.shard_for(ORGANIZATION_ROLE, key[1]) == shard)

    def _drop_memberships(self, doomed: Callable[[tuple[str, str]], bool]) -> None:
        for key in [k for k in self._memberships if doomed(k)]:
            del self._memberships[key]
            self._counters["evictions"] += 1

    def _session_revoked(self, user_id: str, data: Any) -> None:
        digest = data.get("session") if isinstance(data, dict) else None
        for listener in self.revocation_listeners:
            # Websockets opened with the session close too (they authenticated once, at connect).
            listener(user_id, digest if isinstance(digest, str) else None)
        if not isinstance(digest, str):
            # A role bug: forget every session of the user rather than keep a revoked one.
            log.error("auth cache: sessionRevoked for %s without a session digest: %r", user_id, data)
            for key in [k for k in self._sessions if k[0] == user_id]:
                self._invalidate(("session", *key))
                del self._sessions[key]
            return
        self._invalidate(("session", user_id, digest))
        if self._sessions.pop((user_id, digest), None) is not None:
            self._counters["evictions"] += 1

    def _members_changed(self, organization_id: str) -> None:
        self._invalidate(("org", organization_id))
        self._drop_memberships(lambda key: key[1] == organization_id)

    def _organizations_changed(self, user_id: str, data: Any) -> None:
        """The user's organization list (in the app snapshot): drop memberships it no longer lists."""
        self._invalidate(("user", user_id))
        organizations = data.get("organizations") if isinstance(data, dict) else None
        try:
            listed = {o["id"] for o in organizations} if isinstance(organizations, list) else None
        except (TypeError, KeyError):
            listed = None
        if listed is None:
            log.error("auth cache: appUpdated for %s without an organization list", user_id)
        self._drop_memberships(lambda key: key[0] == user_id and (listed is None or key[1] not in listed))
