"""Direct actions of the organization role."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from actors.organization.billing_state import billing_topic, build_billing
from actors.organization.commands import (
    Empty,
    GetOrganization,
    InstallationRef,
    MemberRef,
    OAuthCallbackResult,
    Snapshot,
)
from actors.organization.schema import installations, members, oauth_callbacks
from actors.organization.state import (
    assert_app_shell,
    assert_real_organization,
    build_snapshot,
    list_members,
    organization_topic,
    require_profile,
)
from foundry.errors import NotFound
from foundry.runtime.context import InstanceContext
from foundry.runtime.tables import current_seq


async def get(ctx: InstanceContext, cmd: GetOrganization) -> dict[str, Any]:
    """The organization snapshot (`NotFound` before the first sync); billing details only when
    ``billingDetails`` is asked (the caller checked the admin role)."""
    assert_real_organization(ctx.key)
    async with ctx.read() as conn:
        return await build_snapshot(
            conn, ctx.key, ctx.services.settings.stripe, billing_details=cmd.billing_details
        )


async def snapshot(ctx: InstanceContext, cmd: Snapshot) -> dict[str, Any]:
    """The realtime gateway's snapshot of ``organization:<id>`` (billing summary) or of
    ``billing:<id>`` (the whole billing state; the gateway lets only admins subscribe)."""
    if cmd.topic == billing_topic(ctx.key):
        assert_real_organization(ctx.key)
        async with ctx.read(consistent=True) as conn:
            await require_profile(conn, ctx.key)
            return {
                "seq": await current_seq(conn, cmd.topic),
                "data": await build_billing(conn, ctx.services.settings.stripe),
            }
    if cmd.topic != organization_topic(ctx.key):
        raise NotFound(f"organization {ctx.key!r} does not own topic {cmd.topic!r}")
    async with ctx.read(consistent=True) as conn:
        return {
            "seq": await current_seq(conn, cmd.topic),
            "data": await build_snapshot(conn, ctx.key, ctx.services.settings.stripe),
        }


async def member_role(ctx: InstanceContext, cmd: MemberRef) -> dict[str, Any]:
    """``{"role": "admin"|"member"|None}``: the authorization check of every organization route."""
    async with ctx.read() as conn:
        role = (
            await conn.execute(sa.select(members.c.role).where(members.c.user_id == cmd.user_id))
        ).scalar()
    return {"role": role}


async def get_members(ctx: InstanceContext, _: Empty) -> list[dict[str, Any]]:
    assert_real_organization(ctx.key)
    async with ctx.read() as conn:
        return await list_members(conn)


async def organization_for_installation(ctx: InstanceContext, cmd: InstallationRef) -> dict[str, Any]:
    """App shell: the organization that owns an installation, or `NotFound`."""
    assert_app_shell(ctx.key)
    async with ctx.read() as conn:
        row = (
            await conn.execute(
                sa.select(installations).where(installations.c.installation_id == cmd.installation_id)
            )
        ).first()
    if row is None:
        raise NotFound(f"no organization owns GitHub App installation {cmd.installation_id}")
    return {"organizationId": row.organization_id, "accountLogin": row.account_login}


async def record_oauth_callback(ctx: InstanceContext, cmd: OAuthCallbackResult) -> dict[str, Any]:
    """App shell: remember the outcome of a completed OAuth callback for ``ttlSeconds``."""
    assert_app_shell(ctx.key)
    now = ctx.now_ms()
    async with ctx.write() as conn:
        await conn.execute(oauth_callbacks.delete().where(oauth_callbacks.c.expires_at < now))
        await conn.execute(
            sqlite_insert(oauth_callbacks)
            .values(
                state_hash=cmd.state_hash,
                user_id=cmd.user_id,
                session_id=cmd.session_id,
                session_expires_at=cmd.session_expires_at,
                expires_at=now + cmd.ttl_seconds * 1000,
            )
            .on_conflict_do_nothing()
        )
    return await get_oauth_callback(ctx, cmd)


async def get_oauth_callback(ctx: InstanceContext, cmd: OAuthCallbackResult) -> dict[str, Any]:
    """App shell: the stored outcome for a state, or ``{"found": False}``."""
    assert_app_shell(ctx.key)
    async with ctx.read() as conn:
        row = (
            await conn.execute(
                sa.select(oauth_callbacks).where(
                    oauth_callbacks.c.state_hash == cmd.state_hash,
                    oauth_callbacks.c.expires_at >= ctx.now_ms(),
                )
            )
        ).first()
    if row is None:
        return {"found": False}
    return {
        "found": True,
        "userId": row.user_id,
        "sessionId": row.session_id,
        "sessionExpiresAt": row.session_expires_at,
    }
