"""Bringing a session's agent up: a new ACP session, or the earlier one resumed after a restart.

A session's ACP ids (its ACP server in sandbox-agent and the agent's session id) belong to one
sandbox generation: one run of the sandbox's ``sandbox-agent``. When the sandbox was restarted since
(a crash, idle reclamation, a Foundry restart), the new server never heard of them, so the session's
loop opens the agent again here before its next turn, keeping the transcript.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from actors.task.schema import sessions, task
from actors.task.state import append_events, load_session, refresh
from actors.task.turn_end import close_left_open_calls
from foundry.drivers.sandbox import AcpError, SandboxError
from foundry.drivers.sandbox.acp import AcpConnection
from foundry.drivers.sandbox.agents import AGENTS, install_hint
from foundry.drivers.sandbox.client import SandboxAgentClient
from foundry.errors import FoundryError
from foundry.runtime.context import InstanceContext

log = logging.getLogger(__name__)


async def session_failed(ctx: InstanceContext, session_id: str, error: str, *, sandbox: bool = False) -> None:
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


#: The transcript event that tells the user an agent was started again for an existing session.
AGENT_RESTARTED = "agentRestarted"
RESTORED_TEXT = "agent restarted; earlier context was restored"
NOT_RESTORED_TEXT = "agent restarted; earlier context was not restored"
#: How long to look for the end of a loaded session's replayed history in the event stream.
HISTORY_SCAN_S = 10.0


async def open_agent_session(
    ctx: InstanceContext, client: SandboxAgentClient, session: sa.Row[Any], sandbox_generation: int
) -> bool:
    """Start the session's agent (one ACP server per session) and its ACP session in the checkout.

    For a session that had an agent before (it crashed, or its sandbox-agent was restarted), the
    earlier ACP session is loaded (``session/load``) when the agent advertises ``loadSession`` and
    the id is still known; otherwise a new ACP session starts. Either way the transcript is kept and
    gets an ``agentRestarted`` event saying whether the earlier context was restored.
    """
    generation = session.acp_generation + 1
    server_id = f"{session.session_id}-{generation}"
    acp = client.acp(server_id, session.agent)
    restarted = session.acp_generation > 0
    loaded = False
    last_event_id: int | None = None
    try:
        await check_installed(client, session.agent)
        answer = await acp.initialize()
        capabilities = answer.get("agentCapabilities")
        can_load = isinstance(capabilities, dict) and bool(capabilities.get("loadSession"))
        acp_session_id = session.acp_session_id
        if restarted and acp_session_id and can_load:
            try:
                await acp.load_session(acp_session_id, client.endpoint.workdir)
                loaded = True
                last_event_id = await _history_end(acp, acp.last_request_id)
            except AcpError as exc:
                log.info(
                    "session/load refused key=%s session=%s: %s", ctx.key, session.session_id, exc.detail
                )
        if not loaded:
            acp_session_id = await acp.new_session(client.endpoint.workdir)
    except FoundryError as exc:
        message = f"could not start the {session.agent!r} agent in the sandbox: {exc.detail}"
        log.warning("agent start failed key=%s session=%s: %s", ctx.key, session.session_id, exc.detail)
        await close_quietly(acp)
        async with ctx.write() as conn:
            await conn.execute(
                sessions.update()
                .where(sessions.c.session_id == session.session_id)
                .values(acp_generation=generation, acp_server_id=None, acp_session_id=None)
            )
        await session_failed(ctx, session.session_id, message)
        return False
    assert acp_session_id is not None
    async with ctx.write() as conn:
        current = await load_session(conn, session.session_id)
        closed = current is None or current.status == "closed"
        if not closed:
            events: list[tuple[str, dict[str, Any]]] = []
            if restarted:
                # The agent that ran them is gone; the new one never heard of them.
                events.extend(await close_left_open_calls(conn, session.session_id, "failed"))
                text = RESTORED_TEXT if loaded else NOT_RESTORED_TEXT
                events.append((AGENT_RESTARTED, {"loaded": loaded, "text": text}))
            await record_agent_session(
                ctx,
                conn,
                session.session_id,
                AgentSession(server_id, acp_session_id, generation, sandbox_generation, last_event_id),
                events,
            )
    if closed:
        await close_quietly(acp)  # the session was closed meanwhile
        return False
    log.info(
        "agent session %s key=%s session=%s sandbox_generation=%d",
        "resumed" if loaded else ("restarted" if restarted else "opened"),
        ctx.key,
        session.session_id,
        sandbox_generation,
    )
    return True


async def _history_end(acp: AcpConnection, load_request_id: int | str) -> int | None:
    """The event id of the mirror of our ``session/load`` answer: the replayed history comes before
    it, so a turn that resumes the stream after it records only new events."""
    last_seen: int | None = None
    stream = cast("AsyncGenerator[tuple[int, dict[str, Any]], None]", acp.events(None))
    try:
        async with asyncio.timeout(HISTORY_SCAN_S):
            async for event_id, envelope in stream:
                last_seen = event_id
                if envelope.get("id") == load_request_id and "method" not in envelope:
                    return event_id
    except TimeoutError:
        log.warning("no end of the replayed history of %s; resuming after event %s", acp.server_id, last_seen)
    finally:
        await stream.aclose()
    return last_seen


@dataclass(frozen=True)
class AgentSession:
    """A session's ACP identity: server, ACP session, and which sandbox generation it lives in."""

    server_id: str
    acp_session_id: str
    acp_generation: int
    sandbox_generation: int
    last_event_id: int | None = None


async def record_agent_session(
    ctx: InstanceContext,
    conn: AsyncConnection,
    session_id: str,
    agent: AgentSession,
    events: list[tuple[str, dict[str, Any]]] | None = None,
) -> None:
    # A turn that runs meanwhile owns the session's status (it ends it as idle, error or cancelled):
    # reporting "idle" under it would show a working session as idle with nothing queued.
    running = (
        await conn.execute(sa.select(sessions.c.status).where(sessions.c.session_id == session_id))
    ).scalar() == "running"
    await conn.execute(
        sessions.update()
        .where(sessions.c.session_id == session_id)
        .values(
            acp_server_id=agent.server_id,
            acp_session_id=agent.acp_session_id,
            acp_generation=agent.acp_generation,
            acp_sandbox_generation=agent.sandbox_generation,
            last_event_id=agent.last_event_id,
            **({} if running else {"status": "idle", "error": None}),
            updated_at=ctx.now_ms(),
        )
    )
    status_event = [] if running else [("sessionStatus", {"status": "idle"})]
    await append_events(ctx, conn, session_id, [*(events or []), *status_event])
    await refresh(ctx, conn)


async def check_installed(client: SandboxAgentClient, agent: str) -> None:
    """Fail with the list of usable agents when ``agent`` is not installed in the sandbox
    (``GET /v1/agents``; sandboxes never download agents at run time)."""
    agents = await client.list_agents()
    if any(a.get("id") == agent and a.get("installed") for a in agents):
        return
    installed = sorted(str(a.get("id")) for a in agents if a.get("installed"))
    # Claude Code, Codex and OpenCode are installed on the Foundry host by one command; other ids
    # come from the deployment's agent_commands or the sandbox image.
    fix = (
        f"{install_hint(agent)} (sandboxes started afterwards run it) or choose another model"
        if agent in AGENTS
        else "choose another model or install the agent in the sandbox image"
    )
    listed = ", ".join(installed) or "none"
    raise SandboxError(f"agent {agent!r} is not installed in this sandbox (installed: {listed}); {fix}")


async def close_quietly(acp: AcpConnection) -> None:
    """Shut an ACP server down (with the DELETE workaround); failures are only logged."""
    try:
        await acp.close(gone_timeout=5.0)
    except FoundryError as exc:
        log.info("could not close ACP server %s: %s", acp.server_id, exc)
