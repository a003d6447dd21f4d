"""The organization's GitHub commands: sync results, sync progress and webhook-driven changes.

github-data (one per organization) mirrors GitHub; the organization owns what members see: the
``repos`` projection, the member list (access control) and, on ``task_summaries``, the PR and CI
columns of every task plus whole *virtual* rows — one per open pull request nobody has turned into a
task yet.

Rules of the mirror (kept by this module and the ones named below):

* A virtual task's id is deterministic, ``pr-<repoId>-<number>``, so every sync and webhook addresses
  the same row. A pull request whose head branch is a real task's branch attaches to that task.
* Closing or merging a PR archives its virtual row and only updates ``pr_state`` of a real one.
* Content is compared before writing and GitHub's ``updated_at`` orders versions: an unchanged PR
  writes nothing and publishes nothing; an older version never overwrites a newer one.
* Everything one command changes is written in its one transaction and published as one
  ``taskSummariesUpdated`` (and at most one ``organizationUpdated``).
* Webhooks never touch the sync progress fields.

The rows are written by `actors.organization.github_task_rows` (PR, CI and activity columns, virtual
rows) and `actors.organization.github_access` (installation, repository catalog, members); the
command bodies are in `actors.organization.github_commands`. This module holds the commands and the
action, each of which ties those writes into one transaction and one set of events.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

import sqlalchemy as sa
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from actors.organization.commands import Empty
from actors.organization.github_access import (
    apply_installation,
    replace_members,
    request_sync_after_commit,
    write_repos,
)
from actors.organization.github_commands import (
    ApplyGitHubSync,
    GitHubEvent,
    GitHubSyncProgress,
    MemberState,
    PullState,
    RepoState,
    RequestGitHubSync,
)
from actors.organization.github_task_rows import (
    TaskRowChanges,
    apply_ci,
    apply_pulls,
    apply_touches,
    changed_columns,
)
from actors.organization.schema import profile, repos
from actors.organization.state import (
    assert_real_organization,
    audit_after_commit,
    load_profile,
    publish_header,
    publish_task_changes,
    require_profile,
)
from actors.task.naming import task_key
from foundry.errors import Conflict
from foundry.runtime.context import CommandContext, InstanceContext

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


# ------------------------------------------------------------------------------------------ commands


async def handle_apply_github_sync(ctx: CommandContext, cmd: ApplyGitHubSync) -> dict[str, Any]:
    """Apply sync ``generation``: replace the repository catalog and the member list, upsert or
    archive the PR-backed task rows — one transaction, one ``taskSummariesUpdated``, one
    ``organizationUpdated``. Idempotent: a generation at or below the applied one is skipped.

    The rows are pulled from github-data (a direct read) instead of carried in this command, so a
    sync of any size stays under the 1 MiB command body limit.
    """
    assert_real_organization(ctx.key)
    current = await require_profile(ctx.conn, ctx.key)
    if cmd.generation <= current.sync_generation:
        return {"applied": False, "reason": "generation already applied", "taskSummaryWrites": 0}
    if current.installation_status == "install_required":
        # A sync that was running when the App was uninstalled finishes after the uninstall: its
        # repositories must not come back into a catalog the uninstall emptied.
        return {"applied": False, "reason": "the GitHub App is not installed", "taskSummaryWrites": 0}
    batch = await ctx.actor("github-data", ctx.key).call(
        "sync_batch", {"since": current.sync_generation, "generation": cmd.generation}
    )
    now = ctx.now_ms()
    changes = TaskRowChanges()
    new_repos = _valid_rows(ctx.key, RepoState, batch["repos"], "repository")
    existing_ids = {r.repo_id for r in (await ctx.conn.execute(sa.select(repos.c.repo_id))).all()}
    removed = sorted(existing_ids - {r.repo_id for r in new_repos})
    repo_writes = await write_repos(ctx.conn, new_repos, removed, now, changes)
    members_changed = False
    if batch.get("members") is not None and current.kind == "organization":
        team = [MemberState.model_validate(m) for m in batch["members"]]
        members_changed = await replace_members(ctx, team, now, "github_sync")
    # A repository that left the installation takes its pull requests out of reach, not closed on
    # GitHub: its archived rows keep them as last seen (the mirror's "closed" is its own bookkeeping).
    pulls = _valid_rows(ctx.key, PullState, batch["pulls"], "pull request")
    await apply_pulls(ctx.conn, await _of_catalogued_repos(ctx.conn, pulls), now, changes)
    await ctx.conn.execute(
        profile.update()
        .where(profile.c.id == 1)
        .values(
            sync_status="synced",
            sync_phase=None,
            sync_generation=cmd.generation,
            sync_processed=cmd.processed,
            sync_total=cmd.total,
            sync_error=None,
            last_sync_at=now,
        )
    )
    if changes.task_ids:
        await publish_task_changes(ctx, ctx.conn, sorted(changes.task_ids))
    tell_tasks_of_pull_requests(ctx, changes)
    await publish_header(ctx, ctx.conn)
    return {
        "applied": True,
        "generation": cmd.generation,
        "taskSummaryWrites": changes.writes,
        "repoWrites": repo_writes,
        "membersChanged": members_changed,
        "pullsReceived": len(batch["pulls"]),
    }


def _valid_rows(organization_id: str, model: type[M], rows: list[Any], what: str) -> list[M]:
    """The rows of a sync that the organization can take. One it cannot (stored by an older
    version, say) is skipped with a warning: it must not fail the sync of everything else, every
    time, for good."""
    valid: list[M] = []
    for row in rows:
        try:
            valid.append(model.model_validate(row))
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"])
            log.warning(
                "organization %s: sync skipped a %s it cannot take (%s: %s): %s",
                organization_id,
                what,
                where,
                first["msg"],
                str(row)[:300],
            )
    return valid


async def handle_github_sync_progress(ctx: CommandContext, cmd: GitHubSyncProgress) -> dict[str, Any]:
    """Show a running sync's phase and counts (or its error) in the organization summary."""
    assert_real_organization(ctx.key)
    current = await require_profile(ctx.conn, ctx.key)
    if cmd.generation <= current.sync_generation:
        return {"applied": False}  # progress of a sync that was already applied
    values: dict[str, Any] = {
        "sync_status": cmd.status,
        "sync_phase": cmd.phase if cmd.status == "syncing" else None,
    }
    if cmd.status == "syncing":
        values |= {"sync_processed": cmd.processed, "sync_total": cmd.total, "sync_error": None}
    else:
        values["sync_error"] = cmd.error or "GitHub sync failed"
    if not changed_columns(current, values):
        return {"applied": False}
    await ctx.conn.execute(profile.update().where(profile.c.id == 1).values(**values))
    await publish_header(ctx, ctx.conn)
    return {"applied": True}


async def handle_github_event(ctx: CommandContext, cmd: GitHubEvent) -> dict[str, Any]:
    """Apply what one webhook delivery changed: installation status, catalog, members, PR, CI and
    activity of task rows. One transaction, at most one event per kind."""
    assert_real_organization(ctx.key)
    now = ctx.now_ms()
    changes = TaskRowChanges()
    header = False
    if cmd.installation is not None:
        header |= await apply_installation(ctx, cmd.installation, now, changes)
    current = await load_profile(ctx.conn)
    if current is None:
        log.info("organization %s has no profile yet; GitHub event ignored", ctx.key)
        return {"applied": False, "reason": "organization does not exist"}
    if current.installation_status == "install_required":
        # Deliveries GitHub sent before the uninstall arrive after it: they must not put
        # repositories or pull requests back into the catalog the uninstall emptied.
        if header:
            await publish_header(ctx, ctx.conn)
        if changes.task_ids:
            await publish_task_changes(ctx, ctx.conn, sorted(changes.task_ids))
        return {"applied": header, "reason": "the GitHub App is not installed", "headerChanged": header}
    if cmd.repos_upserted or cmd.repos_removed:
        header |= await write_repos(ctx.conn, cmd.repos_upserted, cmd.repos_removed, now, changes) > 0
    if cmd.members_changed and current.kind == "organization":
        listed = await ctx.actor("github-data", ctx.key).call("member_list")
        if listed.get("members") is not None:
            team = [MemberState.model_validate(m) for m in listed["members"]]
            header |= await replace_members(ctx, team, now, "github_webhook")
    await apply_pulls(ctx.conn, await _of_catalogued_repos(ctx.conn, cmd.pulls), now, changes)
    await apply_ci(ctx.conn, cmd.ci, changes)
    await apply_touches(ctx.conn, cmd.touched, changes)
    if cmd.webhook is not None:
        # Shown with the next header event; a receipt alone publishes nothing (200 deliveries/s).
        await ctx.conn.execute(
            profile.update()
            .where(profile.c.id == 1)
            .values(last_webhook_at=cmd.webhook.received_at, last_webhook_event=cmd.webhook.event)
        )
    if changes.task_ids:
        await publish_task_changes(ctx, ctx.conn, sorted(changes.task_ids))
    tell_tasks_of_pull_requests(ctx, changes)
    if header:
        await publish_header(ctx, ctx.conn)
    return {"applied": True, "taskSummaryWrites": changes.writes, "headerChanged": header}


def tell_tasks_of_pull_requests(ctx: CommandContext, changes: TaskRowChanges) -> None:
    """Each real task whose pull request GitHub changed (merged, closed, reopened, retitled) shows
    it on its own topic: whoever looks at the task sees the change live, not at the next reload."""
    for task_id, pull in sorted(changes.real_pulls.items()):
        key = task_key(ctx.key, task_id)
        ctx.send_after_commit(
            "task", key, "mirror_pull_request", pull, command_id=ctx.derived_id(f"mirror-pr:{task_id}")
        )
    for task_id, entry in sorted(changes.pull_outcomes.items()):
        # Merged, closed or reopened on GitHub: part of the task's history like what Foundry did.
        ctx.send_after_commit(
            "audit-log",
            ctx.key,
            "append",
            {"kind": "task.pull_request_state", "taskId": task_id, "actorUserId": None, **entry},
            command_id=ctx.derived_id(f"audit-pr-state:{task_id}"),
        )


async def _of_catalogued_repos(conn: AsyncConnection, pulls: list[PullState]) -> list[PullState]:
    """The pull requests of repositories in the catalog. A late delivery for a repository that left
    the installation (the catalog follows the installation's list) must not bring its pull
    requests back as tasks; one of a new repository comes with the repository in the same event."""
    if not pulls:
        return pulls
    wanted = sorted({p.repo_id for p in pulls})
    known = {
        r.repo_id for r in (await conn.execute(sa.select(repos.c.repo_id).where(repos.c.repo_id.in_(wanted))))
    }
    skipped = [f"{p.repo_full_name}#{p.number}" for p in pulls if p.repo_id not in known]
    if skipped:
        log.info("GitHub event: pull requests of repositories not in the catalog ignored: %s", skipped[:20])
    return [p for p in pulls if p.repo_id in known]


async def handle_request_github_sync(ctx: CommandContext, cmd: RequestGitHubSync) -> dict[str, Any]:
    """A member asked for a full resync (``POST /v1/organizations/{org}/sync``).

    Raises:
        Conflict: the GitHub App is not connected to this organization.
    """
    assert_real_organization(ctx.key)
    current = await require_profile(ctx.conn, ctx.key)
    if current.installation_status != "connected" or current.installation_id is None:
        raise Conflict(
            f"the GitHub App is not connected to {ctx.key!r} (status {current.installation_status}); "
            "install or unsuspend it first"
        )
    request_sync_after_commit(ctx, "requested by a member")
    audit_after_commit(ctx, "organization.sync_requested", {}, cmd.actor_user_id)
    return {"status": "queued"}


# ------------------------------------------------------------------------------------------ actions


async def github_status(ctx: InstanceContext, _: Empty) -> dict[str, Any]:
    """What github-data needs to sync: the installation and the last applied generation."""
    async with ctx.read() as conn:
        row = await load_profile(conn)
    if row is None:
        return {"exists": False, "syncGeneration": 0}
    return {
        "exists": True,
        "kind": row.kind,
        "githubLogin": row.github_login,
        "installationId": row.installation_id,
        "installationStatus": row.installation_status,
        "syncGeneration": row.sync_generation,
        "syncStatus": row.sync_status,
    }
