"""Organization-side task commands: create a task, take a task's summary push, materialize a PR task.

The organization is the tasks' coordinator: only it creates task actors, and it owns the
sidebar rows (``task_summaries``) that tasks push their summaries into. Of a row, this module writes
title, status, branch, sessions, owner and error (and the pull request a task opened itself); the
PR/CI columns otherwise belong to the GitHub mirror (`actors.organization.github_task_rows`).
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncConnection

from actors.organization.billing_events import kick_seat_sync_after_commit
from actors.organization.billing_state import publish_billing, take_seat
from actors.organization.schema import members, repos, task_summaries
from actors.organization.state import (
    assert_real_organization,
    publish_task_changes,
    require_profile,
    task_summary_json,
)
from actors.task.naming import (
    MAX_PROMPT_CHARS,
    TASK_ID_RE,
    check_branch_name,
    derive_title,
    new_task_id,
    resolve_agent_model,
    task_key,
    unique_branch,
)
from foundry.errors import Conflict, NotFound
from foundry.runtime.context import CommandContext, InstanceContext

_STRICT = ConfigDict(extra="forbid", populate_by_name=True)

TASK_ROLE = "task"
AUDIT_ROLE = "audit-log"

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ inputs


class CreateTask(BaseModel):
    """``POST /v1/organizations/{org}/tasks`` plus the caller."""

    model_config = _STRICT
    repo_id: str = Field(alias="repoId", min_length=1, max_length=40)
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    title: str | None = Field(default=None, min_length=1, max_length=300)
    branch: str | None = Field(default=None, min_length=1, max_length=200)
    agent: str | None = Field(default=None, max_length=50)
    model: str | None = Field(default=None, max_length=100)
    user_id: str = Field(alias="userId", max_length=200)


class PushedPullRequest(BaseModel):
    model_config = _STRICT
    number: int = Field(gt=0)
    url: str | None = Field(default=None, max_length=2000)
    state: str | None = Field(default=None, max_length=20)
    title: str | None = Field(default=None, max_length=1000)


class TaskSummaryUpdated(BaseModel):
    """A task's summary, pushed by the task after every change (through its outbox)."""

    model_config = _STRICT
    task_id: str = Field(alias="taskId", max_length=100)
    title: str = Field(max_length=300)
    status: str = Field(max_length=20)
    branch: str | None = Field(default=None, max_length=300)
    error: str | None = Field(default=None, max_length=50_000)
    owner_user_id: str | None = Field(default=None, alias="ownerUserId", max_length=200)
    owner_login: str | None = Field(default=None, alias="ownerLogin", max_length=100)
    archived: bool = False
    pull_request: PushedPullRequest | None = Field(default=None, alias="pullRequest")
    sessions: list[dict[str, Any]] = Field(default_factory=list, max_length=1000)
    updated_at: int = Field(alias="updatedAt")


class MaterializeTask(BaseModel):
    """The first user interaction with a virtual (PR-backed) task: create its actor (by id)."""

    model_config = _STRICT
    task_id: str = Field(alias="taskId", max_length=100)
    user_id: str = Field(alias="userId", max_length=200)


class TaskRef(BaseModel):
    model_config = _STRICT
    task_id: str = Field(alias="taskId", max_length=100)


# ------------------------------------------------------------------------------------------ helpers


async def _member(conn: AsyncConnection, organization_id: str, user_id: str) -> sa.Row[Any]:
    row = (await conn.execute(sa.select(members).where(members.c.user_id == user_id))).first()
    if row is None:
        raise NotFound(f"organization {organization_id!r} not found")
    return row


def _initialize_body(
    organization_id: str,
    task_id: str,
    repo: sa.Row[Any],
    installation_id: int | None,
    *,
    title: str,
    branch: str,
    prompt: str | None,
    agent: str,
    model: str,
    owner: sa.Row[Any],
    pull_request: dict[str, Any] | None = None,
    session_id: str | None = None,
) -> dict[str, Any]:
    return {
        "sessionId": session_id,
        "organizationId": organization_id,
        "taskId": task_id,
        "repoId": repo.repo_id,
        "repoFullName": repo.full_name,
        "cloneUrl": repo.clone_url,
        "defaultBranch": repo.default_branch,
        "installationId": installation_id,
        "title": title,
        "branch": branch,
        "prompt": prompt,
        "agent": agent,
        "model": model,
        "ownerUserId": owner.user_id,
        "ownerLogin": owner.login,
        "pullRequest": pull_request,
    }


def _send_initialize(ctx: InstanceContext, task_id: str, body: dict[str, Any]) -> None:
    """Create the task actor: ``initialize`` through the outbox (never lost, delivered right after
    commit, off the caller's path). A command a client sends before it lands is answered "not
    initialized yet" (`actors.task.state.TaskNotInitialized`) and retried by the HTTP layer."""
    key = task_key(ctx.key, task_id)
    ctx.send_after_commit(TASK_ROLE, key, "initialize", body, command_id=f"{key}:initialize")


def _audit(
    ctx: InstanceContext,
    kind: str,
    task_id: str,
    repo_id: str,
    branch: str,
    user_id: str,
    payload: dict[str, Any],
) -> None:
    ctx.send_after_commit(
        AUDIT_ROLE,
        ctx.key,
        "append",
        {
            "kind": kind,
            "repoId": repo_id,
            "taskId": task_id,
            "branchName": branch,
            "actorUserId": user_id,
            "payload": payload,
        },
        command_id=f"{task_key(ctx.key, task_id)}:{kind}",
    )


def first_session_summary(session_id: str, agent: str, model: str) -> dict[str, Any]:
    """Session 1 as a task summary lists it (the task's own pushes replace it once it is running)."""
    return {
        "sessionId": session_id,
        "name": "Session 1",
        "agent": agent,
        "model": model,
        "status": "pending",
        "thinkingSinceMs": None,
        "error": None,
    }


def _default_model(ctx: InstanceContext, organization_model: str) -> str:
    settings = ctx.services.settings
    if settings.sandbox.default_model:
        return settings.sandbox.default_model
    if settings.sandbox.default_agent:
        return resolve_agent_model(settings.sandbox.default_agent, None, organization_model)[1]
    if settings.mode == "mock" and settings.demo_agent_enabled:
        return resolve_agent_model("mock", None, organization_model)[1]
    return organization_model


# ------------------------------------------------------------------------------------------ commands


async def create_task(ctx: InstanceContext, cmd: CreateTask) -> dict[str, Any]:
    """Create a task (the HTTP route's way in): a direct action with its own write transaction, so a
    user's create never waits behind queued background commands such as tasks' summary pushes: user
    actions never queue behind background work. Same effects as the ``create_task`` command; see
    `create_task_in`."""
    async with ctx.write() as conn:
        return await create_task_in(ctx, conn, cmd)


async def handle_create_task(ctx: CommandContext, cmd: CreateTask) -> dict[str, Any]:
    """`create_task_in` as a durable command (exactly once per command id)."""
    return await create_task_in(ctx, ctx.conn, cmd)


async def create_task_in(ctx: InstanceContext, conn: AsyncConnection, cmd: CreateTask) -> dict[str, Any]:
    """Create a task: title and a unique branch are decided here, in this transaction, before the task
    actor exists; the summary row appears with status ``provisioning`` and the task actor
    gets ``initialize`` with the first prompt. Returns ``{taskId, title, branchName, sessionId}`` at
    once (``sessionId``: the session that runs the prompt, so a client can subscribe to it right
    away); provisioning continues in the background.

    Raises:
        NotFound: the repository is not in this organization's catalog.
        Conflict: the GitHub App installation is suspended, the repository is archived, or the
            requested branch belongs to another task.
        InvalidInput: a bad branch name, or an unknown agent/model.
    """
    assert_real_organization(ctx.key)
    profile = await require_profile(conn, ctx.key)
    owner = await _member(conn, ctx.key, cmd.user_id)
    if profile.installation_status == "suspended":
        # GitHub refuses a suspended installation's tokens: the clone, the push and the pull request
        # would all fail later, one by one. Say so now, with the fix.
        raise Conflict(
            f"the GitHub App installation of {ctx.key!r} is suspended on GitHub; "
            "an owner of the GitHub account must unsuspend it before tasks can be created"
        )
    repo = (await conn.execute(sa.select(repos).where(repos.c.repo_id == cmd.repo_id))).first()
    if repo is None:
        raise NotFound(f"repository {cmd.repo_id!r} not found in organization {ctx.key!r}")
    if repo.archived:
        raise Conflict(f"repository {repo.full_name} is archived on GitHub; unarchive it to start tasks")
    # The prompt needs a seat (taken here, in this serialized write, exactly once per member) and a
    # plan that accepts prompts; a refusal leaves nothing behind.
    if await take_seat(ctx, conn, owner.user_id):
        await publish_billing(ctx, conn)
        kick_seat_sync_after_commit(ctx)
    agent, model = resolve_agent_model(cmd.agent, cmd.model, _default_model(ctx, profile.default_model))
    title = derive_title(cmd.prompt, cmd.title)
    taken = {
        r[0]: r[1]
        for r in (
            await conn.execute(
                sa.select(task_summaries.c.branch, task_summaries.c.task_id).where(
                    task_summaries.c.repo_id == repo.repo_id, task_summaries.c.branch.is_not(None)
                )
            )
        ).all()
    }
    if cmd.branch is not None:
        branch = check_branch_name(cmd.branch)
        if branch in taken or branch == repo.default_branch:
            owner_task = taken.get(branch)
            raise Conflict(
                f"branch {branch!r} is already used"
                + (f" by task {owner_task}" if owner_task else " as the repository's default branch")
                + "; choose another branch name"
            )
    else:
        branch = unique_branch(title, {*taken, repo.default_branch})
    task_id = new_task_id()
    session_id = f"session-{uuid.uuid4().hex}"  # Session 1, which runs the prompt
    now = ctx.now_ms()
    await conn.execute(
        task_summaries.insert().values(
            task_id=task_id,
            repo_id=repo.repo_id,
            repo_full_name=repo.full_name,
            title=title,
            status="provisioning",
            is_virtual=False,
            branch=branch,
            owner_user_id=owner.user_id,
            owner_login=owner.login,
            # Session 1 is named here, not only once the task initializes: a client that subscribes
            # to it (or reads it) right away is answered from this row while initialize is on its way.
            sessions_json=json.dumps([first_session_summary(session_id, agent, model)]),
            created_at=now,
            updated_at=now,
        )
    )
    body = _initialize_body(
        ctx.key,
        task_id,
        repo,
        profile.installation_id,
        title=title,
        branch=branch,
        prompt=cmd.prompt,
        agent=agent,
        model=model,
        owner=owner,
        session_id=session_id,
    )
    _send_initialize(ctx, task_id, body)
    _audit(
        ctx,
        "task.created",
        task_id,
        repo.repo_id,
        branch,
        cmd.user_id,
        {
            "repoId": repo.repo_id,
            "sandboxProviderId": ctx.services.settings.sandbox.provider,
            "agent": agent,
            "model": model,
        },
    )
    await publish_task_changes(ctx, conn, [task_id])
    log.info(
        "organization %s: task %s created by %s on %s (branch %s, agent %s)",
        ctx.key,
        task_id,
        owner.login,
        repo.full_name,
        branch,
        agent,
    )
    return {
        "taskId": task_id,
        "title": title,
        "branchName": branch,
        "sessionId": session_id,
    }


async def handle_task_summary_updated(ctx: CommandContext, cmd: TaskSummaryUpdated) -> dict[str, Any]:
    """Store a task's pushed summary and broadcast it (``taskSummariesUpdated``, one per push)."""
    row = (
        await ctx.conn.execute(sa.select(task_summaries).where(task_summaries.c.task_id == cmd.task_id))
    ).first()
    if row is None:
        raise NotFound(f"task {cmd.task_id!r} has no summary row in organization {ctx.key!r}")
    values: dict[str, Any] = {
        "title": cmd.title,
        "status": cmd.status,
        "error": cmd.error,
        "owner_user_id": cmd.owner_user_id,
        "owner_login": cmd.owner_login,
        "sessions_json": json.dumps(cmd.sessions),
        "is_virtual": False,
        "updated_at": max(row.updated_at, cmd.updated_at),
    }
    if cmd.branch:
        values["branch"] = cmd.branch
    if cmd.archived and row.archived_at is None:
        values["archived_at"] = cmd.updated_at
    if cmd.pull_request is not None and row.pr_number != cmd.pull_request.number:
        # The task opened this pull request itself; the GitHub mirror keeps it current from here.
        values |= {
            "pr_number": cmd.pull_request.number,
            "pr_url": cmd.pull_request.url,
            "pr_state": cmd.pull_request.state,
            "pr_title": cmd.pull_request.title,
        }
    await ctx.conn.execute(
        task_summaries.update().where(task_summaries.c.task_id == cmd.task_id).values(**values)
    )
    await publish_task_changes(ctx, ctx.conn, [cmd.task_id])
    return {"taskId": cmd.task_id}


async def handle_materialize_task(ctx: CommandContext, cmd: MaterializeTask) -> dict[str, Any]:
    """Turn a virtual PR-backed row into a real task on first interaction (by id; the PR's head branch
    and title, no prompt). Idempotent: a real task is returned as it is.

    Raises:
        NotFound: no such task in this organization; Conflict: the PR's virtual row was archived.
    """
    assert_real_organization(ctx.key)
    row = (
        await ctx.conn.execute(sa.select(task_summaries).where(task_summaries.c.task_id == cmd.task_id))
    ).first()
    if row is None:
        raise NotFound(f"task {cmd.task_id!r} not found in organization {ctx.key!r}")
    if not row.is_virtual:
        return {"taskId": row.task_id, "materialized": False}
    if row.archived_at is not None:
        catalogued = (
            await ctx.conn.execute(sa.select(repos.c.repo_id).where(repos.c.repo_id == row.repo_id))
        ).first()
        if catalogued is None:
            raise Conflict(
                f"task {cmd.task_id!r} was archived: its repository {row.repo_full_name} is no longer "
                "available to the GitHub App"
            )
        outcome = "was merged" if row.pr_state == "merged" else "is closed"
        raise Conflict(f"the pull request of task {cmd.task_id!r} {outcome}; its task was archived")
    profile = await require_profile(ctx.conn, ctx.key)
    owner = await _member(ctx.conn, ctx.key, cmd.user_id)
    repo = (await ctx.conn.execute(sa.select(repos).where(repos.c.repo_id == row.repo_id))).first()
    if repo is None:
        raise NotFound(f"repository {row.repo_id!r} of task {cmd.task_id!r} is no longer in the catalog")
    agent, model = resolve_agent_model(None, None, _default_model(ctx, profile.default_model))
    now = ctx.now_ms()
    await ctx.conn.execute(
        task_summaries.update()
        .where(task_summaries.c.task_id == cmd.task_id)
        .values(
            is_virtual=False,
            status="idle",
            owner_user_id=owner.user_id,
            owner_login=owner.login,
            updated_at=max(row.updated_at, now),
        )
    )
    pull_request = None
    if row.pr_number is not None:
        pull_request = {
            "number": row.pr_number,
            "url": row.pr_url,
            "state": row.pr_state,
            "title": row.pr_title,
            "headSha": row.pr_head_sha,
            "authorLogin": row.pr_author_login,
            "updatedAt": row.pr_updated_at,
            "ciState": row.ci_state,
        }
    body = _initialize_body(
        ctx.key,
        cmd.task_id,
        repo,
        profile.installation_id,
        title=row.title,
        branch=row.branch or repo.default_branch,
        prompt=None,
        agent=agent,
        model=model,
        owner=owner,
        pull_request=pull_request,
    )
    _send_initialize(ctx, cmd.task_id, body)
    _audit(
        ctx,
        "task.materialized",
        cmd.task_id,
        row.repo_id,
        row.branch or "",
        cmd.user_id,
        {"pullRequest": row.pr_number},
    )
    await publish_task_changes(ctx, ctx.conn, [cmd.task_id])
    return {"taskId": cmd.task_id, "materialized": True}


# ------------------------------------------------------------------------------------------ actions


async def task_summary(ctx: InstanceContext, cmd: TaskRef) -> dict[str, Any]:
    """One task's summary row (archived ones included); `NotFound` when the organization has none —
    which is how routes check that a task belongs to the organization in the path."""
    if not TASK_ID_RE.match(cmd.task_id):
        raise NotFound(f"task {cmd.task_id!r} not found")
    async with ctx.read() as conn:
        row = (
            await conn.execute(sa.select(task_summaries).where(task_summaries.c.task_id == cmd.task_id))
        ).first()
    if row is None:
        raise NotFound(f"task {cmd.task_id!r} not found")
    return task_summary_json(row)
