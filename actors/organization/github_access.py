"""What the GitHub App's installation gives an organization: its status, the repository catalog
and the member list (access control), plus the after-commit messages these trigger (a full sync,
an audit entry).

Split from the command handlers because a sync and webhook deliveries both write these, and from
the task-row rules because they write the organization's own tables (``profile``, ``repos``,
``members``); they touch task rows only to archive virtual ones or show a repository's new name.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from actors.organization.github_commands import InstallationChange, MemberState, RepoState
from actors.organization.github_task_rows import TaskRowChanges, archive_virtual_of, changed_columns
from actors.organization.member_changes import announce_member_changes
from actors.organization.schema import members, profile, repos, task_summaries
from actors.organization.state import audit_after_commit, load_profile, publish_members_changed
from foundry.errors import InvalidInput
from foundry.ids import APP_SHELL_ID, organization_id_for, user_id_for
from foundry.models_catalog import DEFAULT_MODEL
from foundry.runtime.context import CommandContext


def request_sync_after_commit(ctx: CommandContext, reason: str) -> None:
    """Ask this organization's github-data to run a full sync once the command commits."""
    ctx.send_after_commit(
        "github-data", ctx.key, "sync", {"reason": reason[:200]}, command_id=ctx.derived_id("github-sync")
    )


async def write_repos(
    conn: AsyncConnection, upserted: list[RepoState], removed: list[str], now: int, changes: TaskRowChanges
) -> int:
    """Upsert and remove catalog rows; returns how many rows were written."""
    existing = {r.repo_id: r for r in (await conn.execute(sa.select(repos))).all()}
    writes = 0
    gone = [repo_id for repo_id in removed if repo_id in existing]
    if gone:
        # Deletes first: a repository recreated under a deleted one's name must not hit the unique name.
        await conn.execute(repos.delete().where(repos.c.repo_id.in_(gone)))
        await archive_virtual_of(conn, gone, now, changes)
        writes += len(gone)
    holders = {row.full_name: repo_id for repo_id, row in existing.items() if repo_id not in gone}
    for r in upserted:
        stale = holders.get(r.full_name)
        if stale is not None and stale != r.repo_id:
            # GitHub names are unique at any moment: the repository that had this name was deleted
            # (or renamed) and we were not told. The newer news wins; a sync re-reads the truth.
            await conn.execute(repos.delete().where(repos.c.repo_id == stale))
            await archive_virtual_of(conn, [stale], now, changes)
            existing.pop(stale, None)
            writes += 1
        holders[r.full_name] = r.repo_id
        values = {
            "full_name": r.full_name,
            "default_branch": r.default_branch,
            "private": r.private,
            "archived": r.archived,
            "clone_url": r.clone_url,
            "html_url": r.html_url,
        }
        row = existing.get(r.repo_id)
        if row is None:
            await conn.execute(repos.insert().values(repo_id=r.repo_id, updated_at=now, **values))
        elif changed_columns(row, values):
            await conn.execute(
                repos.update().where(repos.c.repo_id == r.repo_id).values(updated_at=now, **values)
            )
            if row.full_name != r.full_name:  # renamed: every task of it shows the new name
                renamed = (
                    await conn.execute(
                        sa.select(task_summaries.c.task_id).where(task_summaries.c.repo_id == r.repo_id)
                    )
                ).all()
                await conn.execute(
                    task_summaries.update()
                    .where(task_summaries.c.repo_id == r.repo_id)
                    .values(repo_full_name=r.full_name)
                )
                for t in renamed:
                    changes.wrote(t.task_id)
        else:
            continue
        writes += 1
    return writes


async def replace_members(ctx: CommandContext, team: list[MemberState], now: int, source: str) -> bool:
    """Make the member list GitHub's (roles included). Removed members lose access at once:
    every organization route reads this table. Returns True when anything changed."""
    before = {r.user_id: r for r in (await ctx.conn.execute(sa.select(members))).all()}
    after = {user_id_for(m.github_id): m for m in team}
    changed = False
    gone = sorted(set(before) - set(after))
    if gone:
        await ctx.conn.execute(members.delete().where(members.c.user_id.in_(gone)))
        changed = True
    for user_id, m in after.items():
        values = {
            "github_account_id": m.github_id,
            "login": m.login,
            "avatar_url": m.avatar_url,
            "role": m.role,
        }
        row = before.get(user_id)
        if row is not None and not changed_columns(row, values):
            continue
        stmt = sqlite_insert(members).values(user_id=user_id, updated_at=now, **values)
        await ctx.conn.execute(
            stmt.on_conflict_do_update(index_elements=["user_id"], set_={**values, "updated_at": now})
        )
        changed = True
    roles_before = {u: r.role for u, r in before.items()}
    roles_after: dict[str, str] = {u: m.role for u, m in after.items()}
    announced = await announce_member_changes(ctx, roles_before, roles_after, source)
    if changed and not announced:
        publish_members_changed(ctx)  # a login or avatar changed: the member list readers re-read
    return changed


async def apply_installation(
    ctx: CommandContext, inst: InstallationChange, now: int, changes: TaskRowChanges
) -> bool:
    """Record an installation's status; create the organization if it does not exist (a new install,
    or state that was wiped). Returns True when the header changed."""
    kind = "personal" if inst.account_type == "User" else "organization"
    expected = organization_id_for(kind, inst.account_login)
    if expected != ctx.key:
        raise InvalidInput(
            f"installation {inst.installation_id} is on {inst.account_login!r}, which is organization "
            f"{expected!r}, not {ctx.key!r}"
        )
    current = await load_profile(ctx.conn)
    installation_id = inst.installation_id if inst.status != "install_required" else None
    if inst.status != "install_required":
        # The app shell's installation index routes webhooks; registering again is harmless.
        ctx.send_after_commit(
            "organization",
            APP_SHELL_ID,
            "register_installation",
            {
                "installationId": inst.installation_id,
                "organizationId": ctx.key,
                "accountLogin": inst.account_login,
            },
            command_id=ctx.derived_id(f"register-installation-{inst.installation_id}"),
        )
    if current is None:
        if inst.status != "connected":
            return False  # nothing to create for an installation that is gone or suspended
        await ctx.conn.execute(
            profile.insert().values(
                id=1,
                organization_id=ctx.key,
                kind=kind,
                github_login=inst.account_login,
                github_account_id=inst.account_id,
                display_name=inst.account_login,
                avatar_url=inst.avatar_url,
                installation_id=inst.installation_id,
                installation_status="connected",
                default_model=DEFAULT_MODEL,
                created_at=now,
                updated_at=now,
            )
        )
        if kind == "personal":
            # A personal account's only member is its owner; organizations get theirs from the sync.
            await ctx.conn.execute(
                sqlite_insert(members)
                .values(
                    user_id=user_id_for(inst.account_id),
                    github_account_id=inst.account_id,
                    login=inst.account_login,
                    avatar_url=inst.avatar_url,
                    role="admin",
                    updated_at=now,
                )
                .on_conflict_do_nothing()
            )
        audit_after_commit(
            ctx, "github.installation_connected", {"installationId": inst.installation_id, "created": True}
        )
        request_sync_after_commit(ctx, "installation connected")
        return True
    unchanged = current.installation_status == inst.status and current.installation_id == installation_id
    if unchanged and not (inst.resync and inst.status == "connected"):
        return False
    newly_connected = inst.status == "connected" and (
        current.installation_status != "connected" or current.installation_id != inst.installation_id
    )
    if not unchanged:
        await ctx.conn.execute(
            profile.update()
            .where(profile.c.id == 1)
            .values(installation_id=installation_id, installation_status=inst.status, updated_at=now)
        )
        audit_after_commit(
            ctx, f"github.installation_{inst.status}", {"installationId": inst.installation_id}
        )
    if inst.status == "install_required":
        # The App is gone: the catalog cannot be refreshed and virtual tasks cannot become real ones.
        await ctx.conn.execute(repos.delete())
        await archive_virtual_of(ctx.conn, None, now, changes)
    if inst.status == "connected" and (newly_connected or inst.resync):
        request_sync_after_commit(ctx, "installation connected" if newly_connected else "permissions changed")
    return True
