"""Mailbox commands of the user role: organization discovery, run as a background job."""

from __future__ import annotations

import json
import logging
from typing import Any

from actors.user.commands import Empty, OrganizationsDiscovered
from actors.user.schema import profile
from actors.user.state import publish_app, require_profile
from foundry.errors import FoundryError
from foundry.ids import organization_id_for
from foundry.runtime.context import CommandContext, InstanceContext

log = logging.getLogger(__name__)

DISCOVERY_JOB = "discover-organizations"


async def handle_discover_organizations(ctx: CommandContext, _: Empty) -> dict[str, Any]:
    """Start (or keep running) the background discovery of this user's organizations.

    Sign-in returns at once and the app snapshot shows ``organizationSync.status == "syncing"``
    until the job reports back (never inline in a snapshot read).
    """
    await require_profile(ctx.conn, ctx.key)
    await ctx.conn.execute(
        profile.update()
        .where(profile.c.id == 1)
        .values(org_sync_status="syncing", org_sync_error=None, updated_at=ctx.now_ms())
    )
    await publish_app(ctx, ctx.conn)
    started = ctx.start_job(DISCOVERY_JOB, discover_organizations_job)
    return {"started": started}


async def handle_organizations_discovered(ctx: CommandContext, cmd: OrganizationsDiscovered) -> None:
    """Store the result of a discovery run and publish the new app snapshot."""
    values: dict[str, Any] = {"updated_at": ctx.now_ms()}
    if cmd.error:
        values |= {"org_sync_status": "error", "org_sync_error": cmd.error}
    else:
        values |= {
            "org_sync_status": "synced",
            "org_sync_error": None,
            "org_synced_at": ctx.now_ms(),
            "organizations_json": json.dumps(
                [o.model_dump(by_alias=True, mode="json") for o in cmd.organizations]
            ),
        }
    await ctx.conn.execute(profile.update().where(profile.c.id == 1).values(**values))
    await publish_app(ctx, ctx.conn)


async def resume_discovery(ctx: InstanceContext) -> None:
    """At wake: a discovery interrupted by a host restart starts again."""
    async with ctx.read() as conn:
        row = await conn.execute(profile.select().where(profile.c.id == 1))
        current = row.first()
    if current is not None and current.org_sync_status == "syncing":
        ctx.start_job(DISCOVERY_JOB, discover_organizations_job)


async def discover_organizations_job(ctx: InstanceContext) -> None:
    """Find the accounts where the GitHub App is installed and this user is a member.

    For each: the organization actor gets its profile and the member list (with roles from GitHub,
    never guessed) through a durable command; the user keeps the ones it belongs to.
    """
    try:
        organizations = await _discover(ctx)
        result: dict[str, Any] = {"organizations": organizations}
    except FoundryError as exc:
        log.warning("organization discovery for %s failed: %s", ctx.key, exc)
        result = {"error": f"GitHub organization discovery failed: {exc}"}
    except Exception as exc:
        log.exception("organization discovery for %s failed", ctx.key)
        result = {"error": f"GitHub organization discovery failed: {type(exc).__name__}: {exc}"}
    await ctx.self_ref.send("organizations_discovered", result)


async def _discover(ctx: InstanceContext) -> list[dict[str, Any]]:
    github = ctx.services.driver("github")
    token = (await ctx.self_ref.call("github_token"))["accessToken"]
    viewer = await github.get_authenticated_user(token)
    orgs = await github.list_user_orgs(token)
    installations = {i.account_login.lower(): i for i in await github.list_user_installations(token)}
    accounts: list[tuple[str, str, str, str | None]] = [
        ("personal", viewer.login, viewer.name or viewer.login, viewer.avatar_url)
    ]
    accounts += [("organization", o.login, o.login, o.avatar_url) for o in orgs]
    found: list[dict[str, Any]] = []
    for kind, login, display_name, avatar in accounts:
        installation = installations.get(login.lower())
        if installation is None:
            continue
        org_id = organization_id_for(kind, login)
        if kind == "personal":
            members = [
                {
                    "userGithubId": viewer.id,
                    "login": viewer.login,
                    "avatarUrl": viewer.avatar_url,
                    "role": "admin",
                }
            ]
        else:
            members = [
                {"userGithubId": m.id, "login": m.login, "avatarUrl": m.avatar_url, "role": m.role}
                for m in await github.list_org_members(installation.id, login)
            ]
        synced = await ctx.actor("organization", org_id).send(
            "sync_from_github",
            {
                "kind": kind,
                "githubLogin": login,
                "githubAccountId": installation.account_id,
                "displayName": display_name,
                "avatarUrl": avatar,
                "installationId": installation.id,
                "suspended": installation.suspended,
                "members": members,
            },
            wait=True,
            timeout=30,
        )
        role = next((m["role"] for m in members if m["userGithubId"] == viewer.id), None)
        if role is not None:
            name = (synced.get("displayName") if isinstance(synced, dict) else None) or display_name
            found.append({"id": org_id, "displayName": name, "kind": kind, "role": role, "avatarUrl": avatar})
    return found
