"""The rules that keep `AuthCache` from answering with something an event already invalidated."""

from __future__ import annotations

from pathlib import Path

import pytest

from foundry.auth.cache_events import session_digest
from foundry.clock import FakeClock
from foundry.config import Settings
from foundry.http.auth_cache import AuthCache
from foundry.runtime.events import Event
from foundry.runtime.inprocess import InProcessRuntime
from foundry.services import build_services

U, ORG = "u-1", "acme"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cache(tmp_path: Path, clock: FakeClock) -> AuthCache:
    runtime = InProcessRuntime(tmp_path, build_services(Settings(data_dir=tmp_path)))
    cache = AuthCache(runtime, clock, max_sessions=2, max_memberships=2, max_invalidations=3)
    cache.stream_live("user", 0)
    cache.stream_live("organization", 0)
    return cache


def revoked(user_id: str, session_id: str) -> Event:
    return Event(f"auth-sessions:{user_id}", "sessionRevoked", 1, {"session": session_digest(session_id)})


def app_updated(user_id: str, orgs: list[str]) -> Event:
    return Event(f"app:{user_id}", "appUpdated", 1, {"organizations": [{"id": o} for o in orgs]})


def test_a_session_is_served_until_revoked_or_expired(cache: AuthCache, clock: FakeClock) -> None:
    cache.fill_session(cache.begin_session(U), U, "s1", clock.now_ms() + 1000)
    cache.fill_session(cache.begin_session(U), U, "s2", clock.now_ms() + 1000)
    assert cache.session_valid(U, "s1")
    assert cache.session_valid(U, "s2")
    cache.events("user", 0, [revoked(U, "s1")])
    assert not cache.session_valid(U, "s1")
    assert cache.session_valid(U, "s2")
    clock.advance(1000)
    assert not cache.session_valid(U, "s2")


def test_a_fill_that_raced_its_invalidation_is_refused(cache: AuthCache, clock: FakeClock) -> None:
    ticket = cache.begin_session(U)  # the actor read starts...
    cache.events("user", 0, [revoked(U, "s1")])  # ...the sign-out is heard before its answer
    cache.fill_session(ticket, U, "s1", clock.now_ms() + 1000)
    assert not cache.session_valid(U, "s1")
    ticket = cache.begin_membership(U, ORG)
    cache.events("organization", 0, [Event(f"auth-members:{ORG}", "membersChanged", 1, {})])
    cache.fill_membership(ticket, U, ORG, "admin")
    assert cache.role(U, ORG) is None


def test_nothing_is_served_or_filled_while_a_stream_is_down(cache: AuthCache, clock: FakeClock) -> None:
    cache.fill_session(cache.begin_session(U), U, "s1", clock.now_ms() + 1000)
    ticket = cache.begin_session(U)
    cache.stream_lost("user", 0)
    assert not cache.session_valid(U, "s1")
    assert cache.begin_session(U) is None
    cache.stream_live("user", 0)
    cache.fill_session(ticket, U, "s2", clock.now_ms() + 1000)  # begun under the lost stream
    assert not cache.session_valid(U, "s1")
    assert not cache.session_valid(U, "s2")
    cache.fill_membership(cache.begin_membership(U, ORG), U, ORG, "member")
    cache.stream_reset("organization", 0)  # fell behind: events lost, the stream stays open
    assert cache.role(U, ORG) is None


def test_an_organization_list_change_drops_only_the_organizations_it_lost(cache: AuthCache) -> None:
    cache.fill_membership(cache.begin_membership(U, "acme"), U, "acme", "admin")
    cache.fill_membership(cache.begin_membership(U, "globex"), U, "globex", "member")
    cache.events("user", 0, [app_updated(U, ["acme"])])
    assert cache.role(U, "acme") == "admin"
    assert cache.role(U, "globex") is None


def test_memory_is_bounded(cache: AuthCache, clock: FakeClock) -> None:
    for s in ("s1", "s2", "s3"):
        cache.fill_session(cache.begin_session(U), U, s, clock.now_ms() + 1000)
    assert not cache.session_valid(U, "s1")
    assert cache.session_valid(U, "s3")
    assert cache.stats()["sessions"] == 2
    # Invalidations forgotten to stay bounded refuse every fill older than them.
    ticket = cache.begin_session(U)
    cache.events("user", 0, [revoked("other", f"x{i}") for i in range(4)])
    cache.fill_session(ticket, U, "s4", clock.now_ms() + 1000)
    assert not cache.session_valid(U, "s4")
