"""The rules that keep `SnapshotCache` from answering older than an event it heard or a write its
caller made, and the read-your-writes cookie's handling of hostile values."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.task.naming import task_key
from foundry.config import Settings
from foundry.http.read_your_writes import MAX_COOKIE_CHARS, MAX_RENDERED_CHARS, MAX_TOPICS, parse, render
from foundry.http.snapshot_cache import SnapshotCache
from foundry.runtime.events import Event
from foundry.runtime.inprocess import InProcessRuntime
from foundry.services import build_services

TASK = "task:acme:t1"
TASK_KEY = ("topic", TASK)
SUMMARY_KEY = ("summary", "acme", "t1")
VIEWER_KEY = ("viewer", "u-1", "acme", "t1")


@pytest.fixture
def cache(tmp_path: Path) -> SnapshotCache:
    runtime = InProcessRuntime(tmp_path, build_services(Settings(data_dir=tmp_path)))
    cache = SnapshotCache(runtime, task_key, max_bytes=10_000)
    for role in ("task", "user", "organization"):
        cache.stream_live(role, 0)
    return cache


def task_updated(seq: int, title: str) -> Event:
    return Event(TASK, "taskUpdated", seq, {"title": title})


def test_whole_state_events_keep_an_entry_current_and_hits_are_private_copies(cache: SnapshotCache) -> None:
    cache.fill(cache.begin(TASK_KEY), TASK_KEY, {"title": "one"}, seq=3)
    hit = cache.get(TASK_KEY, 0)
    assert hit == {"title": "one"}
    hit["title"] = "changed by a route"
    assert cache.get(TASK_KEY, 0) == {"title": "one"}
    cache.events("task", 0, [task_updated(4, "two")])
    assert cache.get(TASK_KEY, 0) == {"title": "two"}
    # An older event (a replay) never goes back.
    cache.events("task", 0, [task_updated(2, "old")])
    assert cache.get(TASK_KEY, 0) == {"title": "two"}


def test_a_read_that_raced_an_event_is_not_stored(cache: SnapshotCache) -> None:
    ticket = cache.begin(TASK_KEY)  # the actor read starts (at seq 3)...
    cache.events("task", 0, [task_updated(4, "newer")])  # ...the next change is heard first
    cache.fill(ticket, TASK_KEY, {"title": "older"}, seq=3)
    assert cache.get(TASK_KEY, 0) is None


def test_a_write_through_this_process_or_the_clients_cookie_makes_older_entries_misses(
    cache: SnapshotCache,
) -> None:
    cache.fill(cache.begin(TASK_KEY), TASK_KEY, {"title": "one"}, seq=3)
    cache.wrote({TASK: 5, "session:acme:t1:s1": 99})
    assert cache.get(TASK_KEY, cache.required(TASK)) is None  # behind this process's own write
    cache.events("task", 0, [task_updated(5, "renamed")])
    assert cache.get(TASK_KEY, cache.required(TASK)) == {"title": "renamed"}
    # A write through another API process, carried by the client.
    assert cache.get(TASK_KEY, cache.required(TASK, {TASK: 6})) is None
    assert cache.get(TASK_KEY, cache.required(TASK, {"task:acme:other": 60})) == {"title": "renamed"}


def test_a_lost_or_lagging_stream_forgets_its_hosts_entries_until_live_again(cache: SnapshotCache) -> None:
    cache.fill(cache.begin(TASK_KEY), TASK_KEY, {"title": "one"}, seq=3)
    cache.fill(cache.begin(VIEWER_KEY), VIEWER_KEY, {"sessions": []})
    cache.stream_lost("task", 0)
    assert cache.get(TASK_KEY, 0) is None
    assert cache.begin(TASK_KEY) is None  # nothing is filled while the stream is down
    assert cache.get(VIEWER_KEY, 0) == {"sessions": []}  # another host's entry stays
    cache.stream_live("task", 0)
    ticket = cache.begin(TASK_KEY)
    cache.stream_reset("task", 0)  # fell behind while the read ran
    cache.fill(ticket, TASK_KEY, {"title": "one"}, seq=3)
    assert cache.get(TASK_KEY, 0) is None


def test_summaries_follow_their_organizations_events(cache: SnapshotCache) -> None:
    cache.fill(cache.begin(SUMMARY_KEY), SUMMARY_KEY, {"taskId": "t1", "title": "one"})
    update = {"upserted": [{"taskId": "t1", "title": "two"}], "removed": []}
    cache.events("organization", 0, [Event("organization:acme", "taskSummariesUpdated", 7, update)])
    assert cache.get(SUMMARY_KEY, 0) == {"taskId": "t1", "title": "two"}
    # A write that published seq 8 on the organization: the entry (at 7) is behind it.
    assert cache.get(SUMMARY_KEY, cache.required("organization:acme", {"organization:acme": 8})) is None
    removed = {"upserted": [], "removed": ["t1"]}
    cache.events("organization", 0, [Event("organization:acme", "taskSummariesUpdated", 9, removed)])
    assert cache.get(SUMMARY_KEY, 0) is None


def test_a_viewer_state_change_or_a_malformed_event_drops_what_it_may_touch(cache: SnapshotCache) -> None:
    cache.fill(cache.begin(VIEWER_KEY), VIEWER_KEY, {"sessions": []})
    other = ("viewer", "u-1", "acme", "t2")
    cache.fill(cache.begin(other), other, {"sessions": []})
    changed = {"organizationId": "acme", "taskId": "t1"}
    cache.events("user", 0, [Event("viewer-state:u-1", "viewerStateChanged", 2, changed)])
    assert cache.get(VIEWER_KEY, 0) is None
    assert cache.get(other, 0) == {"sessions": []}
    ticket = cache.begin(VIEWER_KEY)
    cache.events("user", 0, [Event("viewer-state:u-1", "viewerStateChanged", 3, {"taskId": 5})])
    assert cache.get(other, 0) is None  # a malformed event drops all of the user's states
    cache.fill(ticket, VIEWER_KEY, {"sessions": []})  # and a read that raced it is refused
    assert cache.get(VIEWER_KEY, 0) is None


def test_the_byte_budget_drops_the_least_recently_used(cache: SnapshotCache) -> None:
    for n in range(20):
        key = ("topic", f"task:acme:t{n}")
        cache.fill(cache.begin(key), key, {"blob": "x" * 900}, seq=1)
    assert cache.stats()["bytes"] <= 10_000
    assert cache.get(("topic", "task:acme:t19"), 0) is not None
    assert cache.get(("topic", "task:acme:t0"), 0) is None


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        "task:acme:t1!",
        "task:acme:t1!-3",
        "task:acme:t1!1e9",
        "task:acme:t1!12345678901234567",
        "session:acme:t1:s1!5",  # not a guarded topic
        "TASK:acme!4",
        "task:acme:t1!5;evil=1",
        "x" * (MAX_COOKIE_CHARS + 1),
        "task:" + "a" * 600 + "!3",
        "task:acme:t 1!3",
    ],
)
def test_a_malformed_cookie_value_asks_nothing(value: str) -> None:
    assert parse(value) == {}


def test_the_cookie_keeps_the_newest_topics_and_round_trips() -> None:
    seqs = {f"task:acme:t{n}": n + 1 for n in range(MAX_TOPICS + 4)}
    kept = parse(render(seqs))
    assert len(kept) == MAX_TOPICS
    assert "task:acme:t0" not in kept
    assert kept[f"task:acme:t{MAX_TOPICS + 3}"] == MAX_TOPICS + 4
    assert parse("app:alice@x.y=z!4|task:acme:t1!2|task:acme:t1!9") == {
        "app:alice@x.y=z": 4,
        "task:acme:t1": 9,
    }


def test_transcript_seqs_are_heard_for_cached_details_and_forgotten_with_their_stream(
    cache: SnapshotCache,
) -> None:
    cache.fill(cache.begin(TASK_KEY), TASK_KEY, {"sessions": [{"sessionId": "s1", "lastSeq": 5}]}, seq=3)
    cache.events("task", 0, [Event("session:acme:t1:s1", "agentUpdate", n, {}) for n in range(6, 10)])
    assert cache.session_seq("session:acme:t1:s1") == 9
    assert cache.get(TASK_KEY, 0) is not None  # a transcript event does not drop the detail
    cache.stream_lost("task", 0)
    assert cache.session_seq("session:acme:t1:s1") == 0
    assert cache.get(TASK_KEY, 0) is None


def test_the_cookie_stays_within_what_a_browser_keeps_and_keeps_the_newest_writes() -> None:
    org, task = "o" * 120, "t" * 120
    long_topics = {f"task:{org}:{task}{n}": n + 1 for n in range(MAX_TOPICS)}
    assert len("|".join(f"{t}!{s}" for t, s in long_topics.items())) > MAX_RENDERED_CHARS
    value = render(long_topics)
    assert len(value) <= MAX_RENDERED_CHARS
    kept = parse(value)
    assert f"task:{org}:{task}{MAX_TOPICS - 1}" in kept  # the newest write is always kept
    assert f"task:{org}:{task}0" not in kept
