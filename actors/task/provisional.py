"""What a task looks like before its actor has its own record: built from the organization's row.

The organization lists a task (its ``task_summaries`` row) as soon as it decides to create it, but
the task actor gets ``initialize`` through the organization's outbox a moment later — or minutes
later when thousands of tasks are created at once. A listed task is always readable: until the task
actor has initialized, its detail, realtime snapshot and first session transcript come from that row.
"""

from __future__ import annotations

from typing import Any


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
