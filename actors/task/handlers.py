"""Mailbox commands of the task role.

Each one records intent in one transaction and starts a job for anything slow or external,
so a running agent turn never blocks Stop, rename or another message.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import sqlalchemy as sa

from actors.task.commands import (
    ChangeOwner,
    CreateSession,
    Initialize,
    MirrorPullRequest,
    Rename,
    SandboxExited,
    SendMessage,
)
from actors.task.jobs import (
    kick_session,
    request_provisioning,
    start_session_loop,
)
from actors.task.naming import check_branch_name, resolve_agent_model, split_task_key
from actors.task.schema import early_archive, messages, sessions, task
from actors.task.state import (
    append_events,
    assert_not_archived,
    audit,
    load_task,
    refresh,
    require_open_session,
    require_task,
)
from foundry.errors import InvalidInput
from foundry.runtime.context import CommandContext

log = logging.getLogger(__name__)


def new_session_id() -> str:
    """A new UI session id: ``session-<uuid hex>``."""
    return f"session-{uuid.uuid4().hex}"


async def _insert_session(
    ctx: CommandContext,
    *,
    agent: str,
    model: str,
    name: str | None,
    user_id: str | None,
    session_id: str | None = None,
) -> str:
    count = (await ctx.conn.execute(sa.select(sa.func.count()).select_from(sessions))).scalar() or 0
    session_id = session_id or new_session_id()
    now = ctx.now_ms()
    await ctx.conn.execute(
        sessions.insert().values(
            session_id=session_id,
            name=name or f"Session {count + 1}",
            agent=agent,
            model=model,
            status="pending",
            created_by=user_id,
            created_at=now + count,  # distinct and ordered even with a frozen test clock
            updated_at=now,
        )
    )
    await append_events(
        ctx,
        ctx.conn,
        session_id,
        [("sessionCreated", {"name": name or f"Session {count + 1}", "agent": agent, "model": model})],
    )
    return session_id


def _require_text(text: str, field: str) -> None:
    """An agent is never sent a message with nothing to read in it."""
    if not text.strip():
        raise InvalidInput(f"{field} must contain more than whitespace", [field])


async def _queue_message(ctx: CommandContext, session_id: str, text: str, user_id: str | None) -> int:
    result = await ctx.conn.execute(
        messages.insert().values(
            session_id=session_id, text=text, user_id=user_id, status="queued", created_at=ctx.now_ms()
        )
    )
    message_id = int(result.inserted_primary_key[0])  # type: ignore[index]
    await append_events(
        ctx,
        ctx.conn,
        session_id,
        [("userMessage", {"messageId": message_id, "text": text, "userId": user_id})],
    )
    return message_id


async def handle_initialize(ctx: CommandContext, cmd: Initialize) -> dict[str, Any]:
    """Create the task from the organization's decision (title, branch, repository, owner).

    With a prompt, Session 1 is opened with the prompt queued as its first message (it is
    sent once the agent session is ready, never lost) and provisioning starts at once. A task
    materialized from a pull request has no prompt: its sandbox starts with its first session.
    Idempotent: a second ``initialize`` returns the existing task.
    """
    organization_id, task_id = split_task_key(ctx.key)
    if (cmd.organization_id, cmd.task_id) != (organization_id, task_id):
        raise InvalidInput(
            f"initialize for {cmd.organization_id}:{cmd.task_id} sent to task {ctx.key}", ["taskId"]
        )
    existing = await load_task(ctx.conn)
    if existing is not None:
        return {"taskId": existing.task_id, "created": False}
    check_branch_name(cmd.branch)
    now = ctx.now_ms()
    # Archived while this command was on its way: record the task as archived and start nothing.
    early = (await ctx.conn.execute(sa.select(early_archive))).first()
    pr = cmd.pull_request or {}
    await ctx.conn.execute(
        task.insert().values(
            id=1,
            organization_id=organization_id,
            task_id=task_id,
            repo_id=cmd.repo_id,
            repo_full_name=cmd.repo_full_name,
            clone_url=cmd.clone_url,
            default_branch=cmd.default_branch,
            installation_id=cmd.installation_id,
            title=cmd.title,
            prompt=cmd.prompt,
            branch=cmd.branch,
            default_agent=cmd.agent,
            default_model=cmd.model,
            provision_state="pending" if cmd.prompt and early is None else "none",
            status="archived" if early is not None else ("provisioning" if cmd.prompt else "idle"),
            owner_user_id=cmd.owner_user_id,
            owner_login=cmd.owner_login,
            created_by=cmd.owner_user_id,
            pr_number=pr.get("number"),
            pr_url=pr.get("url"),
            pr_state=pr.get("state"),
            pr_title=pr.get("title"),
            pr_head_sha=pr.get("headSha"),
            pr_author_login=pr.get("authorLogin"),
            pr_updated_at=pr.get("updatedAt"),
            ci_state=pr.get("ciState"),
            created_at=now,
            updated_at=now,
            archived_at=early.archived_at if early is not None else None,
        )
    )
    if early is not None:
        await refresh(ctx, ctx.conn)
        return {"taskId": task_id, "created": True, "sessionId": None, "archived": True}
    session_id = None
    if cmd.prompt:
        session_id = await _insert_session(
            ctx,
            agent=cmd.agent,
            model=cmd.model,
            name=None,
            user_id=cmd.owner_user_id,
            session_id=cmd.session_id,
        )
        await _queue_message(ctx, session_id, cmd.prompt, cmd.owner_user_id)
    row = await require_task(ctx.conn, ctx.key)
    audit(
        ctx,
        row,
        "task.initialized",
        {"sandboxProviderId": ctx.services.settings.sandbox.provider, "fromPullRequest": cmd.prompt is None},
        user_id=cmd.owner_user_id,
        command_id=ctx.derived_id("audit"),
    )
    await refresh(ctx, ctx.conn)
    if cmd.prompt:
        await request_provisioning(ctx, ctx.conn)
    return {"taskId": task_id, "created": True, "sessionId": session_id}


async def open_task(ctx: CommandContext) -> sa.Row[Any]:
    """The task, refused when archived (for commands that change it)."""
    row = await require_task(ctx.conn, ctx.key)
    assert_not_archived(row)
    return row


async def handle_create_session(ctx: CommandContext, cmd: CreateSession) -> dict[str, Any]:
    """Open a new session (agent and model from the catalog, ``/v1/agents`` of the sandbox decides if
    it runs); its agent starts in the background. An optional first prompt is queued."""
    row = await open_task(ctx)
    if cmd.prompt is not None:
        _require_text(cmd.prompt, "prompt")
    agent, model = resolve_agent_model(cmd.agent, cmd.model, row.default_model)
    session_id = await _insert_session(ctx, agent=agent, model=model, name=cmd.name, user_id=cmd.user_id)
    if cmd.prompt:
        await _queue_message(ctx, session_id, cmd.prompt, cmd.user_id)
    audit(
        ctx,
        row,
        "task.session_created",
        {"sessionId": session_id, "agent": agent, "model": model},
        user_id=cmd.user_id,
        command_id=ctx.derived_id("audit"),
    )
    await refresh(ctx, ctx.conn)
    await kick_session(ctx, ctx.conn, session_id)
    created = (
        await ctx.conn.execute(sa.select(sessions.c.name).where(sessions.c.session_id == session_id))
    ).scalar()
    return {"sessionId": session_id, "name": created, "agent": agent, "model": model}


async def handle_send_message(ctx: CommandContext, cmd: SendMessage) -> dict[str, Any]:
    """Queue a message; the session's loop sends it when the agent is free (202 semantics).

    Raises:
        Conflict: the session is closed or the task archived.
    """
    _require_text(cmd.text, "text")
    await open_task(ctx)
    session = await require_open_session(ctx.conn, cmd.session_id)
    message_id = await _queue_message(ctx, session.session_id, cmd.text, cmd.user_id)
    position = (
        await ctx.conn.execute(
            sa.select(sa.func.count()).where(
                messages.c.session_id == cmd.session_id, messages.c.status == "queued"
            )
        )
    ).scalar() or 1
    await refresh(ctx, ctx.conn)
    await kick_session(ctx, ctx.conn, session.session_id)
    return {"messageId": message_id, "sessionId": cmd.session_id, "queuePosition": int(position)}


async def handle_rename(ctx: CommandContext, cmd: Rename) -> dict[str, Any]:
    """Rename the task (the branch never changes)."""
    row = await open_task(ctx)
    title = " ".join(cmd.title.split())
    if not title:
        raise InvalidInput("task title is required", ["title"])
    if title != row.title:
        await ctx.conn.execute(task.update().where(task.c.id == 1).values(title=title))
        audit(
            ctx,
            row,
            "task.renamed",
            {"from": row.title, "to": title},
            user_id=cmd.user_id,
            command_id=ctx.derived_id("audit"),
        )
        await refresh(ctx, ctx.conn)
    return {"taskId": row.task_id, "title": title}


async def handle_mirror_pull_request(ctx: CommandContext, cmd: MirrorPullRequest) -> dict[str, Any]:
    """Show the pull request as GitHub has it now (merged, closed, reopened, retitled, a new head
    commit, its CI), archived task or not: its page and everyone on its topic see the change at
    once."""
    row = await require_task(ctx.conn, ctx.key)
    values = {
        "pr_number": cmd.number,
        "pr_url": cmd.url,
        "pr_state": cmd.state,
        "pr_title": cmd.title,
        "pr_head_sha": cmd.head_sha,
        "pr_author_login": cmd.author_login,
        "pr_updated_at": cmd.updated_at,
        "ci_state": cmd.ci_state,
    }
    if any(getattr(row, column) != value for column, value in values.items()):
        await ctx.conn.execute(task.update().where(task.c.id == 1).values(**values))
        await refresh(ctx, ctx.conn)
    return {"taskId": row.task_id, "pullRequest": cmd.model_dump()}


async def handle_change_owner(ctx: CommandContext, cmd: ChangeOwner) -> dict[str, Any]:
    """Make another member the task owner (the organization route checked membership)."""
    row = await open_task(ctx)
    if cmd.owner_user_id != row.owner_user_id:
        await ctx.conn.execute(
            task.update()
            .where(task.c.id == 1)
            .values(owner_user_id=cmd.owner_user_id, owner_login=cmd.owner_login)
        )
        audit(
            ctx,
            row,
            "task.owner_changed",
            {"from": row.owner_user_id, "to": cmd.owner_user_id},
            user_id=cmd.user_id,
            command_id=ctx.derived_id("audit"),
        )
        await refresh(ctx, ctx.conn)
    return {"ownerUserId": cmd.owner_user_id, "ownerLogin": cmd.owner_login}


async def handle_sandbox_exited(ctx: CommandContext, cmd: SandboxExited) -> dict[str, Any]:
    """The sandbox died: the task shows ``error`` with the reason until the next message restarts it.

    Agent sessions died with it; a running turn records its own failure. A report about a server
    that was already replaced (older generation) is ignored.
    """
    row = await load_task(ctx.conn)
    if row is None or row.archived_at is not None or cmd.generation < row.sandbox_generation:
        return {"recorded": False}
    reason = f"the sandbox stopped unexpectedly; send a message to restart it ({cmd.reason})"
    await ctx.conn.execute(task.update().where(task.c.id == 1).values(sandbox_error=reason))
    idle = (
        await ctx.conn.execute(
            sa.select(sessions.c.session_id).where(
                sessions.c.status.in_(["idle", "pending"]), sessions.c.acp_server_id.is_not(None)
            )
        )
    ).all()
    # Their ACP servers died with it. The agent's session id is kept: the next turn sees that it
    # belongs to an older sandbox generation and resumes it (``session/load`` where supported).
    await ctx.conn.execute(
        sessions.update()
        .where(sessions.c.status.in_(["idle", "pending", "error"]))
        .values(acp_server_id=None, last_event_id=None)
    )
    for (session_id,) in idle:
        await append_events(ctx, ctx.conn, session_id, [("sandboxExited", {"reason": cmd.reason})])
    audit(ctx, row, "task.error", {"step": "sandbox", "detail": reason}, command_id=ctx.derived_id("audit"))
    await refresh(ctx, ctx.conn)
    # Messages already acknowledged must not wait for another one to restart the sandbox: their
    # session loops start it again now (a loop still winding down its failed turn runs once more).
    waiting = (
        await ctx.conn.execute(
            sa.select(messages.c.session_id).where(messages.c.status == "queued").distinct()
        )
    ).scalars()
    for session_id in waiting:
        start_session_loop(ctx, session_id)
    return {"recorded": True}
