"""A task's background jobs: provisioning, session loops, permission answers, closing sessions.

Agent turns live in `actors.task.turns` (the session loop runs one turn per queued message), the
recording of their end in `actors.task.turn_end`, and Stop in `actors.task.turn_stop`.

Commands only record intent and start these jobs, so the task's mailbox loop never waits on the
network or on an agent: Stop, rename, another message… are processed while a turn runs.

Jobs are named so that each runs at most once at a time per instance: ``provision``,
``turn:<sessionId>`` (the session's loop: opens the agent session, then runs queued messages one turn
after another), ``cancel:<sessionId>``, ``permission:<sessionId>:<requestId>``, ``close:<sessionId>``.
A job starts with a write (or a read after one), so it always sees the state its starting command
committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from actors.task.agent_session import close_quietly as _close_quietly
from actors.task.agent_session import open_agent_session as _open_agent_session
from actors.task.agent_session import session_failed as _session_failed
from actors.task.sandbox_access import (
    SandboxLease,
    client_for,
    ensure_sandbox,
    installation_token,
    remote_git_for,
    running_sandbox,
)
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
from actors.task.turn_end import close_left_open_calls
from actors.task.turns import run_turn as _run_turn
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
        start_session_loop(ctx, session_id)
    else:
        await request_provisioning(ctx, conn)


def start_session_loop(ctx: InstanceContext, session_id: str) -> None:
    """Start the session's loop, or have it run once more if it is finishing right now."""
    ctx.start_job(
        turn_job_name(session_id), partial(session_job, session_id=session_id), again_if_running=True
    )


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
        start_session_loop(ctx, session_id)


# ------------------------------------------------------------------------------------------ provisioning


async def provision_job(ctx: InstanceContext) -> None:
    """Start the sandbox, get a short-lived installation token, clone the repository and check out
    the task's branch. Each step's failure lands in the task state with an actionable message and in
    the audit log (``task.error``)."""
    async with ctx.write() as conn:
        row = await load_task(conn)
        if row is None or row.archived_at is not None or row.provision_state == "ready":
            return
        await conn.execute(
            task.update().where(task.c.id == 1).values(provision_state="provisioning", provision_error=None)
        )
        await refresh(ctx, conn)
    step = "start the sandbox"
    lease = SandboxLease(ctx, PROVISION_JOB)
    try:
        endpoint = (await lease.acquire()).endpoint
        step = f"get a GitHub token for {row.repo_full_name}"
        token = await installation_token(ctx, row)
        step = f"clone {row.repo_full_name} into the sandbox"
        async with client_for(endpoint) as client:
            # Provisioning runs only until it first succeeds, so no agent has worked in this checkout
            # yet: whatever a clone killed with its host left behind is discarded (`fresh`).
            head = await sgit.clone(
                client, row.clone_url, row.branch, token, remote=remote_git_for(ctx), fresh=True
            )
    except FoundryError as exc:
        message = f"could not {step}: {exc.detail}"
        async with ctx.write() as conn:
            current = await load_task(conn)
            if current is None or current.archived_at is not None:
                # Archived while it waited or provisioned (its sandbox destroyed with it): that is
                # the end of provisioning, not a failure to show in the task's history.
                log.info("provisioning ended: task archived key=%s step=%s (%s)", ctx.key, step, exc.detail)
                return
            log.warning("provisioning failed key=%s step=%s: %s", ctx.key, step, exc.detail)
            await conn.execute(
                task.update()
                .where(task.c.id == 1)
                .values(
                    provision_state="error",
                    provision_error=message,
                    sandbox_queue_position=None,
                    sandbox_queue_reason=None,
                )
            )
            audit(ctx, row, "task.error", {"step": "provision", "detail": message})
            await refresh(ctx, conn)
        return
    finally:
        # Released with a grace period: the session jobs started below take the sandbox over.
        await lease.close()
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
    messages one turn at a time until none is left.

    The loop holds a lease on the sandbox while it runs, so the sandbox is not reclaimed under a
    turn. An agent session opened in an earlier sandbox generation (the sandbox-agent was restarted
    since: a crash, idle reclamation, a Foundry restart) is unknown to the current server, so it is
    resumed first (`_open_agent_session`), transparently for the user.
    """
    client: SandboxAgentClient | None = None
    lease = SandboxLease(ctx, turn_job_name(session_id))
    failures = 0
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
                info = await lease.acquire()
            except FoundryError as exc:
                error = f"the sandbox is not available: {exc.detail}"
                await _session_failed(ctx, session_id, error, sandbox=True)
                failures += 1
                if message is not None and await _retry_or_fail_queued(ctx, session_id, failures, error):
                    continue
                return
            if client is None or client.endpoint != info.endpoint:
                if client is not None:
                    await client.aclose()
                client = client_for(info.endpoint)
            if session.acp_session_id is None or session.acp_sandbox_generation != info.generation:
                if await _open_agent_session(ctx, client, session, info.generation):
                    failures = 0
                    continue
                failures += 1
                if message is not None and await _retry_or_fail_queued(
                    ctx, session_id, failures, "the agent could not be started"
                ):
                    continue
                return
            assert message is not None
            await _run_turn(ctx, client, session, message)
    finally:
        await lease.close()
        if client is not None:
            await client.aclose()


#: Waits before each new attempt to reach the sandbox and start the agent for messages that wait:
#: a sandbox that just died is usually restarted by the second attempt (its actor first has to learn
#: that the old server is gone).
START_RETRY_DELAYS_S = (0.5, 1.5, 3.0)


async def _retry_or_fail_queued(ctx: InstanceContext, session_id: str, failures: int, error: str) -> bool:
    """After a failed sandbox or agent start with messages waiting: True to try again after a pause,
    or (attempts exhausted) False once every queued message has been ended as failed.

    Acknowledged messages never wait silently for a start that is not going to happen: each gets a
    ``turnFailed`` naming the reason, and the user can send it again.
    """
    if failures <= len(START_RETRY_DELAYS_S):
        delay = START_RETRY_DELAYS_S[failures - 1]
        log.info("session %s of %s: %s; trying again in %.1f s", session_id, ctx.key, error, delay)
        await asyncio.sleep(delay)
        return True
    await fail_queued_messages(ctx, session_id, f"not run: {error}")
    return False


async def fail_queued_messages(ctx: InstanceContext, session_id: str, error: str) -> int:
    """End every queued message of the session as failed (one ``turnFailed`` each); returns the count."""
    async with ctx.write() as conn:
        queued = (
            (
                await conn.execute(
                    sa.select(messages.c.id)
                    .where(messages.c.session_id == session_id, messages.c.status == "queued")
                    .order_by(messages.c.id)
                )
            )
            .scalars()
            .all()
        )
        if not queued:
            return 0
        await conn.execute(
            messages.update()
            .where(messages.c.id.in_(queued))
            .values(status="failed", error=error, finished_at=ctx.now_ms())
        )
        await append_events(
            ctx, conn, session_id, [("turnFailed", {"messageId": m, "error": error}) for m in queued]
        )
        await refresh(ctx, conn)
    log.warning("session %s of %s: %d queued messages failed: %s", session_id, ctx.key, len(queued), error)
    return len(queued)


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
        # A sandbox that is not running (or was restarted since) has no agent of this session left.
        info = await running_sandbox(ctx)
        if info is not None and info.generation == session.acp_sandbox_generation:
            async with client_for(info.endpoint) as client:
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
    """Shut down ACP servers no session refers to any more (best effort; nothing to do when the
    sandbox is not running: its agents stopped with it)."""
    try:
        info = await running_sandbox(ctx)
    except FoundryError as exc:
        log.info("no sandbox to close orphaned agents of %s in: %s", ctx.key, exc)
        return
    if info is None:
        return
    async with client_for(info.endpoint) as client:
        for server_id, agent in servers:
            await _close_quietly(client.acp(server_id, agent))


# ------------------------------------------------------------------------------------------ wake


async def _end_interrupted_turn(
    ctx: InstanceContext,
    conn: AsyncConnection,
    message_id: int,
    session_id: str,
    now: int,
    *,
    error: str | None,
) -> None:
    """End a turn its process took down with it: failed (``error``), or cancelled when the user had
    pressed Stop and been answered before the crash (they asked for this end, not for a resend).
    Its pending permission requests end too: no agent is waiting for the answer any more."""
    status = "error" if error else "idle"
    if error:
        message_values: dict[str, Any] = {"status": "failed", "error": error}
        ended: tuple[str, dict[str, Any]] = ("turnFailed", {"messageId": message_id, "error": error})
    else:
        message_values = {"status": "cancelled", "stop_reason": "cancelled"}
        ended = ("turnCancelled", {"messageId": message_id, "stopReason": "cancelled", "forced": True})
    await conn.execute(
        messages.update().where(messages.c.id == message_id).values(finished_at=now, **message_values)
    )
    await conn.execute(
        sessions.update()
        .where(sessions.c.session_id == session_id, sessions.c.status == "running")
        .values(
            status=status,
            error=error,
            thinking_since=None,
            acp_server_id=None,
            acp_session_id=None,
            last_event_id=None,
            updated_at=now,
        )
    )
    await conn.execute(
        permission_requests.update()
        .where(permission_requests.c.session_id == session_id, permission_requests.c.status == "pending")
        .values(status="cancelled", answered_at=now)
    )
    session_status = {"status": status, **({"error": error} if error else {})}
    closed = await close_left_open_calls(conn, session_id, "failed" if error else "cancelled")
    await append_events(ctx, conn, session_id, [*closed, ended, ("sessionStatus", session_status)])


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
                    sa.select(messages.c.id, messages.c.session_id, messages.c.stop_requested_at).where(
                        messages.c.status == "running"
                    )
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
            for message_id, session_id, stop_requested_at in interrupted:
                await _end_interrupted_turn(
                    ctx, conn, message_id, session_id, now, error=None if stop_requested_at else error
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
