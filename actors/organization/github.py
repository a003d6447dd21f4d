"""The organization's GitHub commands: sync results, sync progress and webhook-driven changes.

github-data (one per organization) mirrors GitHub; the organization owns what members see: the
``repos`` projection, the member list (access control) and, on ``task_summaries``, the PR and CI
columns of every task plus whole *virtual* rows — one per open pull request nobody has turned into a
task yet.

Rules kept here:

* A virtual task's id is deterministic, ``pr-<repoId>-<number>``, so every sync and webhook addresses
  the same row. A pull request whose head branch is a real task's branch attaches to that task.
* Closing or merging a PR archives its virtual row and only updates ``pr_state`` of a real one.
* Content is compared before writing and GitHub's ``updated_at`` orders versions: an unchanged PR
  writes nothing and publishes nothing; an older version never overwrites a newer one.
* Everything one command changes is written in its one transaction and published as one
  ``taskSummariesUpdated`` (and at most one ``organizationUpdated``).
* Webhooks never touch the sync progress fields.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from actors.organization.billing_state import publish_admin_changes
from actors.organization.commands import Empty
from actors.organization.schema import members, profile, repos, task_summaries
from actors.organization.state import (
    assert_real_organization,
    load_profile,
    publish_header,
    publish_members_changed,
    publish_task_changes,
    require_profile,
)
from foundry.errors import Conflict, InvalidInput
from foundry.ids import APP_SHELL_ID, organization_id_for, user_id_for
from foundry.models_catalog import DEFAULT_MODEL
from foundry.runtime.context import CommandContext, InstanceContext

log = logging.getLogger(__name__)

_STRICT = ConfigDict(extra="forbid", populate_by_name=True)

PullRequestState = Literal["open", "draft", "closed", "merged"]
CiState = Literal["pending", "success", "failure", "error"]
InstallationStatus = Literal["connected", "suspended", "install_required"]


def virtual_task_id(repo_id: str, number: int) -> str:
    """The id of the virtual task of pull request ``number`` in repository ``repo_id``."""
    return f"pr-{repo_id}-{number}"


# ------------------------------------------------------------------------------------------ inputs


class RepoState(BaseModel):
    """A repository as github-data mirrors it."""

    model_config = _STRICT
    repo_id: str = Field(alias="repoId", min_length=1, max_length=40)
    full_name: str = Field(alias="fullName", min_length=3, max_length=300)
    default_branch: str = Field(alias="defaultBranch", min_length=1, max_length=300)
    private: bool
    archived: bool = False
    clone_url: str = Field(alias="cloneUrl", max_length=2000)
    html_url: str | None = Field(default=None, alias="htmlUrl", max_length=2000)


class PullState(BaseModel):
    """A pull request as github-data mirrors it; ``updatedAt`` is GitHub's (ISO 8601, UTC)."""

    model_config = _STRICT
    repo_id: str = Field(alias="repoId", min_length=1, max_length=40)
    repo_full_name: str = Field(alias="repoFullName", max_length=300)
    number: int = Field(gt=0)
    title: str = Field(max_length=1000)
    state: PullRequestState
    head_ref: str = Field(alias="headRef", min_length=1, max_length=300)
    head_sha: str | None = Field(default=None, alias="headSha", max_length=64)
    base_ref: str | None = Field(default=None, alias="baseRef", max_length=300)
    author_login: str | None = Field(default=None, alias="authorLogin", max_length=100)
    url: str | None = Field(default=None, max_length=2000)
    updated_at: str = Field(alias="updatedAt", min_length=20, max_length=20)
    ci_state: CiState | None = Field(default=None, alias="ciState")


class MemberState(BaseModel):
    model_config = _STRICT
    github_id: int = Field(alias="githubId", gt=0)
    login: str = Field(min_length=1, max_length=100)
    avatar_url: str | None = Field(default=None, alias="avatarUrl")
    role: Literal["admin", "member"]


class CiChange(BaseModel):
    model_config = _STRICT
    repo_id: str = Field(alias="repoId", min_length=1, max_length=40)
    number: int = Field(gt=0)
    head_sha: str | None = Field(default=None, alias="headSha", max_length=64)
    state: CiState | None


class Touch(BaseModel):
    """New activity (a review or comment) on a pull request at ``at`` (epoch ms)."""

    model_config = _STRICT
    repo_id: str = Field(alias="repoId", min_length=1, max_length=40)
    number: int = Field(gt=0)
    at: int


class InstallationChange(BaseModel):
    model_config = _STRICT
    installation_id: int = Field(alias="installationId", gt=0)
    status: InstallationStatus
    account_login: str = Field(alias="accountLogin", min_length=1, max_length=100)
    account_id: int = Field(alias="accountId", gt=0)
    account_type: Literal["User", "Organization"] = Field(alias="accountType")
    avatar_url: str | None = Field(default=None, alias="avatarUrl", max_length=2000)
    #: Sync again even if the installation was already connected (e.g. new permissions accepted).
    resync: bool = False


class WebhookReceipt(BaseModel):
    model_config = _STRICT
    event: str = Field(max_length=100)
    received_at: int = Field(alias="receivedAt")


class GitHubEvent(BaseModel):
    """What one webhook delivery (or a member refresh, or the installation reconciliation) changed."""

    model_config = _STRICT
    installation: InstallationChange | None = None
    repos_upserted: list[RepoState] = Field(default_factory=list, alias="reposUpserted", max_length=1000)
    repos_removed: list[str] = Field(default_factory=list, alias="reposRemoved", max_length=1000)
    #: github-data's member list changed: the organization reads it (``member_list``) and applies it.
    members_changed: bool = Field(default=False, alias="membersChanged")
    pulls: list[PullState] = Field(default_factory=list, max_length=1000)
    ci: list[CiChange] = Field(default_factory=list, max_length=1000)
    touched: list[Touch] = Field(default_factory=list, max_length=1000)
    webhook: WebhookReceipt | None = None


class ApplyGitHubSync(BaseModel):
    """Sync ``generation`` is stored in github-data: pull and apply everything it changed."""

    model_config = _STRICT
    generation: int = Field(ge=1)
    processed: int = Field(default=0, ge=0)
    total: int = Field(default=0, ge=0)


class GitHubSyncProgress(BaseModel):
    model_config = _STRICT
    generation: int = Field(ge=1)
    status: Literal["syncing", "error"]
    phase: str | None = Field(default=None, max_length=50)
    processed: int = Field(default=0, ge=0)
    total: int = Field(default=0, ge=0)
    error: str | None = Field(default=None, max_length=2000)


class RequestGitHubSync(BaseModel):
    model_config = _STRICT
    actor_user_id: str | None = Field(default=None, alias="actorUserId", max_length=200)


# ------------------------------------------------------------------------------------------ helpers


@dataclass
class _Changes:
    """Task rows touched by one command, and how many row writes that took."""

    task_ids: set[str] = field(default_factory=set)
    writes: int = 0

    def wrote(self, task_id: str, count: int = 1) -> None:
        self.task_ids.add(task_id)
        self.writes += count


def _ms(iso_value: str | None) -> int | None:
    if iso_value is None:
        return None
    return int(datetime.fromisoformat(iso_value.replace("Z", "+00:00")).timestamp() * 1000)


def request_sync_after_commit(ctx: CommandContext, reason: str) -> None:
    """Ask this organization's github-data to run a full sync once the command commits."""
    ctx.send_after_commit(
        "github-data", ctx.key, "sync", {"reason": reason[:200]}, command_id=ctx.derived_id("github-sync")
    )


def _audit(ctx: CommandContext, kind: str, payload: dict[str, Any], actor: str | None = None) -> None:
    ctx.send_after_commit(
        "audit-log",
        ctx.key,
        "append",
        {"kind": kind, "payload": payload, "actorUserId": actor},
        command_id=ctx.derived_id(f"audit-{kind}"),
    )


def _pr_columns(p: PullState) -> dict[str, Any]:
    return {
        "pr_number": p.number,
        "pr_state": p.state,
        "pr_url": p.url,
        "pr_title": p.title,
        "pr_author_login": p.author_login,
        "pr_head_sha": p.head_sha,
        "pr_updated_at": p.updated_at,
        "ci_state": p.ci_state,
    }


def _changed(row: Any, values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if getattr(row, k) != v}


class _RowWrites:
    """Changes to task rows, written together: one statement per set of changed columns instead of
    one per row (a batch of deliveries changes dozens of rows; each statement costs a thread hop)."""

    def __init__(self) -> None:
        self._values: dict[str, dict[str, Any]] = {}

    def set(self, task_id: str, values: dict[str, Any]) -> None:
        """Change ``values`` of row ``task_id`` (later changes of a column win, as in order)."""
        self._values.setdefault(task_id, {}).update(values)

    async def flush(self, conn: AsyncConnection) -> None:
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for task_id, values in self._values.items():
            params = {"row_task_id": task_id, **{f"new_{k}": v for k, v in values.items()}}
            groups.setdefault(tuple(sorted(values)), []).append(params)
        for columns, params_list in groups.items():
            await conn.execute(
                task_summaries.update()
                .where(task_summaries.c.task_id == sa.bindparam("row_task_id"))
                .values({c: sa.bindparam(f"new_{c}") for c in columns}),
                params_list,
            )
        self._values.clear()


async def apply_pulls(conn: AsyncConnection, pulls: list[PullState], now: int, changes: _Changes) -> None:
    """Attach each pull request to its real task, or keep its virtual task row current."""
    if not pulls:
        return
    rows = (
        await conn.execute(
            sa.select(task_summaries).where(task_summaries.c.repo_id.in_(sorted({p.repo_id for p in pulls})))
        )
    ).all()
    by_id = {r.task_id: r for r in rows}
    real_by_pr = {(r.repo_id, r.pr_number): r for r in rows if not r.is_virtual and r.pr_number is not None}
    real_by_branch = {
        (r.repo_id, r.branch): r for r in rows if not r.is_virtual and r.branch and r.archived_at is None
    }
    inserts: list[dict[str, Any]] = []
    inserted: set[str] = set()
    writes = _RowWrites()
    for p in pulls:
        vid = virtual_task_id(p.repo_id, p.number)
        pr_ms = _ms(p.updated_at) or now
        real = real_by_pr.get((p.repo_id, p.number)) or real_by_branch.get((p.repo_id, p.head_ref))
        if real is not None:
            if real.pr_number == p.number and real.pr_updated_at and p.updated_at < real.pr_updated_at:
                continue  # an older version of this PR (webhooks arrive out of order)
            diff = _changed(real, {**_pr_columns(p), "updated_at": max(real.updated_at, pr_ms)})
            if diff:
                writes.set(real.task_id, diff)
                changes.wrote(real.task_id)
            shadow = by_id.get(vid)
            if shadow is not None and shadow.is_virtual and shadow.archived_at is None:
                # The real task now carries this PR: its virtual twin leaves the sidebar.
                writes.set(vid, {"archived_at": now})
                changes.wrote(vid)
            continue
        row = by_id.get(vid)
        is_open = p.state in ("open", "draft")
        if row is None:
            if is_open and vid not in inserted:
                inserted.add(vid)
                inserts.append(
                    {
                        "task_id": vid,
                        "repo_id": p.repo_id,
                        "repo_full_name": p.repo_full_name,
                        "title": p.title.strip() or p.head_ref,
                        "status": "virtual",
                        "is_virtual": True,
                        "branch": p.head_ref,
                        **_pr_columns(p),
                        "sessions_json": "[]",
                        "created_at": now,
                        "updated_at": pr_ms,
                        "archived_at": None,
                    }
                )
            continue
        if row.pr_updated_at and p.updated_at < row.pr_updated_at:
            continue
        values: dict[str, Any] = {**_pr_columns(p), "updated_at": max(row.updated_at, pr_ms)}
        if row.is_virtual:
            values |= {
                "title": p.title.strip() or p.head_ref,
                "repo_full_name": p.repo_full_name,
                "branch": p.head_ref,
                # Reopened: back in the sidebar. Closed or merged: archived.
                "archived_at": None if is_open else (row.archived_at or now),
            }
        diff = _changed(row, values)
        if diff:
            writes.set(vid, diff)
            changes.wrote(vid)
    await writes.flush(conn)
    if inserts:
        await conn.execute(sqlite_insert(task_summaries).on_conflict_do_nothing(), inserts)
        for row_values in inserts:
            changes.wrote(row_values["task_id"])


async def _rows_of_pulls(
    conn: AsyncConnection, keys: set[tuple[str, int]], *columns: Any
) -> dict[tuple[str, int], list[Any]]:
    """The task rows of these pull requests, by (repository id, number), in one query: a batch of
    deliveries names dozens of them, and a query each cost a thread hop each."""
    if not keys:
        return {}
    rows = await conn.execute(
        sa.select(
            task_summaries.c.task_id, task_summaries.c.repo_id, task_summaries.c.pr_number, *columns
        ).where(
            task_summaries.c.repo_id.in_(sorted({repo_id for repo_id, _ in keys})),
            task_summaries.c.pr_number.in_(sorted({number for _, number in keys})),
        )
    )
    found: dict[tuple[str, int], list[Any]] = {}
    for r in rows:
        if (r.repo_id, r.pr_number) in keys:
            found.setdefault((r.repo_id, r.pr_number), []).append(r)
    return found


async def _apply_ci(conn: AsyncConnection, ci: list[CiChange], changes: _Changes) -> None:
    by_pull = await _rows_of_pulls(
        conn, {(c.repo_id, c.number) for c in ci}, task_summaries.c.pr_head_sha, task_summaries.c.ci_state
    )
    current = {r.task_id: r.ci_state for rows in by_pull.values() for r in rows}
    writes = _RowWrites()
    for c in ci:
        for row in by_pull.get((c.repo_id, c.number), []):
            if c.head_sha and row.pr_head_sha and row.pr_head_sha != c.head_sha:
                continue  # CI of a commit that is no longer the PR's head
            if current[row.task_id] != c.state:
                current[row.task_id] = c.state
                writes.set(row.task_id, {"ci_state": c.state})
                changes.wrote(row.task_id)
    await writes.flush(conn)


async def _apply_touches(conn: AsyncConnection, touched: list[Touch], changes: _Changes) -> None:
    by_pull = await _rows_of_pulls(
        conn, {(t.repo_id, t.number) for t in touched}, task_summaries.c.updated_at
    )
    current = {r.task_id: r.updated_at for rows in by_pull.values() for r in rows}
    writes = _RowWrites()
    for t in touched:
        for row in by_pull.get((t.repo_id, t.number), []):
            if t.at > current[row.task_id]:
                current[row.task_id] = t.at
                writes.set(row.task_id, {"updated_at": t.at})
                changes.wrote(row.task_id)
    await writes.flush(conn)


async def _archive_virtual_of(
    conn: AsyncConnection, repo_ids: list[str] | None, now: int, changes: _Changes
) -> None:
    """Archive the virtual rows of these repositories (all repositories when None)."""
    stmt = sa.select(task_summaries.c.task_id).where(
        task_summaries.c.is_virtual.is_(True), task_summaries.c.archived_at.is_(None)
    )
    if repo_ids is not None:
        stmt = stmt.where(task_summaries.c.repo_id.in_(repo_ids))
    ids = [r.task_id for r in (await conn.execute(stmt)).all()]
    if ids:
        await conn.execute(
            task_summaries.update().where(task_summaries.c.task_id.in_(ids)).values(archived_at=now)
        )
        for task_id in ids:
            changes.wrote(task_id)


async def _write_repos(
    conn: AsyncConnection, upserted: list[RepoState], removed: list[str], now: int, changes: _Changes
) -> int:
    """Upsert and remove catalog rows; returns how many rows were written."""
    existing = {r.repo_id: r for r in (await conn.execute(sa.select(repos))).all()}
    writes = 0
    gone = [repo_id for repo_id in removed if repo_id in existing]
    if gone:
        # Deletes first: a repository recreated under a deleted one's name must not hit the unique name.
        await conn.execute(repos.delete().where(repos.c.repo_id.in_(gone)))
        await _archive_virtual_of(conn, gone, now, changes)
        writes += len(gone)
    for r in upserted:
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
        elif _changed(row, values):
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


async def _replace_members(ctx: CommandContext, team: list[MemberState], now: int, source: str) -> bool:
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
        if row is not None and not _changed(row, values):
            continue
        stmt = sqlite_insert(members).values(user_id=user_id, updated_at=now, **values)
        await ctx.conn.execute(
            stmt.on_conflict_do_update(index_elements=["user_id"], set_={**values, "updated_at": now})
        )
        changed = True
    added = sorted(set(after) - set(before))
    if added or gone:
        _audit(ctx, "organization.members_synced", {"added": added, "removed": gone, "source": source})
    # The cache's invalidation first: a gateway re-checking access after the admin change must not
    # read the role it had cached before it.
    if changed:
        publish_members_changed(ctx)
    publish_admin_changes(ctx, {u: r.role for u, r in before.items()}, {u: m.role for u, m in after.items()})
    return changed


async def _apply_installation(
    ctx: CommandContext, inst: InstallationChange, now: int, changes: _Changes
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
        _audit(
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
        _audit(ctx, f"github.installation_{inst.status}", {"installationId": inst.installation_id})
    if inst.status == "install_required":
        # The App is gone: the catalog cannot be refreshed and virtual tasks cannot become real ones.
        await ctx.conn.execute(repos.delete())
        await _archive_virtual_of(ctx.conn, None, now, changes)
    if inst.status == "connected" and (newly_connected or inst.resync):
        request_sync_after_commit(ctx, "installation connected" if newly_connected else "permissions changed")
    return True


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
    changes = _Changes()
    new_repos = [RepoState.model_validate(r) for r in batch["repos"]]
    existing_ids = {r.repo_id for r in (await ctx.conn.execute(sa.select(repos.c.repo_id))).all()}
    removed = sorted(existing_ids - {r.repo_id for r in new_repos})
    repo_writes = await _write_repos(ctx.conn, new_repos, removed, now, changes)
    members_changed = False
    if batch.get("members") is not None and current.kind == "organization":
        team = [MemberState.model_validate(m) for m in batch["members"]]
        members_changed = await _replace_members(ctx, team, now, "github_sync")
    await apply_pulls(ctx.conn, [PullState.model_validate(p) for p in batch["pulls"]], now, changes)
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
    await publish_header(ctx, ctx.conn)
    return {
        "applied": True,
        "generation": cmd.generation,
        "taskSummaryWrites": changes.writes,
        "repoWrites": repo_writes,
        "membersChanged": members_changed,
        "pullsReceived": len(batch["pulls"]),
    }


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
    if not _changed(current, values):
        return {"applied": False}
    await ctx.conn.execute(profile.update().where(profile.c.id == 1).values(**values))
    await publish_header(ctx, ctx.conn)
    return {"applied": True}


async def handle_github_event(ctx: CommandContext, cmd: GitHubEvent) -> dict[str, Any]:
    """Apply what one webhook delivery changed: installation status, catalog, members, PR, CI and
    activity of task rows. One transaction, at most one event per kind."""
    assert_real_organization(ctx.key)
    now = ctx.now_ms()
    changes = _Changes()
    header = False
    if cmd.installation is not None:
        header |= await _apply_installation(ctx, cmd.installation, now, changes)
    current = await load_profile(ctx.conn)
    if current is None:
        log.info("organization %s has no profile yet; GitHub event ignored", ctx.key)
        return {"applied": False, "reason": "organization does not exist"}
    if cmd.repos_upserted or cmd.repos_removed:
        header |= await _write_repos(ctx.conn, cmd.repos_upserted, cmd.repos_removed, now, changes) > 0
    if cmd.members_changed and current.kind == "organization":
        listed = await ctx.actor("github-data", ctx.key).call("member_list")
        if listed.get("members") is not None:
            team = [MemberState.model_validate(m) for m in listed["members"]]
            header |= await _replace_members(ctx, team, now, "github_webhook")
    await apply_pulls(ctx.conn, cmd.pulls, now, changes)
    await _apply_ci(ctx.conn, cmd.ci, changes)
    await _apply_touches(ctx.conn, cmd.touched, changes)
    if cmd.webhook is not None:
        # Shown with the next header event; a receipt alone publishes nothing (200 deliveries/s).
        await ctx.conn.execute(
            profile.update()
            .where(profile.c.id == 1)
            .values(last_webhook_at=cmd.webhook.received_at, last_webhook_event=cmd.webhook.event)
        )
    if changes.task_ids:
        await publish_task_changes(ctx, ctx.conn, sorted(changes.task_ids))
    if header:
        await publish_header(ctx, ctx.conn)
    return {"applied": True, "taskSummaryWrites": changes.writes, "headerChanged": header}


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
    _audit(ctx, "organization.sync_requested", {}, cmd.actor_user_id)
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
