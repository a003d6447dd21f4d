"""What a task looks like before its actor has its own record: built from the organization's row.

The organization lists a task (its ``task_summaries`` row) as soon as it decides to create it, but
the task actor gets ``initialize`` through the organization's outbox a moment later — or minutes
later when thousands of tasks are created at once. A listed task is always readable: until the task
actor has initialized, its detail, realtime snapshot and first session transcript come from that row.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from actors.task.commands import Archive, Snapshot
from actors.task.naming import split_task_key
from actors.task.schema import early_archive
from actors.task.state import AUDIT_ROLE, ORGANIZATION_ROLE, load_task, session_topic, task_topic
from foundry.errors import NotFound
from foundry.runtime.context import InstanceContext
from foundry.runtime.tables import current_seq


def provisional_session(session: dict[str, Any]) -> dict[str, Any]:
    """A session of the organization's row in the shape of task detail (`state.session_json`)."""
    return {
        "sessionId": session.get("sessionId"),
        "name": session.get("name"),
        "agent": session.get("agent"),
        "model": session.get("model"),
        "status": session.get("status", "pending"),
        "error": session.get("error"),
        "thinkingSinceMs": session.get("thinkingSinceMs"),
        "agentTitle": None,
        "queuedMessages": 0,
        "lastSeq": 0,
        "pendingPermissions": [],
        "createdAt": None,
        "updatedAt": None,
        "closedAt": None,
    }


def provisional_detail(
    organization_id: str, summary: dict[str, Any], *, archived_at: int | None = None
) -> dict[str, Any]:
    """Task detail (the keys of `state.build_detail`) from an organization task summary.

    Args:
        organization_id: the task's organization.
        summary: the organization's ``task_summary`` answer for the task.
        archived_at: set when the task was archived before it initialized (the summary may not show
            it yet: the task's push is on its way).
    """
    pull = summary.get("pullRequest")
    owner = {"userId": summary.get("ownerUserId"), "login": summary.get("ownerLogin")}
    status = "archived" if archived_at is not None else summary.get("status", "provisioning")
    return {
        "taskId": summary["taskId"],
        "organizationId": organization_id,
        "repoId": summary.get("repoId"),
        "repoFullName": summary.get("repoFullName"),
        "title": summary.get("title"),
        "status": status,
        "error": summary.get("error"),
        "branch": summary.get("branch"),
        "defaultBranch": None,
        "prompt": None,
        "agent": None,
        "model": None,
        "provisioning": {"state": "pending", "error": None},
        "sandboxError": None,
        "lastError": None,
        "owner": owner,
        "pullRequest": (
            {k: pull.get(k) for k in ("number", "url", "state", "title")} if isinstance(pull, dict) else None
        ),
        "pushedSha": None,
        "pushedAt": None,
        "sessions": [provisional_session(s) for s in summary.get("sessions") or [] if isinstance(s, dict)],
        "createdAt": summary.get("createdAt"),
        "updatedAt": summary.get("updatedAt"),
        "archivedAt": archived_at if archived_at is not None else summary.get("archivedAt"),
        "provisional": True,
    }


def lists_session(summary: dict[str, Any], session_id: str) -> bool:
    """Whether the organization's row names this session (the first session is named at creation)."""
    return any(
        isinstance(s, dict) and s.get("sessionId") == session_id for s in summary.get("sessions") or []
    )


# ---------------------------------------------------------------------------------- actor side


async def listed_summary(ctx: InstanceContext) -> dict[str, Any]:
    """The organization's row of this task (`NotFound` when the organization does not list it)."""
    organization_id, task_id = split_task_key(ctx.key)
    summary: dict[str, Any] = await ctx.actor(ORGANIZATION_ROLE, organization_id).call(
        "task_summary", {"taskId": task_id}
    )
    return summary


async def early_archived_at(ctx: InstanceContext) -> int | None:
    """When the task was archived before it initialized (None: it was not)."""
    async with ctx.read() as conn:
        row = (await conn.execute(sa.select(early_archive.c.archived_at))).first()
    return None if row is None else int(row.archived_at)


async def provisional_snapshot(ctx: InstanceContext, cmd: Snapshot) -> dict[str, Any] | None:
    """The snapshot of a listed task whose ``initialize`` is still on its way: its detail from the
    organization's row, or the (empty) transcript of a session that row names. The seqs are the
    topics' current ones (0), so the events ``initialize`` publishes follow without a gap. None
    when ``initialize`` has committed meanwhile (the caller reads the real snapshot): checked in
    the same consistent read as the seqs, or a subscriber would skip the events it published."""
    organization_id, task_id = split_task_key(ctx.key)
    summary = await listed_summary(ctx)
    async with ctx.read(consistent=True) as conn:
        if await load_task(conn) is not None:
            return None
        if cmd.topic == task_topic(organization_id, task_id):
            seq = await current_seq(conn, cmd.topic)
            archived_at = (await conn.execute(sa.select(early_archive.c.archived_at))).scalar()
            return {"seq": seq, "data": provisional_detail(organization_id, summary, archived_at=archived_at)}
        prefix = session_topic(organization_id, task_id, "")
        if cmd.topic.startswith(prefix) and lists_session(summary, cmd.topic[len(prefix) :]):
            return {"seq": await current_seq(conn, cmd.topic), "events": []}
    raise NotFound(f"no {cmd.topic!r} in task {task_id!r}")


async def archive_before_initialize(ctx: InstanceContext, cmd: Archive) -> dict[str, Any] | None:
    """Archive a listed task whose ``initialize`` has not arrived: record it (``initialize`` will
    then set the task up archived, with no session and no sandbox), tell the organization and the
    audit log. Nothing was started, so there is no work to lose or sandbox to stop. Returns None when
    ``initialize`` landed in the meantime (the caller archives the ordinary way).
    """
    summary = await listed_summary(ctx)
    organization_id, task_id = split_task_key(ctx.key)
    now = ctx.now_ms()
    async with ctx.write() as conn:
        if await load_task(conn) is not None:
            return None
        if (await conn.execute(sa.select(early_archive.c.id))).first() is not None:
            return {"archived": True, "already": True, "rescueBranch": None}
        await conn.execute(
            early_archive.insert().values(id=1, archived_at=now, reason=cmd.reason, user_id=cmd.user_id)
        )
        ctx.send_after_commit(
            ORGANIZATION_ROLE,
            organization_id,
            "task_summary_updated",
            {
                "taskId": task_id,
                "title": summary["title"],
                "status": "archived",
                "branch": summary.get("branch"),
                "ownerUserId": summary.get("ownerUserId"),
                "ownerLogin": summary.get("ownerLogin"),
                "archived": True,
                "sessions": [],
                "updatedAt": now,
            },
        )
        ctx.send_after_commit(
            AUDIT_ROLE,
            organization_id,
            "append",
            {
                "kind": "task.archive",
                "repoId": summary.get("repoId"),
                "taskId": task_id,
                "branchName": summary.get("branch"),
                "actorUserId": cmd.user_id,
                "payload": {
                    "reason": cmd.reason,
                    "force": cmd.force,
                    "rescueBranch": None,
                    "beforeInitialize": True,
                },
            },
            command_id=f"{ctx.key}:task.archive",
        )
        detail = provisional_detail(organization_id, summary, archived_at=now)
        ctx.publish(task_topic(organization_id, task_id), "taskUpdated", detail)
    return {"archived": True, "already": False, "rescueBranch": None, "inspected": False}
