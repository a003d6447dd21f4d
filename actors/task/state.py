"""Reads and writes of a task's tables shared by its commands, actions and jobs.

Two topics belong to a task:

* ``task:<org>:<task>`` — ``taskUpdated`` with the full task detail after every change a
  viewer of the task page would notice; the snapshot action answers ``{"seq", "data"}``.
* ``session:<org>:<task>:<session>`` — the session's append-only transcript. Every row of
  ``session_events`` is published with the same seq as its row, so ``since`` means the same thing
  for the HTTP page and for the websocket replay.

`refresh` is the one place that derives the task status, publishes the detail and pushes the
summary to the organization (task → organization, which broadcasts).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from actors.task.naming import split_task_key
from actors.task.schema import messages, permission_requests, session_events, sessions, task
from foundry.db.engine import in_connection_thread
from foundry.errors import Conflict, NotFound
from foundry.runtime.context import InstanceContext
from foundry.runtime.tables import current_seq

log = logging.getLogger(__name__)

ORGANIZATION_ROLE = "organization"
AUDIT_ROLE = "audit-log"
SANDBOX_ROLE = "sandbox"
USER_ROLE = "user"

#: Seconds an action waits for ``initialize`` when a request overtakes it (it is queued first).
INIT_WAIT_S = 15.0


def task_topic(organization_id: str, task_id: str) -> str:
    return f"task:{organization_id}:{task_id}"


def session_topic(organization_id: str, task_id: str, session_id: str) -> str:
    return f"session:{organization_id}:{task_id}:{session_id}"


def turn_job_name(session_id: str) -> str:
    return f"turn:{session_id}"


# ------------------------------------------------------------------------------------------ loading


async def load_task(conn: AsyncConnection) -> sa.Row[Any] | None:
    return (await conn.execute(sa.select(task).where(task.c.id == 1))).first()


class TaskNotInitialized(NotFound):
    """The task actor has not received ``initialize`` yet (it is on its way from the organization's
    outbox, or the task does not exist). Callers that know the task exists retry."""


async def require_task(conn: AsyncConnection, key: str) -> sa.Row[Any]:
    row = await load_task(conn)
    if row is None:
        raise TaskNotInitialized(f"task {split_task_key(key)[1]!r} not found (not initialized)")
    return row


async def wait_for_task(ctx: InstanceContext) -> sa.Row[Any]:
    """The task row, waiting briefly when the caller overtook ``initialize`` (which is already queued:
    the organization's create returns only once it is)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + INIT_WAIT_S
    while True:
        async with ctx.read() as conn:
            row = await load_task(conn)
        if row is not None:
            return row
        if loop.time() >= deadline:
            raise TaskNotInitialized(f"task {split_task_key(ctx.key)[1]!r} not found (not initialized)")
        await asyncio.sleep(0.02)


def assert_not_archived(row: sa.Row[Any]) -> None:
    if row.archived_at is not None:
        raise Conflict(f"task {row.task_id!r} is archived; its sandbox was destroyed")


async def load_session(conn: AsyncConnection, session_id: str) -> sa.Row[Any] | None:
    return (await conn.execute(sa.select(sessions).where(sessions.c.session_id == session_id))).first()


async def require_session(conn: AsyncConnection, session_id: str) -> sa.Row[Any]:
    row = await load_session(conn, session_id)
    if row is None:
        raise NotFound(f"session {session_id!r} not found in this task")
    return row


async def require_open_session(conn: AsyncConnection, session_id: str) -> sa.Row[Any]:
    row = await require_session(conn, session_id)
    if row.status == "closed":
        raise Conflict(f"session {session_id!r} is closed; open a new session to continue")
    return row


async def next_queued_message(conn: AsyncConnection, session_id: str) -> sa.Row[Any] | None:
    return (
        await conn.execute(
            sa.select(messages)
            .where(messages.c.session_id == session_id, messages.c.status == "queued")
            .order_by(messages.c.id)
            .limit(1)
        )
    ).first()


# ------------------------------------------------------------------------------------------ events


_INSERT_EVENTS = (
    "INSERT INTO session_events (session_id, seq, event, data, created_at) VALUES (?, ?, ?, ?, ?)"
)
_SET_LAST_EVENT_ID = "UPDATE sessions SET last_event_id = ? WHERE session_id = ?"
# The topic's last seq and the log's last row in one statement: this runs for every batch of a turn.
_LAST_SEQS = (
    "SELECT (SELECT seq FROM foundry_topic_seq WHERE topic = ?),"
    " (SELECT max(seq) FROM session_events WHERE session_id = ?)"
)


def json_text(data: Any) -> str:
    """``data`` as JSON text: orjson for speed (every transcript row is encoded), the standard
    library for what orjson refuses (integers beyond 64 bits, non-string keys, lone surrogates)."""
    try:
        return orjson.dumps(data).decode()
    except TypeError:
        return json.dumps(data)


def json_value(text: str | bytes) -> Any:
    """The value of JSON text written by `json_text` (the standard library also reads what it wrote,
    such as NaN)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


async def append_events(
    ctx: InstanceContext,
    conn: AsyncConnection,
    session_id: str,
    items: list[tuple[str, dict[str, Any]]],
    *,
    last_event_id: int | None = None,
) -> list[int]:
    """Append events to a session's transcript and publish each with the seq of its row.

    Must run inside the transaction (``conn``) that ``ctx`` publishes from. ``last_event_id`` (the
    sandbox-agent id of the last event recorded) is stored with them. Returns the seqs.
    """
    if not items and last_event_id is None:
        return []
    organization_id, task_id = split_task_key(ctx.key)
    topic = session_topic(organization_id, task_id, session_id)
    # The runtime stamps seq = last committed seq + 1 for each publish of this transaction, in order;
    # publishes to this topic earlier in the same transaction count too.
    already = sum(1 for p in ctx._publishes if p.topic == topic)
    texts = [(event, json_text(data)) for event, data in items]
    # One thread hop for the whole batch: this runs for every batch of every turn.
    topic_seq, last_row = await in_connection_thread(
        conn, _write_rows, topic, session_id, already, texts, ctx.now_ms(), last_event_id
    )
    seq = topic_seq + already
    if last_row is not None and last_row > seq:
        log.error(
            "session %s: topic seq %d is behind its log (%d); continued after the log", topic, seq, last_row
        )
        seq = last_row
    publish = ctx.publish
    seqs = []
    for event, data in items:
        seq += 1
        seqs.append(seq)
        # The data is plain JSON (it was serialized above), so the runtime need not convert it.
        publish(topic, event, data, plain=True)
    return seqs


def _write_rows(
    db: sqlite3.Connection,
    topic: str,
    session_id: str,
    already: int,
    texts: list[tuple[str, str]],
    now: int,
    last_event_id: int | None,
) -> tuple[int, int | None]:
    """In the connection's thread: store the rows; returns (topic seq, last row seq) before them."""
    if last_event_id is not None:
        db.execute(_SET_LAST_EVENT_ID, (last_event_id, session_id))
    topic_seq, last_row = db.execute(_LAST_SEQS, (topic, session_id)).fetchone()
    seq = int(topic_seq or 0) + already
    # Defensive: never reuse a row's seq, even if the topic's counter were ever behind the log.
    if last_row is not None and last_row > seq:
        seq = last_row
    if texts:
        db.executemany(
            _INSERT_EVENTS,
            [(session_id, seq + i, event, text, now) for i, (event, text) in enumerate(texts, 1)],
        )
    return int(topic_seq or 0), last_row


async def events_after(
    conn: AsyncConnection, organization_id: str, task_id: str, session_id: str, since: int, limit: int
) -> tuple[int, list[dict[str, Any]]]:
    """``(topic seq, events after since)`` read consistently: the seq first, so a client never drops
    a live event as already contained (events past that seq may be included; the gateway copes)."""
    seq = await current_seq(conn, session_topic(organization_id, task_id, session_id))
    rows = (
        await conn.execute(
            sa.select(session_events)
            .where(session_events.c.session_id == session_id, session_events.c.seq > since)
            .order_by(session_events.c.seq)
            .limit(limit)
        )
    ).all()
    return seq, [
        {"seq": r.seq, "event": r.event, "data": json_value(r.data), "createdAt": r.created_at} for r in rows
    ]


# ------------------------------------------------------------------------------------------ reads


def derive_status(
    row: sa.Row[Any], session_rows: list[sa.Row[Any]], queued: dict[str, int] | None = None
) -> tuple[str, str | None]:
    """``(status, error)`` of a task (derived after initialization, never stuck).

    archived (terminal) → queued (waiting for a sandbox slot) → provisioning (sandbox not ready or
    repository not cloned yet) → error (provisioning failed or the sandbox died) → running (a turn
    runs, or a healthy session has messages waiting for its agent) → error (a session failed) →
    idle. ``error`` is the reason to show, including the last failed git operation.
    """
    queued = queued or {}
    if row.archived_at is not None:
        return "archived", None
    if row.sandbox_queue_position is not None:
        # Waiting for a sandbox slot (per-node caps); the detail's ``sandboxQueue`` says where.
        return "queued", None
    if row.provision_state in ("pending", "provisioning"):
        return "provisioning", None
    if row.provision_state == "error":
        return "error", row.provision_error
    if row.sandbox_error:
        return "error", row.sandbox_error
    open_sessions = [s for s in session_rows if s.status != "closed"]
    if any(
        s.status == "running" or (s.status in ("pending", "idle") and queued.get(s.session_id, 0) > 0)
        for s in open_sessions
    ):
        return "running", row.last_error
    failed = [s for s in open_sessions if s.status == "error"]
    if failed:
        return "error", failed[0].error
    return "idle", row.last_error


async def _session_rows(conn: AsyncConnection) -> list[sa.Row[Any]]:
    return list(
        (await conn.execute(sa.select(sessions).order_by(sessions.c.created_at, sessions.c.name))).all()
    )


async def _session_extras(
    conn: AsyncConnection,
) -> tuple[dict[str, int], dict[str, int], dict[str, list[Any]]]:
    queued = {
        r[0]: int(r[1])
        for r in (
            await conn.execute(
                sa.select(messages.c.session_id, sa.func.count())
                .where(messages.c.status == "queued")
                .group_by(messages.c.session_id)
            )
        ).all()
    }
    # Every event of a session topic is a transcript row with the topic's seq, so the topic seqs are
    # the transcripts' last seqs: a lookup in a small table instead of a scan of every event.
    last_seq = {
        str(r[0]).rsplit(":", 1)[1]: int(r[1])
        for r in (
            await conn.execute(
                sa.text("SELECT topic, seq FROM foundry_topic_seq WHERE topic LIKE 'session:%'")
            )
        ).all()
    }
    pending: dict[str, list[Any]] = {}
    for r in (
        await conn.execute(
            sa.select(permission_requests)
            .where(permission_requests.c.status == "pending")
            .order_by(permission_requests.c.created_at)
        )
    ).all():
        pending.setdefault(r.session_id, []).append(
            {"requestId": r.request_id, "options": json.loads(r.options_json)}
        )
    return queued, last_seq, pending


def session_json(
    row: sa.Row[Any], queued: int = 0, last_seq: int = 0, pending: list[Any] | None = None
) -> dict[str, Any]:
    """One session as task detail shows it."""
    return {
        "sessionId": row.session_id,
        "name": row.name,
        "agent": row.agent,
        "model": row.model,
        "status": row.status,
        "error": row.error,
        "thinkingSinceMs": row.thinking_since,
        "agentTitle": row.agent_title,
        "queuedMessages": queued,
        "lastSeq": last_seq,
        "pendingPermissions": pending or [],
        "createdAt": row.created_at,
        "updatedAt": row.updated_at,
        "closedAt": row.closed_at,
    }


def pull_request_json(row: sa.Row[Any]) -> dict[str, Any] | None:
    if row.pr_number is None:
        return None
    return {
        "number": row.pr_number,
        "url": row.pr_url,
        "state": row.pr_state,
        "title": row.pr_title,
        "authorLogin": row.pr_author_login,
        "headSha": row.pr_head_sha,
        "updatedAt": row.pr_updated_at,
    }


async def build_detail(conn: AsyncConnection, row: sa.Row[Any]) -> dict[str, Any]:
    """The task detail as every viewer sees it; per-user state is merged by the caller."""
    session_rows = await _session_rows(conn)
    queued, last_seq, pending = await _session_extras(conn)
    status, error = derive_status(row, session_rows, queued)
    return {
        "taskId": row.task_id,
        "organizationId": row.organization_id,
        "repoId": row.repo_id,
        "repoFullName": row.repo_full_name,
        "title": row.title,
        "status": status,
        "error": error,
        "branch": row.branch,
        "defaultBranch": row.default_branch,
        "prompt": row.prompt,
        "agent": row.default_agent,
        "model": row.default_model,
        "provisioning": {"state": row.provision_state, "error": row.provision_error},
        "sandboxError": row.sandbox_error,
        "sandboxQueue": (
            {"position": row.sandbox_queue_position, "reason": row.sandbox_queue_reason}
            if row.sandbox_queue_position is not None
            else None
        ),
        "lastError": row.last_error,
        "owner": {"userId": row.owner_user_id, "login": row.owner_login},
        "pullRequest": pull_request_json(row),
        "ciState": row.ci_state,
        "pushedSha": row.pushed_sha,
        "pushedAt": row.pushed_at,
        "sessions": [
            session_json(
                s, queued.get(s.session_id, 0), last_seq.get(s.session_id, 0), pending.get(s.session_id)
            )
            for s in session_rows
        ],
        "createdAt": row.created_at,
        "updatedAt": row.updated_at,
        "archivedAt": row.archived_at,
    }


def _own_pull_request(pull: dict[str, Any] | None) -> dict[str, Any] | None:
    if pull is None:
        return None
    return {k: pull[k] for k in ("number", "url", "state", "title")}


def summary_from_detail(detail: dict[str, Any]) -> dict[str, Any]:
    """What the task pushes to the organization's ``task_summaries`` row."""
    return {
        "taskId": detail["taskId"],
        "title": detail["title"],
        "status": detail["status"],
        "branch": detail["branch"],
        "error": detail["error"],
        "ownerUserId": detail["owner"]["userId"],
        "ownerLogin": detail["owner"]["login"],
        "archived": detail["archivedAt"] is not None,
        # What the task itself decided (the PR it opened); the rest is the organization's mirror.
        "pullRequest": _own_pull_request(detail["pullRequest"]),
        "sessions": [
            {
                "sessionId": s["sessionId"],
                "name": s["name"],
                "agent": s["agent"],
                "model": s["model"],
                "status": s["status"],
                "thinkingSinceMs": s["thinkingSinceMs"],
                "error": s["error"],
            }
            for s in detail["sessions"]
            if s["status"] != "closed"
        ],
    }


# ------------------------------------------------------------------------------------------ writes


async def refresh(ctx: InstanceContext, conn: AsyncConnection) -> dict[str, Any]:
    """After a change: store the derived status, publish ``taskUpdated``, push the summary up.

    Runs inside the caller's transaction. The organization gets the summary through the outbox (never
    lost), and only when something in it changed.
    """
    row = await require_task(conn, ctx.key)
    detail = await build_detail(conn, row)
    now = ctx.now_ms()
    summary = summary_from_detail(detail)
    summary_json = json.dumps(summary, sort_keys=True)
    changes: dict[str, Any] = {}
    if detail["status"] != row.status:
        changes["status"] = detail["status"]
    if summary_json != row.pushed_summary:
        changes["pushed_summary"] = summary_json
        changes["updated_at"] = now
        detail["updatedAt"] = now
        ctx.send_after_commit(
            ORGANIZATION_ROLE, row.organization_id, "task_summary_updated", {**summary, "updatedAt": now}
        )
    if changes:
        await conn.execute(task.update().where(task.c.id == 1).values(**changes))
    ctx.publish(task_topic(row.organization_id, row.task_id), "taskUpdated", detail)
    return detail


def audit(
    ctx: InstanceContext,
    row: sa.Row[Any],
    kind: str,
    payload: dict[str, Any] | None = None,
    *,
    user_id: str | None = None,
    command_id: str | None = None,
) -> None:
    """Append an audit event once the current transaction commits (durable)."""
    ctx.send_after_commit(
        AUDIT_ROLE,
        row.organization_id,
        "append",
        {
            "kind": kind,
            "repoId": row.repo_id,
            "taskId": row.task_id,
            "branchName": row.branch,
            "actorUserId": user_id,
            "payload": payload or {},
        },
        command_id=command_id,
    )
