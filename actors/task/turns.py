"""Agent turns: run a queued message, record its events, end it exactly once; Stop.

A turn is the ``session/prompt`` request plus the ACP server's event stream. Its events are read by
an `AcpEventFeed` (never blocked by the database, checked for gaps) and written in batches by a
`TranscriptRecorder`. The turn ends when the stream delivers the mirror of the prompt's answer — the
last event sandbox-agent sends for it — and never because a timer ran out while events were still
coming.

Every turn ends in exactly one of ``turnEnded``, ``turnFailed`` or ``turnCancelled``, whatever fails
in between: a reader error, an agent that exits, a sandbox that dies, Stop, an exception in Foundry's
own code (recorded as ``turnFailed``), or a host restart (`resume_after_wake` reports the turn).

Stop ends a turn within about a second even when thousands of events are still in flight: it sends
ACP ``session/cancel``, waits briefly for the agent's answer, then records what has already arrived
and ends the turn as cancelled. The rest is skipped (and reported as ``eventsLost``) before the
session runs its next message; an agent that ignores the cancel is shut down.

This module runs turns. Recording a turn's end is `actors.task.turn_end` (also used by Stop's
repair), and the Stop command's entry point is `actors.task.turn_stop`, which finds the running turn
here through `live_turn`: the runner imports neither, so there is no import cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from actors.task.agent_session import close_quietly
from actors.task.recorder import RecordedEnd, TranscriptRecorder
from actors.task.schema import messages, sessions
from actors.task.state import append_events, load_session, refresh
from actors.task.turn_end import TurnOutcome, finish_safely, forget_agent, requeue_for_new_agent
from foundry import metrics
from foundry.drivers.sandbox import AcpError, SandboxError
from foundry.drivers.sandbox.acp import AcpConnection
from foundry.drivers.sandbox.acp_auth import auth_hint
from foundry.drivers.sandbox.client import SandboxAgentClient
from foundry.drivers.sandbox.feed import AcpEvent, AcpEventFeed, FeedEnded
from foundry.errors import FoundryError
from foundry.runtime.context import InstanceContext

log = logging.getLogger(__name__)

#: How long Stop waits for the agent to honour ``session/cancel`` before it shuts the agent down.
CANCEL_GRACE_S = 10.0
#: After Stop, how long the turn waits for the agent's ``cancelled`` answer to arrive on the stream…
STOP_ANSWER_WAIT_S = 0.4
#: …and by when (after Stop) it has recorded what arrived and ended the turn.
STOP_END_S = 0.8
#: How often a running turn checks on its stream and its agent.
WATCH_INTERVAL_S = 0.5
#: After the prompt was answered over HTTP, how long the stream may stay silent before it is reopened
#: (once), and then before the turn ends without the stream's last events (reported as lost).
STREAM_STALL_S = 3.0
#: Longest wait for the turn's event stream to open before the prompt is sent without it.
STREAM_OPEN_WAIT_S = 5.0
#: How long the stream may stay silent during a turn before sandbox-agent is asked whether the
#: turn's ACP server still exists.
AGENT_CHECK_S = 5.0


# Turns running in this process, by (services, task key, session id): Stop finds its turn here.
_LIVE: dict[tuple[int, str, str], Turn] = {}


def _live_key(ctx: InstanceContext, session_id: str) -> tuple[int, str, str]:
    return (id(ctx.services), ctx.key, session_id)


def live_turn(ctx: InstanceContext, session_id: str) -> Turn | None:
    """The turn of ``session_id`` running in this process, if any."""
    return _LIVE.get(_live_key(ctx, session_id))


@dataclass
class _WatchState:
    """What `Turn._watch` tracks between its looks at the turn."""

    delivered: int
    progress_at: float
    resynced: bool = False
    draining: bool = False


class Turn:
    """One running turn: the prompt request, the event feed and the recorder."""

    def __init__(
        self, ctx: InstanceContext, acp: AcpConnection, session: sa.Row[Any], message_id: int
    ) -> None:
        self.ctx = ctx
        self.acp = acp
        self.session = session
        self.message_id = message_id
        # Unique per task database, so the answer's mirror is never confused with another turn's.
        self.request_id = f"foundry-turn-{message_id}"
        self.feed = AcpEventFeed(acp, session.last_event_id)
        self.recorder = TranscriptRecorder(
            ctx, session.session_id, session.acp_server_id, self.feed, self.request_id, message_id
        )
        self.stop_at: float | None = None
        self._wake = asyncio.Event()
        self._cancel_task: asyncio.Task[None] | None = None
        #: Set when Stop ended the turn before its last event arrived: the rest must be skipped.
        self.cut_short = False
        #: Set when the turn ran past ``sandbox.turn_minutes``: it is stopped and fails naming it.
        self.over_time: str | None = None

    def request_stop(self) -> None:
        """Stop: send ``session/cancel`` and end the turn within `STOP_END_S` whatever the agent does."""
        if self.stop_at is not None:
            return
        self.stop_at = asyncio.get_running_loop().time()
        self._cancel_task = asyncio.create_task(self._send_cancel())
        self._wake.set()

    async def _send_cancel(self) -> None:
        try:
            await self.acp.cancel(self.session.acp_session_id)
        except FoundryError as exc:
            log.warning(
                "session/cancel failed key=%s session=%s: %s", self.ctx.key, self.session.session_id, exc
            )

    async def run(self, text: str) -> TurnOutcome:
        """Send the prompt and record the stream until the turn's last event; the outcome."""
        self.feed.start()
        recording = asyncio.create_task(self.recorder.run(), name=f"turn-record:{self.session.session_id}")
        prompt = asyncio.create_task(self._prompt(text))
        try:
            end = await self._watch(recording, prompt)
            outcome = await self._outcome(end, prompt)
            if self.over_time is not None:
                return TurnOutcome(error=self.over_time, open_tool_calls=outcome.open_tool_calls)
            return outcome
        finally:
            if not recording.done():
                # Only on an error in this coroutine or its cancellation (instance closing).
                recording.cancel()
            for pending in (prompt, self._cancel_task):
                if pending is not None and not pending.done():
                    pending.cancel()
            await asyncio.gather(
                recording, prompt, *([self._cancel_task] if self._cancel_task else []), return_exceptions=True
            )

    async def _prompt(self, text: str) -> str:
        # The prompt goes out once the stream is open, so the turn's first events are on it; should
        # the stream not open in time, the feed still re-reads what sandbox-agent keeps.
        if not await self.feed.wait_open(STREAM_OPEN_WAIT_S):
            log.warning(
                "event stream of %s not open after %.0f s; sending the prompt anyway",
                self.acp.server_id,
                STREAM_OPEN_WAIT_S,
            )
        return await self.acp.prompt(self.session.acp_session_id, text, request_id=self.request_id)

    async def _watch(self, recording: asyncio.Task[RecordedEnd], prompt: asyncio.Task[str]) -> RecordedEnd:
        loop = asyncio.get_running_loop()
        minutes = self.ctx.services.settings.sandbox.turn_minutes
        state = _WatchState(delivered=self.feed.delivered, progress_at=loop.time())
        cap_at = state.progress_at + minutes * 60 if minutes > 0 else None
        # Asking sandbox-agent whether the turn's ACP server still exists runs beside this loop: a
        # hung sandbox-agent would otherwise hold the loop, and Stop with it, until its watchdog.
        server_check: asyncio.Task[bool] | None = None
        try:
            while not recording.done():
                self._wake.clear()
                waker = asyncio.create_task(self._wake.wait())
                try:
                    await asyncio.wait(
                        {recording, waker}, timeout=WATCH_INTERVAL_S, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    waker.cancel()
                if recording.done() or state.draining:
                    continue
                now = loop.time()
                if server_check is not None and server_check.done():
                    listed, server_check = server_check.result(), None
                    if not listed and self.stop_at is None:
                        log.warning("ACP server %s gone during turn %s", self.acp.server_id, self.request_id)
                        self._drain(state, now)
                        continue
                if cap_at is not None and now >= cap_at and self.stop_at is None:
                    self._stop_over_time(minutes)
                self._step(state, now, prompt)
                if (
                    not state.draining
                    and server_check is None
                    and not prompt.done()
                    and self.stop_at is None
                    and now - state.progress_at >= AGENT_CHECK_S
                ):
                    state.progress_at = now
                    server_check = asyncio.create_task(self._server_listed())
                    server_check.add_done_callback(lambda _: self._wake.set())
        finally:
            if server_check is not None:
                server_check.cancel()
        return recording.result()

    def _stop_over_time(self, minutes: float) -> None:
        # Ended like Stop (the agent is asked to cancel), but recorded as a failure naming the cap.
        self.over_time = (
            f"the turn ran longer than its wall-clock limit (sandbox.turn_minutes = {minutes:g}) "
            "and was stopped"
        )
        log.warning("turn %s exceeded sandbox.turn_minutes=%g; stopping it", self.request_id, minutes)
        self.request_stop()

    def _drain(self, state: _WatchState, deadline: float) -> None:
        self.recorder.drain(deadline)
        state.draining = True

    def _step(self, state: _WatchState, now: float, prompt: asyncio.Task[str]) -> None:
        """One look at the turn: Stop, progress, and a stream silent after the prompt's answer."""
        if self.stop_at is not None:
            if now >= self.stop_at + STOP_ANSWER_WAIT_S:
                self._drain(state, self.stop_at + STOP_END_S)
            else:
                # Come back when the answer wait is over.
                asyncio.get_running_loop().call_at(self.stop_at + STOP_ANSWER_WAIT_S, self._wake.set)
            return
        if self.feed.delivered != state.delivered:
            state.delivered, state.progress_at = self.feed.delivered, now
            return
        if prompt.done() and now - state.progress_at >= STREAM_STALL_S:
            if not state.resynced:
                log.warning("turn %s answered but its stream is silent; reopening it", self.request_id)
                self.feed.resync()
                state.resynced, state.progress_at = True, now
            else:
                self._drain(state, now)

    async def _server_listed(self) -> bool:
        try:
            servers = await self.acp.client.list_acp_servers()
        except FoundryError as exc:
            log.info("could not list ACP servers: %s", exc)
            return True  # unknown: the feed reports an unreachable sandbox-agent itself
        return any(s.get("serverId") == self.acp.server_id for s in servers)

    async def _outcome(self, end: RecordedEnd, prompt: asyncio.Task[str]) -> TurnOutcome:
        open_calls = self.recorder.open_tool_calls()
        if end.kind == "answered":
            return _outcome_from_envelope(end.envelope, open_calls, self.session.agent)
        if end.kind == "agent_exited":
            code = end.envelope.get("code")
            return TurnOutcome(
                error=f"the {self.session.agent!r} agent process exited unexpectedly"
                + (f" (exit code {code})" if code is not None else "")
                + "; send the message again to start a new agent",
                agent_gone=True,
                open_tool_calls=open_calls,
                agent_gone_before_turn=self.recorder.recorded == 0 and self.stop_at is None,
            )
        if end.kind == "drained" and self.stop_at is not None:
            self.cut_short = True
            # Said in the cancelled turn, before its end (open-ended: the agent may go on until it
            # honours the cancel, and `skip_rest` skips that): what had arrived but was not recorded,
            # or else whatever follows the last event recorded, if anything.
            last = self.recorder.last_recorded_id
            lost_from = end.unrecorded[0] if end.unrecorded else (last or 0) + 1
            return TurnOutcome(
                stop_reason="cancelled",
                open_tool_calls=open_calls,
                lost_from=lost_from,
                lost_reason="stopped",
            )
        if end.kind == "drained" and prompt.done():
            # The answer came over HTTP, but the stream never delivered the turn's last events.
            outcome = self._from_prompt(prompt)
            outcome.lost_from = (self.recorder.last_recorded_id or 0) + 1
            outcome.open_tool_calls = open_calls
            return outcome
        if end.kind == "drained":
            return TurnOutcome(
                error="the agent's ACP server disappeared from the sandbox",
                agent_gone=True,
                open_tool_calls=open_calls,
            )
        # The stream ended: sandbox-agent went away, or the ACP server was closed.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(prompt), 2.0)
        if prompt.done() and not prompt.cancelled() and prompt.exception() is None:
            outcome = self._from_prompt(prompt)
            outcome.open_tool_calls = open_calls
            # Answered, but the stream ended before the answer's mirror: its tail may be missing.
            outcome.lost_from = (self.recorder.last_recorded_id or 0) + 1
            return outcome
        feed_end = end.feed_end or FeedEnded(None)
        detail = feed_end.error.detail if feed_end.error is not None else "the event stream ended"
        return TurnOutcome(
            error=f"lost the connection to the agent: {detail}",
            agent_gone=True,
            sandbox_gone=True,
            open_tool_calls=open_calls,
        )

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

    async def skip_rest(self) -> bool:
        """After Stop cut the turn short: read (without recording) up to the agent's answer, so the next
        turn starts after it. The turn's end already reports what was not recorded. False when the
        agent never answered within `CANCEL_GRACE_S` (it ignores cancel; the caller shuts it down)."""
        assert self.stop_at is not None
        loop = asyncio.get_running_loop()
        deadline = self.stop_at + CANCEL_GRACE_S
        answered_at: int | None = None
        skipped = 0
        while answered_at is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                item = await asyncio.wait_for(self.feed.queue.get(), remaining)
            except TimeoutError:
                break
            if isinstance(item, FeedEnded):
                break
            if isinstance(item, AcpEvent):
                skipped += 1
                if item.envelope.get("method") is None and item.envelope.get("id") == self.request_id:
                    answered_at = item.id
        log.info("turn %s: skipped %d events after Stop key=%s", self.request_id, skipped, self.ctx.key)
        if answered_at is not None:
            async with self.ctx.write() as conn:
                await conn.execute(
                    sessions.update()
                    .where(sessions.c.session_id == self.session.session_id)
                    .values(last_event_id=answered_at)
                )
        return answered_at is not None

    async def aclose(self) -> None:
        await self.feed.aclose()


def _outcome_from_envelope(envelope: dict[str, Any], open_calls: list[str], agent: str) -> TurnOutcome:
    if envelope.get("error") is not None:
        error = envelope["error"]
        data = error.get("data") if isinstance(error, dict) else None
        reason = data.get("reason") if isinstance(data, dict) else None
        message = error.get("message") if isinstance(error, dict) else str(error)
        # An agent without its provider key: the error says which variable to set, and where.
        hint = auth_hint(agent, error.get("code") if isinstance(error, dict) else None)
        return TurnOutcome(
            error=f"agent error in session/prompt: {message}" + (f": {reason}" if reason else "") + hint,
            open_tool_calls=open_calls,
        )
    result = envelope.get("result") or {}
    return TurnOutcome(
        stop_reason=str(result.get("stopReason") or ""), usage=result.get("usage"), open_tool_calls=open_calls
    )


# ------------------------------------------------------------------------------------------ running


async def _still_running(ctx: InstanceContext, message_id: int) -> bool:
    async with ctx.read() as conn:
        status = (
            await conn.execute(sa.select(messages.c.status).where(messages.c.id == message_id))
        ).scalar()
    return status == "running"


def _turn_error(exc: Exception) -> str:
    """What the person sees of an error that broke a turn (the log has the exception itself)."""
    if isinstance(exc, SandboxError):
        return (
            "lost the connection to the sandbox during the turn (its sandbox-agent stopped or "
            "restarted); send the message again"
        )
    return f"the turn failed: {type(exc).__name__}: {exc}"


async def run_turn(
    ctx: InstanceContext, client: SandboxAgentClient, session: sa.Row[Any], message: sa.Row[Any]
) -> None:
    """Run one queued message as a turn and record its outcome (exactly one terminal event)."""
    now = ctx.now_ms()
    # A message that already started once is one whose agent had died before it (see below): its
    # turn is the same turn, started again on a new agent.
    first_attempt = message.started_at is None
    async with ctx.write() as conn:
        current = await conn.execute(sa.select(messages.c.status).where(messages.c.id == message.id))
        if current.scalar() != "queued":
            return  # cancelled by Stop meanwhile
        await conn.execute(
            messages.update()
            .where(messages.c.id == message.id)
            .values(status="running", started_at=message.started_at or now)
        )
        await conn.execute(
            sessions.update()
            .where(sessions.c.session_id == session.session_id)
            .values(status="running", error=None, thinking_since=now, updated_at=now)
        )
        if first_attempt:
            await append_events(
                ctx,
                conn,
                session.session_id,
                [("turnStarted", {"messageId": message.id}), ("sessionStatus", {"status": "running"})],
            )
        await refresh(ctx, conn)
        session = await load_session(conn, session.session_id)  # type: ignore[assignment]
    turn = Turn(ctx, client.acp(session.acp_server_id, session.agent), session, message.id)
    key = _live_key(ctx, session.session_id)
    _LIVE[key] = turn
    metrics.TURNS_RUNNING.inc()
    try:
        try:
            outcome = await turn.run(message.text)
        except asyncio.CancelledError:
            # The instance is closing (sleep or host restart): `resume_after_wake` reports the turn.
            raise
        except Exception as exc:
            if turn.recorder.ended_elsewhere or not await _still_running(ctx, message.id):
                # Its session was closed or its task archived: the agent's connection went with it.
                log.info(
                    "turn of a closed session ended key=%s session=%s: %r", ctx.key, session.session_id, exc
                )
            else:
                log.exception("turn failed key=%s session=%s", ctx.key, session.session_id)
            outcome = TurnOutcome(error=_turn_error(exc), agent_gone=True)
        if _LIVE.get(key) is turn:
            del _LIVE[key]
        log.info(
            "turn %s recorded %d events in %d batches key=%s",
            turn.request_id,
            turn.recorder.recorded,
            turn.recorder.batches,
            ctx.key,
        )
        if outcome.agent_gone:
            await close_quietly(turn.acp)
        if outcome.agent_gone_before_turn and first_attempt:
            # The agent died while nobody talked to it: the user's message is not the place to find
            # out. It goes to a new agent (whose start notes that earlier context is gone).
            log.warning(
                "agent of session %s had exited before turn %s; starting a new one key=%s",
                session.session_id,
                turn.request_id,
                ctx.key,
            )
            if await requeue_for_new_agent(ctx, session.session_id, message.id, session.acp_server_id):
                return
        await finish_safely(
            ctx, session.session_id, message.id, outcome, agent_title=turn.recorder.agent_title
        )
        if turn.cut_short and not await turn.skip_rest():
            log.warning(
                "agent ignored session/cancel for %.0f s; shutting it down key=%s session=%s",
                CANCEL_GRACE_S,
                ctx.key,
                session.session_id,
            )
            await close_quietly(turn.acp)
            await forget_agent(ctx, session.session_id, session.acp_server_id)
    finally:
        metrics.TURNS_RUNNING.dec()
        if _LIVE.get(key) is turn:
            del _LIVE[key]
        await turn.aclose()
