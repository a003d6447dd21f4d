"""The reads routes answer from the snapshot cache (`foundry.http.snapshot_cache`), asking the actor
on a miss and caching its answer.

Every helper works without a cache too (an app built without one asks the actors each time).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import HTTPConnection

from actors.task.naming import task_key
from foundry.http.read_your_writes import client_seqs
from foundry.http.snapshot_cache import APP_PREFIX, TASK_PREFIX, Key, SnapshotCache, guard_topic
from foundry.runtime.client import Runtime

Read = Callable[[], Awaitable[tuple[Any, int | None]]]


def snapshot_cache_of(conn: HTTPConnection) -> SnapshotCache | None:
    cache: SnapshotCache | None = getattr(conn.app.state, "snapshot_cache", None)
    return cache


async def _cached(conn: HTTPConnection, key: Key, read: Read) -> Any:
    cache = snapshot_cache_of(conn)
    if cache is None:
        return (await read())[0]
    guard = guard_topic(key)
    need = cache.required(guard, client_seqs(conn)) if guard is not None else 0
    hit = cache.get(key, need)
    if hit is not None:
        return hit
    ticket = cache.begin(key)
    data, seq = await read()
    if seq != 0:
        # Seq 0: nothing was ever published on the topic (a task whose set-up has not arrived, its
        # detail built from the organization's row), so no event would tell of its next change.
        cache.fill(ticket, key, data, seq)
    return data


async def _topic_snapshot(runtime: Runtime, role: str, key: str, topic: str) -> tuple[Any, int]:
    answer: dict[str, Any] = await runtime.call(role, key, "snapshot", {"topic": topic})
    return answer["data"], int(answer["seq"])


async def app_snapshot(conn: HTTPConnection, runtime: Runtime, user_id: str) -> dict[str, Any]:
    """``GET /v1/app``'s snapshot of a signed-in user (the ``app:<user>`` topic's data)."""
    topic = f"{APP_PREFIX}{user_id}"
    snapshot: dict[str, Any] = await _cached(
        conn, ("topic", topic), lambda: _topic_snapshot(runtime, "user", user_id, topic)
    )
    return snapshot


async def task_detail(
    conn: HTTPConnection, runtime: Runtime, organization_id: str, task_id: str
) -> dict[str, Any]:
    """The task detail without per-user state (the ``task:<org>:<task>`` topic's data)."""
    topic = f"{TASK_PREFIX}{organization_id}:{task_id}"
    detail: dict[str, Any] = await _cached(
        conn,
        ("topic", topic),
        lambda: _topic_snapshot(runtime, "task", task_key(organization_id, task_id), topic),
    )
    cache = snapshot_cache_of(conn)
    if cache is not None:
        # Transcript events move a session's last seq without a ``taskUpdated``: the newest heard.
        for session in detail.get("sessions", []):
            heard = cache.session_seq(f"session:{organization_id}:{task_id}:{session['sessionId']}")
            if heard > session.get("lastSeq", 0):
                session["lastSeq"] = heard
    return detail


async def task_summary(
    conn: HTTPConnection, runtime: Runtime, organization_id: str, task_id: str
) -> dict[str, Any]:
    """The task's row in its organization (`NotFound` when the organization has none)."""

    async def read() -> tuple[Any, int | None]:
        return await runtime.call("organization", organization_id, "task_summary", {"taskId": task_id}), None

    summary: dict[str, Any] = await _cached(conn, ("summary", organization_id, task_id), read)
    return summary


async def viewer_state(
    conn: HTTPConnection, runtime: Runtime, user_id: str, organization_id: str, task_id: str
) -> dict[str, Any]:
    """The user's own state of a task: active session, unread flags, drafts."""

    async def read() -> tuple[Any, int | None]:
        body = {"organizationId": organization_id, "taskId": task_id}
        return await runtime.call("user", user_id, "get_task_state", body), None

    state: dict[str, Any] = await _cached(conn, ("viewer", user_id, organization_id, task_id), read)
    return state
