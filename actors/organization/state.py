"""Reads of an organization's tables and its realtime snapshot."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from actors.organization.schema import members, profile, repos, task_summaries
from foundry.auth.cache_events import MEMBERS_CHANGED, members_topic
from foundry.config import StripeSettings
from foundry.errors import InvalidInput, NotFound
from foundry.ids import APP_SHELL_ID
from foundry.runtime.context import CommandContext, InstanceContext
from foundry.runtime.tables import dead_letters


def organization_topic(organization_id: str) -> str:
    return f"organization:{organization_id}"


def assert_real_organization(key: str) -> None:
    if key == APP_SHELL_ID:
        raise InvalidInput("this operation cannot run on the reserved app organization")


def assert_app_shell(key: str) -> None:
    if key != APP_SHELL_ID:
        raise InvalidInput("this operation only runs on the app organization")


async def load_profile(conn: AsyncConnection) -> sa.Row[Any] | None:
    return (await conn.execute(sa.select(profile).where(profile.c.id == 1))).first()


async def require_profile(conn: AsyncConnection, organization_id: str) -> sa.Row[Any]:
    row = await load_profile(conn)
    if row is None:
        raise NotFound(f"organization {organization_id!r} does not exist")
    return row


async def list_members(conn: AsyncConnection) -> list[dict[str, Any]]:
    rows = (await conn.execute(sa.select(members).order_by(members.c.role, members.c.login))).all()
    return [
        {
            "userId": r.user_id,
            "githubAccountId": r.github_account_id,
            "login": r.login,
            "avatarUrl": r.avatar_url,
            "role": r.role,
        }
        for r in rows
    ]


def task_summary_json(row: sa.Row[Any]) -> dict[str, Any]:
    """One sidebar row as clients see it."""
    pull_request = None
    if row.pr_number is not None:
        pull_request = {
            "number": row.pr_number,
            "state": row.pr_state,
            "url": row.pr_url,
            "title": row.pr_title,
            "authorLogin": row.pr_author_login,
            "headSha": row.pr_head_sha,
            "updatedAt": row.pr_updated_at,
        }
    return {
        "taskId": row.task_id,
        "repoId": row.repo_id,
        "repoFullName": row.repo_full_name,
        "title": row.title,
        "status": row.status,
        "isVirtual": bool(row.is_virtual),
        "branch": row.branch,
        "pullRequest": pull_request,
        "ciState": row.ci_state,
        "ownerUserId": row.owner_user_id,
        "ownerLogin": row.owner_login,
        "sessions": json.loads(row.sessions_json),
        "error": row.error,
        "createdAt": row.created_at,
        "updatedAt": row.updated_at,
        "archivedAt": row.archived_at,
    }


async def build_header(conn: AsyncConnection, organization_id: str) -> dict[str, Any]:
    """Everything of the organization summary except the task list (event ``organizationUpdated``)."""
    row = await require_profile(conn, organization_id)
    member_count = (await conn.execute(sa.select(sa.func.count()).select_from(members))).scalar() or 0
    activity = {
        r.repo_id: (r.count, r.latest)
        for r in (
            await conn.execute(
                sa.select(
                    task_summaries.c.repo_id,
                    sa.func.count().label("count"),
                    sa.func.max(task_summaries.c.updated_at).label("latest"),
                )
                .where(task_summaries.c.archived_at.is_(None))
                .group_by(task_summaries.c.repo_id)
            )
        ).all()
    }
    repo_rows = (await conn.execute(sa.select(repos).order_by(repos.c.full_name))).all()
    return {
        "organizationId": organization_id,
        "profile": {
            "kind": row.kind,
            "githubLogin": row.github_login,
            "displayName": row.display_name,
            "avatarUrl": row.avatar_url,
        },
        "settings": {"displayName": row.display_name, "defaultModel": row.default_model},
        "github": {
            "installationId": row.installation_id,
            "installationStatus": row.installation_status,
            "syncStatus": row.sync_status,
            "syncPhase": row.sync_phase,
            "syncGeneration": row.sync_generation,
            "processedCount": row.sync_processed,
            "totalCount": row.sync_total,
            "syncError": row.sync_error,
            "lastSyncAt": row.last_sync_at,
            "lastWebhookAt": row.last_webhook_at,
            "lastWebhookEvent": row.last_webhook_event,
        },
        "repos": [
            {
                "id": r.repo_id,
                "fullName": r.full_name,
                "defaultBranch": r.default_branch,
                "private": r.private,
                "archived": r.archived,
                "taskCount": activity.get(r.repo_id, (0, None))[0],
                "latestActivityMs": activity.get(r.repo_id, (0, None))[1],
            }
            for r in repo_rows
        ],
        "memberCount": member_count,
        "updatedAt": row.updated_at,
    }


async def list_task_summaries(conn: AsyncConnection, include_archived: bool = False) -> list[dict[str, Any]]:
    stmt = sa.select(task_summaries).order_by(task_summaries.c.updated_at.desc(), task_summaries.c.task_id)
    if not include_archived:
        stmt = stmt.where(task_summaries.c.archived_at.is_(None))
    return [task_summary_json(r) for r in (await conn.execute(stmt)).all()]


async def build_snapshot(
    conn: AsyncConnection,
    organization_id: str,
    settings: StripeSettings | None = None,
    *,
    billing_details: bool = False,
) -> dict[str, Any]:
    """The full organization summary of the ``organization:<id>`` topic: header plus open tasks.

    ``deadLetters`` (``{"count", "items"}``, the oldest 20) are this organization's sends to other
    actors (task creation, audit entries...) that failed too often and wait for an operator's
    ``foundry actors retry-dead``. They come with every snapshot; no live event carries them.

    ``billing`` is the member-safe `billing_summary` (the topic's ``billingUpdated`` events carry the
    same form); with ``billing_details`` (an admin's read) it is the whole state (`build_billing`),
    which is otherwise only on the admins-only ``billing:<id>`` topic.
    """
    from actors.organization.billing_state import billing_summary, build_billing

    settings = settings or StripeSettings()
    snapshot = await build_header(conn, organization_id)
    snapshot["taskSummaries"] = await list_task_summaries(conn)
    snapshot["deadLetters"] = await dead_letters(conn, limit=20)
    details = await build_billing(conn, settings)
    snapshot["billing"] = details if billing_details else billing_summary(details)
    return snapshot


async def publish_header(ctx: InstanceContext, conn: AsyncConnection) -> None:
    """Publish ``organizationUpdated`` (profile, settings, GitHub status, repos) in the transaction."""
    ctx.publish(organization_topic(ctx.key), "organizationUpdated", await build_header(conn, ctx.key))


def audit_after_commit(
    ctx: CommandContext, kind: str, payload: dict[str, Any], actor: str | None = None
) -> None:
    """Append ``kind`` to this organization's audit log once the command commits."""
    ctx.send_after_commit(
        "audit-log",
        ctx.key,
        "append",
        {"kind": kind, "payload": payload, "actorUserId": actor},
        command_id=ctx.derived_id(f"audit-{kind}"),
    )


def publish_members_changed(ctx: InstanceContext) -> None:
    """Say (in the open transaction) that a member left or changed role: every API process drops
    the memberships of this organization it cached, so the change takes effect on the next request."""
    ctx.publish(members_topic(ctx.key), MEMBERS_CHANGED, {}, plain=True)


async def publish_task_changes(
    ctx: InstanceContext, conn: AsyncConnection, task_ids: list[str], removed: list[str] | None = None
) -> None:
    """Publish one ``taskSummariesUpdated`` for a batch of changed tasks (one broadcast per batch).

    ``upserted`` carries the current rows of ``task_ids``; archived ones are listed in ``removed`` so
    sidebars drop them.
    """
    rows = (await conn.execute(sa.select(task_summaries).where(task_summaries.c.task_id.in_(task_ids)))).all()
    upserted = [task_summary_json(r) for r in rows if r.archived_at is None]
    gone = sorted({*(removed or []), *(r.task_id for r in rows if r.archived_at is not None)})
    if upserted or gone:
        ctx.publish(
            organization_topic(ctx.key), "taskSummariesUpdated", {"upserted": upserted, "removed": gone}
        )
