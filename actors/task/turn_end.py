"""Recording a turn's end: the message, the session's status and exactly one terminal event.

Every way a turn ends goes through `finish_turn`: the turn runner (`actors.task.turns`) when its turn
ends, and Stop's repair of a turn whose job died (`actors.task.turn_stop`). Also here: what the runner
records instead when the agent is unusable (`forget_agent`, `requeue_for_new_agent`). It lives apart
from the runner because it is only database writes, and so that both callers can import it (and
`TurnOutcome`, which the runner produces and this module records) without importing each other.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from actors.task.recorder import FINAL_TOOL_STATUSES
from actors.task.schema import messages, permission_requests, session_events, sessions
from actors.task.state import USER_ROLE, append_events, audit, json_value, load_session, load_task, refresh
from foundry.runtime.context import InstanceContext

log = logging.getLogger(__name__)


@dataclass
class TurnOutcome:
    """How a turn ended: a stop reason, or an error; ``agent_gone`` when its ACP server is unusable.

    A dead sandbox is reported separately by the sandbox actor (``sandbox_exited``, with the tail of
    its log), so ``sandbox_gone`` only explains the error here. ``open_tool_calls`` are the tool
    calls the agent left unfinished (marked cancelled when the turn was cancelled).
    """

    stop_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: str | None = None
    agent_gone: bool = False
    sandbox_gone: bool = False
    open_tool_calls: list[str] = field(default_factory=list)
    #: The stream's events from this id on were not recorded: the stream stalled after the answer,
    #: or Stop ended the turn before they were (``lost_reason``).
    lost_from: int | None = None
    lost_reason: str = "stream stalled"
    #: The agent process had exited before anything of this turn reached the stream (it died
    #: while idle): the message can go to a new agent without anything running twice.
    agent_gone_before_turn: bool = False


async def forget_agent(ctx: InstanceContext, session_id: str, server_id: str) -> None:
    """The session's ACP server is unusable: the next message starts a new agent."""
    async with ctx.write() as conn:
        await conn.execute(
            sessions.update()
            .where(sessions.c.session_id == session_id, sessions.c.acp_server_id == server_id)
            .values(acp_server_id=None, acp_session_id=None, last_event_id=None)
        )


async def requeue_for_new_agent(
    ctx: InstanceContext, session_id: str, message_id: int, server_id: str
) -> bool:
    """Put a running message back in the queue and forget the session's dead agent; False when
    the message is no longer running, Stop was asked for or the session was closed (then the turn
    ends as usual)."""
    async with ctx.write() as conn:
        message = (
            await conn.execute(
                sa.select(messages.c.status, messages.c.stop_requested_at).where(messages.c.id == message_id)
            )
        ).first()
        if message is None or message.status != "running" or message.stop_requested_at is not None:
            return False
        session = await load_session(conn, session_id)
        if session is None or session.status == "closed":
            return False  # closing the session is what stopped its agent
        await conn.execute(messages.update().where(messages.c.id == message_id).values(status="queued"))
        await conn.execute(
            sessions.update()
            .where(sessions.c.session_id == session_id, sessions.c.acp_server_id == server_id)
            .values(acp_server_id=None, acp_session_id=None, last_event_id=None)
        )
    return True


async def finish_safely(
    ctx: InstanceContext, session_id: str, message_id: int, outcome: TurnOutcome, *, agent_title: str | None
) -> None:
    """`finish_turn`, and should that fail, a minimal ``turnFailed`` so the turn never stays running."""
    try:
        await finish_turn(ctx, session_id, message_id, outcome, agent_title=agent_title)
        return
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("recording the end of a turn failed key=%s session=%s", ctx.key, session_id)
        error = f"the turn could not be recorded: {type(exc).__name__}: {exc}"
    await finish_turn(ctx, session_id, message_id, TurnOutcome(error=error, agent_gone=outcome.agent_gone))


async def finish_turn(
    ctx: InstanceContext,
    session_id: str,
    message_id: int,
    outcome: TurnOutcome,
    *,
    agent_title: str | None = None,
    forced: bool = False,
) -> None:
    """Record a turn's end: the message, the session's status, the transcript, unread for the owner.

    Idempotent per message: a turn already ended (its message is no longer running) is left alone, so
    a turn never gets two terminal events.
    """
    now = ctx.now_ms()
    async with ctx.write() as conn:
        row = await load_task(conn)
        session = await load_session(conn, session_id)
        message = (
            await conn.execute(
                sa.select(messages.c.status, messages.c.stop_requested_at).where(messages.c.id == message_id)
            )
        ).first()
        if row is None or session is None or message is None or message.status != "running":
            return
        stop_requested = message.stop_requested_at is not None
        if outcome.error is not None and stop_requested:
            # Stop shut down an agent that ignored session/cancel: the user asked for this end.
            log.info("turn ended by Stop after: %s", outcome.error)
            outcome = TurnOutcome(
                stop_reason="cancelled",
                agent_gone=outcome.agent_gone,
                open_tool_calls=outcome.open_tool_calls,
            )
            forced = True
        events: list[tuple[str, dict[str, Any]]] = []
        if outcome.lost_from is not None:
            events.append(
                ("eventsLost", {"from": outcome.lost_from, "to": None, "reason": outcome.lost_reason})
            )
        if outcome.error is not None:
            msg_values: dict[str, Any] = {"status": "failed", "error": outcome.error}
            # No agent will finish them now: a tool left running would spin on the page for good.
            events.extend(await _close_open_tool_calls(conn, session_id, outcome, "failed"))
            events.append(("turnFailed", {"messageId": message_id, "error": outcome.error}))
            status = "error"
        else:
            cancelled = outcome.stop_reason == "cancelled"
            msg_values = {"status": "cancelled" if cancelled else "done", "stop_reason": outcome.stop_reason}
            ended: dict[str, Any] = {"messageId": message_id, "stopReason": outcome.stop_reason}
            if outcome.usage:
                ended["usage"] = outcome.usage
            if forced:
                ended["forced"] = True
            if cancelled:
                events.extend(await _close_open_tool_calls(conn, session_id, outcome, "cancelled"))
            events.append(("turnCancelled" if cancelled else "turnEnded", ended))
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


def closed_tool_calls(calls: list[str], status: str) -> list[tuple[str, dict[str, Any]]]:
    """Tool calls the agent left open when its turn ended early, closed with ``status``: ``failed``
    (an ACP status) when the turn failed, ``cancelled`` (not one; the update says it comes from
    Foundry) when it was stopped."""
    return [
        (
            "agentUpdate",
            {
                "kind": "tool_call_update",
                "update": {"sessionUpdate": "tool_call_update", "toolCallId": call, "status": status},
                "origin": "foundry",
            },
        )
        for call in calls
    ]


async def _close_open_tool_calls(
    conn: AsyncConnection, session_id: str, outcome: TurnOutcome, status: str
) -> list[tuple[str, dict[str, Any]]]:
    # The recorder's list, and what the transcript holds: a turn ended by a watchdog, a forced Stop
    # or a repair has no recorder (or one that never saw the calls).
    calls = dict.fromkeys([*outcome.open_tool_calls, *await open_tool_calls(conn, session_id)])
    return closed_tool_calls(list(calls), status)


async def close_left_open_calls(
    conn: AsyncConnection, session_id: str, status: str
) -> list[tuple[str, dict[str, Any]]]:
    """Events closing with ``status`` every tool call of the session its transcript holds open: for
    when no agent will close them any more (its turn ended early, it was replaced, the session or
    task was closed)."""
    return closed_tool_calls(await open_tool_calls(conn, session_id), status)


async def end_running_turns(
    ctx: InstanceContext, conn: AsyncConnection, reason: str, session_id: str | None = None
) -> None:
    """End the running turns (of ``session_id``, or of every session) as cancelled for ``reason``
    (``closed``, ``archived``), closing the tool calls left open. The job that ran each turn finds it
    no longer running and records nothing more (`actors.task.recorder.TranscriptRecorder`)."""
    running = messages.c.status == "running"
    if session_id is not None:
        running = sa.and_(running, messages.c.session_id == session_id)
    turns = (await conn.execute(sa.select(messages.c.id, messages.c.session_id).where(running))).all()
    await conn.execute(
        messages.update()
        .where(running)
        .values(status="cancelled", stop_reason=reason, finished_at=ctx.now_ms())
    )
    for message_id, turn_session in turns:
        await append_events(
            ctx,
            conn,
            turn_session,
            [
                *await close_left_open_calls(conn, turn_session, "cancelled"),
                ("turnCancelled", {"messageId": message_id, "stopReason": reason}),
            ],
        )


async def open_tool_calls(conn: AsyncConnection, session_id: str) -> list[str]:
    """The session's tool calls that no update closed, as its transcript recorded them: this turn's,
    and those an earlier turn left open (its agent will not close them any more either)."""
    rows = await conn.execute(
        sa.select(session_events.c.data)
        .where(
            session_events.c.session_id == session_id,
            session_events.c.event == "agentUpdate",
            session_events.c.data.like("%tool_call%"),
        )
        .order_by(session_events.c.seq)
    )
    statuses: dict[str, str] = {}
    for (data,) in rows:
        update = json_value(data).get("update") or {}
        call = update.get("toolCallId")
        if update.get("sessionUpdate") in ("tool_call", "tool_call_update") and call:
            statuses[str(call)] = str(update.get("status") or statuses.get(str(call), "pending"))
    return [call for call, status in statuses.items() if status not in FINAL_TOOL_STATUSES]


def _mark_unread(ctx: InstanceContext, user_id: str, session_id: str) -> None:
    """A finished turn is unread for the task owner; per-user state lives on the user actor.

    Sent through the outbox of the transaction that ends the turn, so it is never lost.
    """
    from actors.task.naming import split_task_key

    organization_id, task_id = split_task_key(ctx.key)
    body = {"organizationId": organization_id, "taskId": task_id, "sessionId": session_id, "unread": True}
    ctx.send_after_commit(USER_ROLE, user_id, "update_session_state", body)
