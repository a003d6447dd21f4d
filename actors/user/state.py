"""Reads and writes of the user's own tables, shared by actions, commands and jobs."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from actors.user.schema import profile, session_state
from foundry.errors import NotFound
from foundry.runtime.context import InstanceContext
from foundry.runtime.tables import current_seq

STARTER_REPO = "rivet-dev/sandbox-agent"
#: The app snapshot lists at most this many unread sessions (the most recent first): it is
#: published whole on every change, and a sidebar needs only the recent ones.
MAX_UNREAD = 500


def app_topic(user_id: str) -> str:
    return f"app:{user_id}"


async def load_profile(conn: AsyncConnection) -> sa.Row[Any] | None:
    return (await conn.execute(sa.select(profile).where(profile.c.id == 1))).first()


async def require_profile(conn: AsyncConnection, user_id: str) -> sa.Row[Any]:
    row = await load_profile(conn)
    if row is None:
        raise NotFound(f"user {user_id!r} does not exist")
    return row


def effective_active_organization(row: sa.Row[Any]) -> str | None:
    """The stored choice while it is still allowed; else the only organization; else none."""
    ids = [o["id"] for o in json.loads(row.organizations_json)]
    if row.active_organization_id in ids:
        return str(row.active_organization_id)
    return ids[0] if len(ids) == 1 else None


async def load_unread(conn: AsyncConnection) -> list[dict[str, str]]:
    """This user's unread sessions, most recently changed first (at most `MAX_UNREAD`)."""
    rows = (
        await conn.execute(
            sa.select(session_state.c.organization_id, session_state.c.task_id, session_state.c.session_id)
            .where(session_state.c.unread.is_(True))
            .order_by(session_state.c.updated_at.desc())
            .limit(MAX_UNREAD)
        )
    ).all()
    return [
        {"organizationId": r.organization_id, "taskId": r.task_id, "sessionId": r.session_id} for r in rows
    ]


async def load_app_snapshot(conn: AsyncConnection, user_id: str) -> dict[str, Any]:
    """The app snapshot read inside ``conn``'s transaction."""
    return build_app_snapshot(await load_profile(conn), user_id, await load_unread(conn))


def build_app_snapshot(
    row: sa.Row[Any] | None, user_id: str, unread: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    """The app snapshot of the ``app:<userId>`` topic.

    ``unread`` lists the sessions this user has not seen since their last turn ended
    (``{organizationId, taskId, sessionId}``). It is per-user state, so it travels on the user's own
    topic, which only that user may subscribe to.
    """
    if row is None:
        return {
            "auth": {"status": "signed_out", "currentUserId": None},
            "user": None,
            "activeOrganizationId": None,
            "organizations": [],
            "organizationSync": {"status": "idle", "error": None, "syncedAt": None},
            "unread": [],
        }
    return {
        "auth": {"status": "signed_in", "currentUserId": user_id},
        "user": {
            "id": user_id,
            "githubAccountId": row.github_account_id,
            "githubLogin": row.github_login,
            "name": row.name,
            "email": row.email,
            "avatarUrl": row.avatar_url,
            "defaultModel": row.default_model,
        },
        "activeOrganizationId": effective_active_organization(row),
        "organizations": json.loads(row.organizations_json),
        "organizationSync": {
            "status": row.org_sync_status,
            "error": row.org_sync_error,
            "syncedAt": row.org_synced_at,
        },
        "onboarding": {"starterRepo": {"repoFullName": STARTER_REPO, "status": row.starter_repo_status}},
        "unread": unread or [],
    }


async def publish_app(ctx: InstanceContext, conn: AsyncConnection) -> None:
    """Publish the current app snapshot inside the open transaction."""
    ctx.publish(app_topic(ctx.key), "appUpdated", await load_app_snapshot(conn, ctx.key))


async def app_snapshot_with_seq(ctx: InstanceContext) -> dict[str, Any]:
    async with ctx.read(consistent=True) as conn:
        data = await load_app_snapshot(conn, ctx.key)
        seq = await current_seq(conn, app_topic(ctx.key))
    return {"seq": seq, "data": data}
