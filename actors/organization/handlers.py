"""Mailbox commands of the organization role."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from actors.organization.commands import RegisterInstallation, SyncFromGitHub, UpdateSettings
from actors.organization.github_access import request_sync_after_commit
from actors.organization.member_changes import announce_member_changes
from actors.organization.schema import installations, members, profile
from actors.organization.state import (
    assert_app_shell,
    assert_real_organization,
    load_profile,
    publish_header,
    require_profile,
)
from foundry.errors import InvalidInput
from foundry.ids import APP_SHELL_ID, organization_id_for, user_id_for
from foundry.models_catalog import DEFAULT_MODEL
from foundry.runtime.context import CommandContext


async def handle_sync_from_github(ctx: CommandContext, cmd: SyncFromGitHub) -> dict[str, Any]:
    """Create or refresh the profile and replace the member list with GitHub's. Idempotent."""
    assert_real_organization(ctx.key)
    expected = organization_id_for(cmd.kind, cmd.github_login)
    if expected != ctx.key:
        raise InvalidInput(
            f"GitHub account {cmd.github_login!r} ({cmd.kind}) belongs to organization "
            f"{expected!r}, not {ctx.key!r}"
        )
    now = ctx.now_ms()
    status = (
        "install_required" if cmd.installation_id is None else ("suspended" if cmd.suspended else "connected")
    )
    existing = await load_profile(ctx.conn)
    values = {
        "organization_id": ctx.key,
        "kind": cmd.kind,
        "github_login": cmd.github_login,
        "github_account_id": cmd.github_account_id,
        "avatar_url": cmd.avatar_url,
        "installation_id": cmd.installation_id,
        "installation_status": status,
        "updated_at": now,
    }
    if existing is None:
        await ctx.conn.execute(
            profile.insert().values(
                id=1, display_name=cmd.display_name, default_model=DEFAULT_MODEL, created_at=now, **values
            )
        )
    else:
        await ctx.conn.execute(profile.update().where(profile.c.id == 1).values(**values))

    before = {r.user_id: r.role for r in (await ctx.conn.execute(sa.select(members))).all()}
    after = {user_id_for(m.user_github_id): m for m in cmd.members}
    if set(after) != set(before) or any(before[u] != m.role for u, m in after.items() if u in before):
        await ctx.conn.execute(members.delete().where(members.c.user_id.not_in(list(after))))
        for user_id, m in after.items():
            row = {
                "github_account_id": m.user_github_id,
                "login": m.login,
                "avatar_url": m.avatar_url,
                "role": m.role,
                "updated_at": now,
            }
            stmt = sqlite_insert(members).values(user_id=user_id, **row)
            await ctx.conn.execute(stmt.on_conflict_do_update(index_elements=["user_id"], set_=row))
        await announce_member_changes(ctx, before, {u: m.role for u, m in after.items()})
    if status == "connected" and (
        existing is None
        or existing.installation_status != "connected"
        or existing.installation_id != cmd.installation_id
    ):
        # First sight of a connected installation (or a new one): mirror its repositories and PRs.
        request_sync_after_commit(ctx, "installation connected")
    if cmd.installation_id is not None:
        ctx.send_after_commit(
            "organization",
            APP_SHELL_ID,
            "register_installation",
            {
                "installationId": cmd.installation_id,
                "organizationId": ctx.key,
                "accountLogin": cmd.github_login,
            },
            command_id=ctx.derived_id("installation"),
        )
    await publish_header(ctx, ctx.conn)
    # The name its admins chose in Settings (GitHub's only until then): what each member's list shows.
    display_name = existing.display_name if existing is not None else cmd.display_name
    return {"organizationId": ctx.key, "created": existing is None, "displayName": display_name}


async def handle_update_settings(ctx: CommandContext, cmd: UpdateSettings) -> dict[str, Any]:
    """Change display name and/or default model; writes an audit event."""
    assert_real_organization(ctx.key)
    row = await require_profile(ctx.conn, ctx.key)
    changes: dict[str, Any] = {}
    if cmd.display_name is not None and cmd.display_name != row.display_name:
        changes["display_name"] = cmd.display_name
    if cmd.default_model is not None and cmd.default_model != row.default_model:
        changes["default_model"] = cmd.default_model
    if changes:
        await ctx.conn.execute(
            profile.update().where(profile.c.id == 1).values(updated_at=ctx.now_ms(), **changes)
        )
        ctx.send_after_commit(
            "audit-log",
            ctx.key,
            "append",
            {
                "kind": "organization.settings_updated",
                "actorUserId": cmd.actor_user_id,
                "payload": {"changed": {k: v for k, v in changes.items()}},
            },
            command_id=ctx.derived_id("audit"),
        )
        await publish_header(ctx, ctx.conn)
    updated = await require_profile(ctx.conn, ctx.key)
    return {"displayName": updated.display_name, "defaultModel": updated.default_model}


async def handle_register_installation(ctx: CommandContext, cmd: RegisterInstallation) -> None:
    """App shell: remember which organization owns an installation (for webhook routing)."""
    assert_app_shell(ctx.key)
    row = {
        "organization_id": cmd.organization_id,
        "account_login": cmd.account_login,
        "updated_at": ctx.now_ms(),
    }
    stmt = sqlite_insert(installations).values(installation_id=cmd.installation_id, **row)
    await ctx.conn.execute(stmt.on_conflict_do_update(index_elements=["installation_id"], set_=row))
