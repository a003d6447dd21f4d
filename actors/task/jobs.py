"""A task's background jobs: provisioning, session loops, permission answers, closing sessions.

Agent turns and Stop live in `actors.task.turns` (the session loop runs one turn per queued message).

Commands only record intent and start these jobs, so the task's mailbox loop never waits on the
network or on an agent (bug 17): Stop, rename, another message… are processed while a turn runs.

Jobs are named so that each runs at most once at a time per instance: ``provision``,
``turn:<sessionId>`` (the session's loop: opens the agent session, then runs queued messages one turn
after another), ``cancel:<sessionId>``, ``permission:<sessionId>:<requestId>``, ``close:<sessionId>``.
A job starts with a write (or a read after one), so it always sees the state its starting command
committed.
"""

from __future__ import annotations

import contextlib
import json
import logging
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from actors.task.sandbox_access import client_for, ensure_sandbox, installation_token
from actors.task.schema import messages, permission_requests, sessions, task
from actors.task.state import (
    append_events,
    audit,
    load_session,
    load_task,
    next_queued_message,
    refresh,
    turn_job_name,
)
from actors.task.turns import close_quietly as _close_quietly
from actors.task.turns import run_turn as _run_turn
from foundry.drivers.sandbox import SandboxError
from foundry.drivers.sandbox import git as sgit
from foundry.drivers.sandbox.client import SandboxAgentClient
from foundry.errors import FoundryError
from foundry.runtime.context import InstanceContext

log = logging.getLogger(__name__)

PROVISION_JOB = "provision"


# ------------------------------------------------------------------------------------------ kicking


async def kick_session(ctx: InstanceContext, conn: AsyncConnection, session_id: str) -> None:
    """Make sure the session's work gets done: start its loop when the sandbox is ready, or start
    provisioning (which starts every waiting session's loop when it finishes)."""
    row = await load_task(conn)
    if row is None or row.archived_at is not None:
        return
    if row.provision_state == "ready":
        ctx.start_job(turn_job_name(session_id), partial(session_job, session_id=session_id))
    else:
        await request_provisioning(ctx, conn)


async def request_provisioning(ctx: InstanceContext, conn: AsyncConnection) -> None:
    """Start provisioning unless it runs or is done; a failed one starts over (the next message
    "restarts cleanly")."""
    row = await load_task(conn)
    if row is None or row.archived_at is not None or row.provision_state == "ready":
        return
    if row.provision_state in ("none", "error"):
        await conn.execute(
            task.update().where(task.c.id == 1).values(provision_state="pending", provision_error=None)
        )
        await refresh(ctx, conn)
    ctx.start_job(PROVISION_JOB, provision_job)


def _waiting_sessions_query() -> Any:
    has_queued = sa.exists().where(
        messages.c.session_id == sessions.c.session_id, messages.c.status == "queued"
    )
    return sa.select(sessions.c.session_id).where(
        sessions.c.status != "closed", sa.or_(sessions.c.status == "pending", has_queued)
    )


async def kick_waiting_sessions(ctx: InstanceContext, conn: AsyncConnection) -> None:
    for (session_id,) in (await conn.execute(_waiting_sessions_query())).all():
        ctx.start_job(turn_job_name(session_id), partial(session_job, session_id=session_id))


# ------------------------------------------------------------------------------------------ provisioning


async def provision_job(ctx: InstanceContext) -> None:
    """Start the sandbox, get a short-lived installation token, clone the repository and check out
    the task's branch. Each step's failure lands in the task state with an actionable message and in
    the audit log (``task.error``, bug 22)."""
    async with ctx.write() as conn:
        row = await load_task(conn)
        if row is None or row.archived_at is not None or row.provision_state == "ready":
            return
        await conn.execute(
            task.update().where(task.c.id == 1).values(provision_state="provisioning", provision_error=None)
        )
        await refresh(ctx, conn)
    step = "start the sandbox"
    try:
        endpoint = await ensure_sandbox(ctx)
        step = f"get a GitHub token for {row.repo_full_name}"
        token = await installation_token(ctx, row)
        step = f"clone {row.repo_full_name} into the sandbox"
        async with client_for(endpoint) as client:
            head = await sgit.clone(client, row.clone_url, row.branch, token)
    except FoundryError as exc:
        message = f"could not {step}: {exc.detail}"
        log.warning("provisioning failed key=%s step=%s: %s", ctx.key, step, exc.detail)
        async with ctx.write() as conn:
            await conn.execute(
                task.update().where(task.c.id == 1).values(provision_state="error", provision_error=message)
            )
            audit(ctx, row, "task.error", {"step": "provision", "detail": message})
            await refresh(ctx, conn)
        return
    async with ctx.write() as conn:
        current = await load_task(conn)
        if current is None or current.archived_at is not None:
            return
        await conn.execute(task.update().where(task.c.id == 1).values(provision_state="ready"))
        audit(ctx, current, "task.provisioned", {"headSha": head, "branch": current.branch})
        await refresh(ctx, conn)
        await kick_waiting_sessions(ctx, conn)


# ------------------------------------------------------------------------------------------ sessions


async def session_job(ctx: InstanceContext, session_id: str) -> None:
    """The loop of one session: open the agent session if there is none, then run the queued
    messages one turn at a time until none is left."""
    client: SandboxAgentClient | None = None
    try:
        while True:
            # A write (not a read): it waits for the transaction of whoever started this job to
            # commit, so the job sees what that command or job decided.
            async with ctx.write() as conn:
                row = await load_task(conn)
                session = await load_session(conn, session_id)
                message = await next_queued_message(conn, session_id)
            if row is None or row.archived_at is not None or session is None or session.status == "closed":
                return
            if row.provision_state != "ready":
                async with ctx.write() as conn:
                    await request_provisioning(ctx, conn)
                return
            if message is None and (session.acp_session_id is not None or session.status == "error"):
                return
            try:
                endpoint = await ensure_sandbox(ctx)
            except FoundryError as exc:
                await _session_failed(
                    ctx, session_id, f"the sandbox is not available: {exc.detail}", sandbox=True
                )
                return
            if client is None or client.endpoint != endpoint:
                if client is not None:
                    await client.aclose()
                client = client_for(endpoint)
            if session.acp_session_id is None:
                if not await _open_agent_session(ctx, client, session):
                    return
                continue
            assert message is not None
            await _run_turn(ctx, client, session, message)
    finally:
        if client is not None:
            await client.aclose()


async def _session_failed(
    ctx: InstanceContext, session_id: str, error: str, *, sandbox: bool = False
) -> None:
    async with ctx.write() as conn:
        session = await load_session(conn, session_id)
        if session is None or session.status == "closed":
            return
        await conn.execute(
            sessions.update()
            .where(sessions.c.session_id == session_id)
            .values(status="error", error=error, thinking_since=None, updated_at=ctx.now_ms())
        )
        if sandbox:
            await conn.execute(task.update().where(task.c.id == 1).values(sandbox_error=error))
        await append_events(ctx, conn, session_id, [("sessionStatus", {"status": "error", "error": error})])
        await refresh(ctx, conn)


async def _open_agent_session(ctx: InstanceContext, client: SandboxAgentClient, session: sa.Row[Any]) -> bool:
    """Start the session's agent (one ACP server per session) and its ACP session in the checkout."""
    generation = session.acp_generation + 1
    server_id = f"{session.session_id}-{generation}"
    acp = client.acp(server_id, session.agent)
    try:
        await _check_installed(client, session.agent)
        await acp.initialize()
        acp_session_id = await acp.new_session(client.endpoint.workdir)
    except FoundryError as exc:
        message = f"could not start the {session.agent!r} agent in the sandbox: {exc.detail}"
        log.warning("agent start failed key=%s session=%s: %s", ctx.key, session.session_id, exc.detail)
        await _close_quietly(acp)
        async with ctx.write() as conn:
            await conn.execute(
                sessions.update()
                .where(sessions.c.session_id == session.session_id)
                .values(acp_generation=generation)
            )
        await _session_failed(ctx, session.session_id, message)
        return False
    async with ctx.write() as conn:
        current = await load_session(conn, session.session_id)
        closed = current is None or current.status == "closed"
        if not closed:
            await _record_agent_session(ctx, conn, session.session_id, server_id, acp_session_id, generation)
    if closed:
        await _close_quietly(acp)  # the session was closed meanwhile
        return False
    return True


async def _record_agent_session(
    ctx: InstanceContext,
    conn: AsyncConnection,
    session_id: str,
    server_id: str,
    acp_session_id: str,
    generation: int,
) -> None:
    await conn.execute(
        sessions.update()
        .where(sessions.c.session_id == session_id)
        .values(
            acp_server_id=server_id,
            acp_session_id=acp_session_id,
            acp_generation=generation,
            last_event_id=None,
            status="idle",
            error=None,
            updated_at=ctx.now_ms(),
        )
    )
    await append_events(ctx, conn, session_id, [("sessionStatus", {"status": "idle"})])
    await refresh(ctx, conn)


async def _check_installed(client: SandboxAgentClient, agent: str) -> None:
    """Fail with the list of usable agents when ``agent`` is not installed in the sandbox
    (``GET /v1/agents``; sandboxes never download agents at run time)."""
    agents = await client.list_agents()
    if any(a.get("id") == agent and a.get("installed") for a in agents):
        return
    installed = sorted(str(a.get("id")) for a in agents if a.get("installed"))
    raise SandboxError(
        f"agent {agent!r} is not installed in this sandbox (installed: {', '.join(installed) or 'none'}); "
        "choose another model or install the agent in the sandbox image"
    )


# ------------------------------------------------------------------------------------------ control


async def permission_job(ctx: InstanceContext, session_id: str, request_id: str) -> None:
    """Deliver a recorded permission answer to the agent."""
    async with ctx.write() as conn:
        request = (
            await conn.execute(
                sa.select(permission_requests).where(
                    permission_requests.c.session_id == session_id,
                    permission_requests.c.request_id == request_id,
                )
            )
        ).first()
        session = await load_session(conn, session_id)
    if request is None or session is None or request.status != "answered":
        return
    try:
        endpoint = await ensure_sandbox(ctx)
        async with client_for(endpoint) as client:
            acp = client.acp(request.acp_server_id, session.agent)
            await acp.respond_permission(json.loads(request.rpc_id_json), request.option_id)
    except FoundryError as exc:
        log.warning("permission answer failed key=%s session=%s: %s", ctx.key, session_id, exc)
        async with ctx.write() as conn:
            await append_events(
                ctx,
                conn,
                session_id,
                [("permissionAnswerFailed", {"requestId": request_id, "error": exc.detail})],
            )


async def close_job(ctx: InstanceContext, session_id: str) -> None:
    """After a session was closed: stop its turn and shut its agent down (DELETE bug workaround)."""
    async with ctx.write() as conn:
        session = await load_session(conn, session_id)
    if session is None or session.acp_server_id is None:
        return
    server_id = session.acp_server_id
    try:
        endpoint = await ensure_sandbox(ctx)
        async with client_for(endpoint) as client:
            acp = client.acp(server_id, session.agent)
            if session.acp_session_id:
                with contextlib.suppress(FoundryError):
                    await acp.cancel(session.acp_session_id)
            await _close_quietly(acp)
    except FoundryError as exc:
        log.info("closing the agent of session %s failed: %s", session_id, exc)
    async with ctx.write() as conn:
        await conn.execute(
            sessions.update()
            .where(sessions.c.session_id == session_id, sessions.c.acp_server_id == server_id)
            .values(acp_server_id=None, acp_session_id=None, last_event_id=None)
        )


async def close_servers_job(ctx: InstanceContext, servers: list[tuple[str, str]]) -> None:
    """Shut down ACP servers no session refers to any more (best effort)."""
    try:
        endpoint = await ensure_sandbox(ctx)
    except FoundryError as exc:
        log.info("no sandbox to close orphaned agents of %s in: %s", ctx.key, exc)
        return
    async with client_for(endpoint) as client:
        for server_id, agent in servers:
            await _close_quietly(client.acp(server_id, agent))


# ------------------------------------------------------------------------------------------ wake


async def resume_after_wake(ctx: InstanceContext) -> None:
    """At wake (after a host restart): turns that were running were interrupted with their process —
    say so in their sessions — and unfinished provisioning or queued messages start again."""
    try:
        async with ctx.write() as conn:
            row = await load_task(conn)
            if row is None or row.archived_at is not None:
                return
            now = ctx.now_ms()
            interrupted = (
                await conn.execute(
                    sa.select(messages.c.id, messages.c.session_id).where(messages.c.status == "running")
                )
            ).all()
            error = "the agent turn was interrupted by a server restart; send the message again"
            orphans = [
                (r.acp_server_id, r.agent)
                for r in (
                    await conn.execute(
                        sa.select(sessions.c.acp_server_id, sessions.c.agent).where(
                            sessions.c.status == "running", sessions.c.acp_server_id.is_not(None)
                        )
                    )
                ).all()
            ]
            for message_id, session_id in interrupted:
                await conn.execute(
                    messages.update()
                    .where(messages.c.id == message_id)
                    .values(status="failed", error=error, finished_at=now)
                )
                await conn.execute(
                    sessions.update()
                    .where(sessions.c.session_id == session_id, sessions.c.status == "running")
                    .values(
                        status="error",
                        error=error,
                        thinking_since=None,
                        acp_server_id=None,
                        acp_session_id=None,
                        last_event_id=None,
                        updated_at=now,
                    )
                )
                await append_events(
                    ctx,
                    conn,
                    session_id,
                    [
                        ("turnFailed", {"messageId": message_id, "error": error}),
                        ("sessionStatus", {"status": "error", "error": error}),
                    ],
                )
            if row.provision_state == "provisioning":
                await conn.execute(task.update().where(task.c.id == 1).values(provision_state="pending"))
            if interrupted or row.provision_state == "provisioning":
                await refresh(ctx, conn)
            row = await load_task(conn)
            assert row is not None
            if orphans:
                # Their agents may still be running the interrupted turns: shut them down.
                ctx.start_job("close-orphans", partial(close_servers_job, servers=orphans))
            if row.provision_state == "pending":
                ctx.start_job(PROVISION_JOB, provision_job)
            elif row.provision_state == "ready":
                await kick_waiting_sessions(ctx, conn)
    except Exception:
        log.exception("resuming task %s after wake failed", ctx.key)
