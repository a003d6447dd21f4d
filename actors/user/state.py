"""Reads and writes of the user's own tables, shared by actions, commands and jobs."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from actors.user.schema import profile
from foundry.errors import NotFound
from foundry.runtime.context import InstanceContext
from foundry.runtime.tables import current_seq

STARTER_REPO = "rivet-dev/sandbox-agent"


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


def build_app_snapshot(row: sa.Row[Any] | None, user_id: str) -> dict[str, Any]:
    """The app snapshot of the ``app:<userId>`` topic."""
    if row is None:
        return {
            "auth": {"status": "signed_out", "currentUserId": None},
            "user": None,
            "activeOrganizationId": None,
            "organizations": [],
            "organizationSync": {"status": "idle", "error": None, "syncedAt": None},
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
    }


async def publish_app(ctx: InstanceContext, conn: AsyncConnection) -> None:
    """Publish the current app snapshot inside the open transaction."""
    ctx.publish(app_topic(ctx.key), "appUpdated", build_app_snapshot(await load_profile(conn), ctx.key))


async def app_snapshot_with_seq(ctx: InstanceContext) -> dict[str, Any]:
    async with ctx.read(consistent=True) as conn:
        row = await load_profile(conn)
        seq = await current_seq(conn, app_topic(ctx.key))
    return {"seq": seq, "data": build_app_snapshot(row, ctx.key)}
