"""A task's background jobs: provisioning, agent turns, Stop, permission answers, closing sessions.

Commands only record intent and start these jobs, so the task's mailbox loop never waits on the
network or on an agent (bug 17): Stop, rename, another message… are processed while a turn runs.

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
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

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
    running_sandbox,
)
from actors.task.schema import messages, permission_requests, sessions, task
from actors.task.state import (
    USER_ROLE,
    append_events,
    audit,
    load_session,
    load_task,
    next_queued_message,
    refresh,
    turn_job_name,
)
from foundry.drivers.sandbox import AcpError, SandboxError
from foundry.drivers.sandbox import git as sgit
from foundry.drivers.sandbox.client import AcpConnection, SandboxAgentClient
from foundry.errors import FoundryError
from foundry.runtime.context import InstanceContext

log = logging.getLogger(__name__)

PROVISION_JOB = "provision"
#: How long Stop waits for the agent to honour ``session/cancel`` before it ends the turn itself.
CANCEL_GRACE_S = 10.0
#: How often a turn reopens a broken event stream of a healthy sandbox-agent.
STREAM_RECONNECTS = 3
#: After a turn's prompt answered, how long to wait for the stream to deliver the turn's last events
#: (a healthy server always sends them, ending with the mirror of the answer; a loaded one late).
STREAM_TAIL_S = 30.0


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
    lease = SandboxLease(ctx, PROVISION_JOB)
    try:
        endpoint = (await lease.acquire()).endpoint
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
                await _session_failed(
                    ctx, session_id, f"the sandbox is not available: {exc.detail}", sandbox=True
                )
                return
            if client is None or client.endpoint != info.endpoint:
                if client is not None:
                    await client.aclose()
                client = client_for(info.endpoint)
            if session.acp_session_id is None or session.acp_sandbox_generation != info.generation:
                if not await _open_agent_session(ctx, client, session, info.generation):
                    return
                continue
            assert message is not None
            await _run_turn(ctx, client, session, message)
    finally:
        await lease.close()
        if client is not None:
            await client.aclose()


@dataclass
class TurnOutcome:
    """How a turn ended: a stop reason, or an error; ``agent_gone`` when its ACP server is unusable.

    A dead sandbox is reported separately by the sandbox actor (``sandbox_exited``, with the tail of
    its log), so ``sandbox_gone`` only explains the error here.
    """

    stop_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: str | None = None
    agent_gone: bool = False
    sandbox_gone: bool = False


@dataclass
class _Turn:
    """One running turn: the prompt request and the event stream that records its progress."""

    ctx: InstanceContext
    acp: AcpConnection
    session: sa.Row[Any]
    last_event_id: int | None
    end: asyncio.Future[tuple[str, Any]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    agent_title: str | None = None

    def _finish(self, kind: str, value: Any) -> None:
        if not self.end.done():
            self.end.set_result((kind, value))

    async def consume(self) -> None:
        """Record every event of the ACP server's stream as it arrives, until the turn ends.

        A stream that breaks while sandbox-agent is still healthy is reopened with ``Last-Event-ID``
        (the server replays what came after it), so nothing is lost or recorded twice.
        """
        reconnects = 0
        while True:
            stream = cast(
                "AsyncGenerator[tuple[int, dict[str, Any]], None]", self.acp.events(self.last_event_id)
            )
            try:
                try:
                    async for event_id, envelope in stream:
                        # Shielded: this task is cancelled when the turn ends, and a cancel landing
                        # between a commit and the runtime's bookkeeping would desync the topic seqs.
                        await asyncio.shield(self._record(event_id, envelope))
                        self.last_event_id = event_id
                finally:
                    await stream.aclose()
                self._finish("stream_closed", None)
                return
            except FoundryError as exc:
                if reconnects >= STREAM_RECONNECTS or not await self._server_alive():
                    self._finish("stream_error", exc)
                    return
                reconnects += 1
                log.warning(
                    "event stream of %s broke (%s); resuming after event %s",
                    self.acp.server_id,
                    exc,
                    self.last_event_id,
                )
                await asyncio.sleep(0.2 * reconnects)

    async def _server_alive(self) -> bool:
        try:
            await self.acp.client.health()
        except FoundryError:
            return False
        return True

    async def _record(self, event_id: int, envelope: dict[str, Any]) -> None:
        method = envelope.get("method")
        raw_params = envelope.get("params")
        params: dict[str, Any] = raw_params if isinstance(raw_params, dict) else {}
        items: list[tuple[str, dict[str, Any]]] = []
        permission: dict[str, Any] | None = None
        if method == "session/update":
            raw_update = params.get("update")
            update: dict[str, Any] = raw_update if isinstance(raw_update, dict) else {}
            if update.get("sessionUpdate") == "session_info_update" and update.get("title"):
                self.agent_title = str(update["title"])[:300]
            items.append(("agentUpdate", {"kind": update.get("sessionUpdate"), "update": update}))
        elif method == "session/request_permission" and "id" in envelope:
            rpc_id = envelope["id"]
            permission = {
                "requestId": str(rpc_id),
                "rpcIdJson": json.dumps(rpc_id),
                "toolCall": params.get("toolCall"),
                "options": params.get("options") or [],
            }
            items.append(
                (
                    "permissionRequested",
                    {
                        "requestId": permission["requestId"],
                        "toolCall": permission["toolCall"],
                        "options": permission["options"],
                    },
                )
            )
        async with self.ctx.write() as conn:
            await conn.execute(
                sessions.update()
                .where(sessions.c.session_id == self.session.session_id)
                .values(last_event_id=event_id)
            )
            if permission is not None:
                await conn.execute(
                    permission_requests.insert().prefix_with("OR IGNORE"),
                    {
                        "session_id": self.session.session_id,
                        "request_id": permission["requestId"],
                        "rpc_id_json": permission["rpcIdJson"],
                        "acp_server_id": self.session.acp_server_id,
                        "options_json": json.dumps(permission["options"]),
                        "status": "pending",
                        "created_at": self.ctx.now_ms(),
                    },
                )
            await append_events(self.ctx, conn, self.session.session_id, items)
            if permission is not None:
                await refresh(self.ctx, conn)
        if method == "_adapter/agent_exited":
            self._finish("agent_exited", params)
        elif "id" in envelope and method is None:
            result = envelope.get("result")
            # The mirror of our prompt's answer is the last event of the turn (research §4). Older
            # answers (initialize, session/new) carry no stopReason.
            if envelope.get("error") is not None or (isinstance(result, dict) and "stopReason" in result):
                self._finish("answered", envelope)

    async def run(self, text: str) -> TurnOutcome:
        consumer = asyncio.create_task(self.consume(), name=f"turn-events:{self.session.session_id}")
        prompt = asyncio.create_task(self.acp.prompt(self.session.acp_session_id, text))
        try:
            waiting: set[asyncio.Future[Any]] = {prompt, self.end}
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if prompt in done:
                # Let the stream deliver the turn's last events before the turn is declared over.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self.end), STREAM_TAIL_S)
                return self._from_prompt(prompt)
            kind, value = self.end.result()
            if kind == "answered":
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(prompt), STREAM_TAIL_S)
                if prompt.done():
                    return self._from_prompt(prompt)
                return _outcome_from_envelope(value)
            if kind == "agent_exited":
                code = value.get("code") if isinstance(value, dict) else None
                return TurnOutcome(
                    error=f"the {self.session.agent!r} agent process exited unexpectedly"
                    + (f" (exit code {code})" if code is not None else "")
                    + "; send the message again to start a new agent",
                    agent_gone=True,
                )
            # The stream broke or ended: sandbox-agent went away, or the ACP server was closed.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(prompt), 2.0)
            if prompt.done() and not prompt.cancelled() and prompt.exception() is None:
                return self._from_prompt(prompt)
            detail = value.detail if isinstance(value, FoundryError) else "the event stream ended"
            return TurnOutcome(
                error=f"lost the connection to the agent: {detail}", agent_gone=True, sandbox_gone=True
            )
        finally:
            for pending in (prompt, consumer):
                if not pending.done():
                    pending.cancel()
            await asyncio.gather(prompt, consumer, return_exceptions=True)

    def _from_prompt(self, prompt: asyncio.Task[str]) -> TurnOutcome:
        exc = prompt.exception()
        if exc is None:
            return TurnOutcome(stop_reason=prompt.result())
        if isinstance(exc, AcpError):
            return TurnOutcome(error=exc.detail)
        if isinstance(exc, SandboxError):
            return TurnOutcome(
                error=f"lost the connection to the agent: {exc.detail}", agent_gone=True, sandbox_gone=True
            )
        if isinstance(exc, FoundryError):
            return TurnOutcome(error=exc.detail, agent_gone=True)
        raise exc


def _outcome_from_envelope(envelope: dict[str, Any]) -> TurnOutcome:
    if envelope.get("error") is not None:
        error = envelope["error"]
        data = error.get("data") if isinstance(error, dict) else None
        reason = data.get("reason") if isinstance(data, dict) else None
        message = error.get("message") if isinstance(error, dict) else str(error)
        return TurnOutcome(
            error=f"agent error in session/prompt: {message}" + (f": {reason}" if reason else "")
        )
    result = envelope.get("result") or {}
    return TurnOutcome(stop_reason=str(result.get("stopReason") or ""), usage=result.get("usage"))


async def _run_turn(
    ctx: InstanceContext, client: SandboxAgentClient, session: sa.Row[Any], message: sa.Row[Any]
) -> None:
    """Run one queued message as a turn and record its outcome."""
    now = ctx.now_ms()
    async with ctx.write() as conn:
        current = await conn.execute(sa.select(messages.c.status).where(messages.c.id == message.id))
        if current.scalar() != "queued":
            return  # cancelled by Stop meanwhile
        await conn.execute(
            messages.update().where(messages.c.id == message.id).values(status="running", started_at=now)
        )
        await conn.execute(
            sessions.update()
            .where(sessions.c.session_id == session.session_id)
            .values(status="running", error=None, thinking_since=now, updated_at=now)
        )
        await append_events(
            ctx,
            conn,
            session.session_id,
            [("turnStarted", {"messageId": message.id}), ("sessionStatus", {"status": "running"})],
        )
        await refresh(ctx, conn)
        session = await load_session(conn, session.session_id)  # type: ignore[assignment]
    turn = _Turn(ctx, client.acp(session.acp_server_id, session.agent), session, session.last_event_id)
    try:
        outcome = await turn.run(message.text)
    except asyncio.CancelledError:
        # The instance is closing (sleep or host restart): `resume_after_wake` reports the turn.
        raise
    except Exception as exc:
        log.exception("turn failed key=%s session=%s", ctx.key, session.session_id)
        outcome = TurnOutcome(error=f"the turn failed: {type(exc).__name__}: {exc}", agent_gone=True)
    if outcome.agent_gone:
        await _close_quietly(turn.acp)
    await finish_turn(ctx, session.session_id, message.id, outcome, agent_title=turn.agent_title)


async def finish_turn(
    ctx: InstanceContext,
    session_id: str,
    message_id: int,
    outcome: TurnOutcome,
    *,
    agent_title: str | None = None,
    forced: bool = False,
) -> None:
    """Record a turn's end: the message, the session's status, the transcript, unread for the owner."""
    now = ctx.now_ms()
    async with ctx.write() as conn:
        row = await load_task(conn)
        session = await load_session(conn, session_id)
        if row is None or session is None:
            return
        stop_requested = (
            await conn.execute(sa.select(messages.c.stop_requested_at).where(messages.c.id == message_id))
        ).scalar() is not None
        if outcome.error is not None and stop_requested:
            # Stop shut down an agent that ignored session/cancel: the user asked for this end.
            log.info("turn ended by Stop after: %s", outcome.error)
            outcome = TurnOutcome(stop_reason="cancelled", agent_gone=outcome.agent_gone)
            forced = True
        if outcome.error is not None:
            msg_values: dict[str, Any] = {"status": "failed", "error": outcome.error}
            events: list[tuple[str, dict[str, Any]]] = [
                ("turnFailed", {"messageId": message_id, "error": outcome.error})
            ]
            status = "error"
        else:
            cancelled = outcome.stop_reason == "cancelled"
            msg_values = {"status": "cancelled" if cancelled else "done", "stop_reason": outcome.stop_reason}
            turn_ended: dict[str, Any] = {"messageId": message_id, "stopReason": outcome.stop_reason}
            if outcome.usage:
                turn_ended["usage"] = outcome.usage
            if forced:
                turn_ended["forced"] = True
            events = [("turnEnded", turn_ended)]
            status = "idle"
        await conn.execute(
            messages.update().where(messages.c.id == message_id).values(finished_at=now, **msg_values)
        )
        values: dict[str, Any] = {"thinking_since": None, "updated_at": now}
        if session.status != "closed":
            values |= {"status": status, "error": outcome.error}
            events.append(
                ("sessionStatus", {"status": status, **({"error": outcome.error} if outcome.error else {})})
            )
        if agent_title:
            values["agent_title"] = agent_title
        if outcome.agent_gone:
            values |= {"acp_server_id": None, "acp_session_id": None, "last_event_id": None}
        await conn.execute(sessions.update().where(sessions.c.session_id == session_id).values(**values))
        await conn.execute(
            permission_requests.update()
            .where(permission_requests.c.session_id == session_id, permission_requests.c.status == "pending")
            .values(status="cancelled", answered_at=now)
        )
        await append_events(ctx, conn, session_id, events)
        if outcome.error is not None:
            audit(ctx, row, "task.error", {"step": "turn", "sessionId": session_id, "detail": outcome.error})
        await refresh(ctx, conn)
        if row.owner_user_id:
            _mark_unread(ctx, row.owner_user_id, session_id)


def _mark_unread(ctx: InstanceContext, user_id: str, session_id: str) -> None:
    """A finished turn is unread for the task owner (bug 19); per-user state lives on the user actor.

    Sent through the outbox of the transaction that ends the turn, so it is never lost.
    """
    from actors.task.naming import split_task_key

    organization_id, task_id = split_task_key(ctx.key)
    body = {"organizationId": organization_id, "taskId": task_id, "sessionId": session_id, "unread": True}
    ctx.send_after_commit(USER_ROLE, user_id, "update_session_state", body)


# ------------------------------------------------------------------------------------------ control


async def cancel_job(ctx: InstanceContext, session_id: str) -> None:
    """Stop: send ACP ``session/cancel`` for the running turn (bug 17: a cancel, not a destroy) and
    wait for the turn to end with ``cancelled``. An agent that ignores it for `CANCEL_GRACE_S` is shut
    down (its ACP server closed); the turn then ends on its own and is recorded as cancelled (forced).
    """
    async with ctx.write() as conn:
        session = await load_session(conn, session_id)
    if session is None or session.status != "running" or session.acp_server_id is None:
        return
    try:
        endpoint = await ensure_sandbox(ctx)
        async with client_for(endpoint) as client:
            await client.acp(session.acp_server_id, session.agent).cancel(session.acp_session_id)
    except FoundryError as exc:
        log.warning("session/cancel failed key=%s session=%s: %s", ctx.key, session_id, exc)
    if await _turn_ended(ctx, session_id, CANCEL_GRACE_S):
        return
    log.warning(
        "agent ignored session/cancel for %.0f s; shutting it down key=%s session=%s",
        CANCEL_GRACE_S,
        ctx.key,
        session_id,
    )
    try:
        endpoint = await ensure_sandbox(ctx)
        async with client_for(endpoint) as client:
            await _close_quietly(client.acp(session.acp_server_id, session.agent))
    except FoundryError as exc:
        log.warning("could not shut down the agent of session %s: %s", session_id, exc)


async def _turn_ended(ctx: InstanceContext, session_id: str, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        async with ctx.read() as conn:
            current = await load_session(conn, session_id)
        if current is None or current.status != "running":
            return True
        await asyncio.sleep(0.05)
    return False


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
