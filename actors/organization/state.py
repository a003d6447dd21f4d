"""Reads of an organization's tables and its realtime snapshot."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from actors.organization.schema import members, profile
from foundry.errors import InvalidInput, NotFound
from foundry.ids import APP_SHELL_ID
from foundry.runtime.context import InstanceContext


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


async def build_snapshot(conn: AsyncConnection, organization_id: str) -> dict[str, Any]:
    """The organization summary of the ``organization:<id>`` topic."""
    row = await require_profile(conn, organization_id)
    member_rows = await list_members(conn)
    return {
        "organizationId": organization_id,
        "profile": {
            "kind": row.kind,
            "githubLogin": row.github_login,
            "displayName": row.display_name,
            "avatarUrl": row.avatar_url,
        },
        "settings": {"displayName": row.display_name, "defaultModel": row.default_model},
        "github": {"installationId": row.installation_id, "installationStatus": row.installation_status},
        "memberCount": len(member_rows),
        "updatedAt": row.updated_at,
    }


async def publish_snapshot(ctx: InstanceContext, conn: AsyncConnection) -> None:
    ctx.publish(organization_topic(ctx.key), "organizationUpdated", await build_snapshot(conn, ctx.key))
