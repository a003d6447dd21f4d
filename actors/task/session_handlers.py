"""Mailbox commands on one session of a task: Stop, rename, close, and answers to the agent's
permission requests. Each records intent in one transaction; anything slow runs as a job."""

from __future__ import annotations

import json
import logging
from functools import partial
from typing import Any

import sqlalchemy as sa

from actors.task.commands import AnswerPermission, RenameSession, SessionRef
from actors.task.handlers import open_task
from actors.task.jobs import close_job, permission_job
from actors.task.schema import messages, permission_requests, sessions
from actors.task.state import append_events, audit, refresh, require_open_session, require_task
from actors.task.turn_end import close_left_open_calls, end_running_turns
from actors.task.turn_stop import cancel_job
from foundry.errors import Conflict, InvalidInput, NotFound
from foundry.runtime.context import CommandContext

log = logging.getLogger(__name__)


async def handle_stop_session(ctx: CommandContext, cmd: SessionRef) -> dict[str, Any]:
    """Stop: cancel the running turn (ACP ``session/cancel``, in a job: never waiting on the turn,
    so Stop is processed while the turn runs) and drop messages still queued behind it."""
    await require_task(ctx.conn, ctx.key)
    session = await require_open_session(ctx.conn, cmd.session_id)
    running = session.status == "running"
    queued = (
        await ctx.conn.execute(
            sa.select(sa.func.count()).where(
                messages.c.session_id == cmd.session_id, messages.c.status == "queued"
            )
        )
    ).scalar()
    if not running and not queued:
        return {"stopping": False, "droppedQueued": 0}  # nothing to stop: no event, no job
    dropped = await ctx.conn.execute(
        messages.update()
        .where(messages.c.session_id == cmd.session_id, messages.c.status == "queued")
        .values(status="cancelled", stop_reason="cancelled", finished_at=ctx.now_ms())
    )
    await ctx.conn.execute(
        messages.update()
        .where(messages.c.session_id == cmd.session_id, messages.c.status == "running")
        .values(stop_requested_at=ctx.now_ms())
    )
    await append_events(
        ctx,
        ctx.conn,
        cmd.session_id,
        [
            (
                "stopRequested",
                {"userId": cmd.user_id, "turnRunning": running, "droppedQueued": dropped.rowcount},
            )
        ],
    )
    await refresh(ctx, ctx.conn)
    if running:
        ctx.start_job(f"cancel:{cmd.session_id}", partial(cancel_job, session_id=cmd.session_id))
    return {"stopping": running, "droppedQueued": dropped.rowcount}


async def handle_rename_session(ctx: CommandContext, cmd: RenameSession) -> dict[str, Any]:
    """Rename a session (the transcript says so; the task's history too, like a task rename)."""
    row = await open_task(ctx)
    session = await require_open_session(ctx.conn, cmd.session_id)
    name = " ".join(cmd.name.split())
    if not name:
        raise InvalidInput("session name is required", ["name"])
    if name == session.name:
        return {"sessionId": cmd.session_id, "name": name}
    await ctx.conn.execute(
        sessions.update()
        .where(sessions.c.session_id == cmd.session_id)
        .values(name=name, updated_at=ctx.now_ms())
    )
    await append_events(ctx, ctx.conn, cmd.session_id, [("sessionRenamed", {"name": name})])
    audit(
        ctx,
        row,
        "task.session_renamed",
        {"sessionId": cmd.session_id, "from": session.name, "to": name},
        user_id=cmd.user_id,
        command_id=ctx.derived_id("audit"),
    )
    await refresh(ctx, ctx.conn)
    return {"sessionId": cmd.session_id, "name": name}


async def handle_close_session(ctx: CommandContext, cmd: SessionRef) -> dict[str, Any]:
    """Close a session: its turn is cancelled and its agent shut down in the background; its
    transcript stays readable. Idempotent."""
    row = await require_task(ctx.conn, ctx.key)
    session = (
        await ctx.conn.execute(sa.select(sessions).where(sessions.c.session_id == cmd.session_id))
    ).first()
    if session is None:
        raise NotFound(f"session {cmd.session_id!r} not found in this task")
    if session.status == "closed":
        return {"sessionId": cmd.session_id, "closed": True, "already": True}
    now = ctx.now_ms()
    # A running turn ends here, before the session's close in its transcript, while the agent is
    # shut down in the background.
    await end_running_turns(ctx, ctx.conn, "closed", cmd.session_id)
    await ctx.conn.execute(
        messages.update()
        .where(messages.c.session_id == cmd.session_id, messages.c.status == "queued")
        .values(status="cancelled", stop_reason="closed", finished_at=now)
    )
    await ctx.conn.execute(
        permission_requests.update()
        .where(permission_requests.c.session_id == cmd.session_id, permission_requests.c.status == "pending")
        .values(status="cancelled", answered_at=now)
    )
    await ctx.conn.execute(
        sessions.update()
        .where(sessions.c.session_id == cmd.session_id)
        .values(status="closed", closed_at=now, updated_at=now, thinking_since=None)
    )
    # Its agent is shut down: a tool call an earlier turn left running would spin on the page.
    events = await close_left_open_calls(ctx.conn, cmd.session_id, "cancelled")
    events.append(("sessionClosed", {"userId": cmd.user_id}))
    await append_events(ctx, ctx.conn, cmd.session_id, events)
    audit(
        ctx,
        row,
        "task.session_closed",
        {"sessionId": cmd.session_id},
        user_id=cmd.user_id,
        command_id=ctx.derived_id("audit"),
    )
    await refresh(ctx, ctx.conn)
    if session.acp_server_id is not None:
        ctx.start_job(f"close:{cmd.session_id}", partial(close_job, session_id=cmd.session_id))
    return {"sessionId": cmd.session_id, "closed": True, "already": False}


async def handle_answer_permission(ctx: CommandContext, cmd: AnswerPermission) -> dict[str, Any]:
    """Answer an agent's permission request (shown as a ``permissionRequested`` event).

    Raises:
        NotFound: no such request; Conflict: it was already answered or its turn ended;
        InvalidInput: ``optionId`` is not one of the offered options.
    """
    await open_task(ctx)
    await require_open_session(ctx.conn, cmd.session_id)
    request = (
        await ctx.conn.execute(
            sa.select(permission_requests).where(
                permission_requests.c.session_id == cmd.session_id,
                permission_requests.c.request_id == cmd.request_id,
            )
        )
    ).first()
    if request is None:
        raise NotFound(f"no permission request {cmd.request_id!r} in session {cmd.session_id!r}")
    if request.status != "pending":
        raise Conflict(f"permission request {cmd.request_id!r} is already {request.status}")
    options = json.loads(request.options_json)
    offered = [str(o.get("optionId")) for o in options if isinstance(o, dict)]
    if cmd.option_id is not None and cmd.option_id not in offered:
        raise InvalidInput(
            f"option {cmd.option_id!r} was not offered; choose one of: {', '.join(offered)}", ["optionId"]
        )
    await ctx.conn.execute(
        permission_requests.update()
        .where(
            permission_requests.c.session_id == cmd.session_id,
            permission_requests.c.request_id == cmd.request_id,
        )
        .values(status="answered", option_id=cmd.option_id, answered_by=cmd.user_id, answered_at=ctx.now_ms())
    )
    await append_events(
        ctx,
        ctx.conn,
        cmd.session_id,
        [
            (
                "permissionAnswered",
                {"requestId": cmd.request_id, "optionId": cmd.option_id, "userId": cmd.user_id},
            )
        ],
    )
    await refresh(ctx, ctx.conn)
    ctx.start_job(
        f"permission:{cmd.session_id}:{cmd.request_id}",
        partial(permission_job, session_id=cmd.session_id, request_id=cmd.request_id),
    )
    return {"requestId": cmd.request_id, "optionId": cmd.option_id}
