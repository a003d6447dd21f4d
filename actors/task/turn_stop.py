"""Stop, and the repair of a turn whose job died: how a running turn is ended from outside it.

Stop finds the session's live turn (`actors.task.turns.live_turn`) and asks it to stop; the turn
itself then ends within about a second. A ``running`` turn with no live job is ended here instead,
through `finish_turn`. Kept apart from the turn runner so the runner never imports what stops it.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa

from actors.task.sandbox_access import client_for, ensure_sandbox
from actors.task.schema import messages
from actors.task.state import load_session, turn_job_name
from actors.task.turn_end import TurnOutcome, finish_turn
from actors.task.turns import live_turn
from foundry.errors import FoundryError
from foundry.runtime.context import InstanceContext

log = logging.getLogger(__name__)


async def cancel_job(ctx: InstanceContext, session_id: str) -> None:
    """Stop: cancel the running turn (ACP ``session/cancel``, not a destroy) and end it within about a
    second. A turn with no live job (its job died) is repaired: ended as cancelled."""
    async with ctx.write() as conn:
        session = await load_session(conn, session_id)
    if session is None or session.status != "running":
        return
    turn = live_turn(ctx, session_id)
    if turn is not None:
        turn.request_stop()
        return
    if session.acp_server_id is not None and session.acp_session_id is not None:
        try:
            endpoint = await ensure_sandbox(ctx)
            async with client_for(endpoint) as client:
                await client.acp(session.acp_server_id, session.agent).cancel(session.acp_session_id)
        except FoundryError as exc:
            log.warning("session/cancel failed key=%s session=%s: %s", ctx.key, session_id, exc)
    await repair_running_session(ctx, session_id)


async def repair_running_session(ctx: InstanceContext, session_id: str) -> bool:
    """End a session's ``running`` turn that has no live turn job (the watchdog's repair).

    Returns True when it ended one. The turn is reported cancelled when Stop was requested, failed
    otherwise.
    """
    if live_turn(ctx, session_id) is not None or ctx.job_running(turn_job_name(session_id)):
        return False
    async with ctx.read() as conn:
        running = (
            await conn.execute(
                sa.select(messages.c.id).where(
                    messages.c.session_id == session_id, messages.c.status == "running"
                )
            )
        ).all()
    for (message_id,) in running:
        log.warning(
            "repairing a turn with no live job key=%s session=%s message=%s", ctx.key, session_id, message_id
        )
        await finish_turn(
            ctx,
            session_id,
            message_id,
            TurnOutcome(
                error="the turn stopped without an answer from the agent; send the message again",
                agent_gone=True,
            ),
        )
    return bool(running)
