"""A deterministic ACP agent that Foundry ships for mock mode, demos and tests.

It speaks the Agent Client Protocol over stdio (through the ``acp`` package) exactly like a real coding
agent launched by ``sandbox-agent``: for every prompt it streams a plan, message chunks, a tool call with
its update, usage and session-info updates, and it really **edits a file in the session cwd** (it appends
a line derived from the prompt to ``NOTES.md``) so that git diffs, commits and pushes have something real
to work with.

Keywords in the prompt select a scenario (case-insensitive, several may be combined):

* ``permission`` - ask the client for permission before editing; a rejection leaves the file unchanged
  and the turn still ends with ``end_turn``.
* ``fail`` - answer the prompt with a JSON-RPC error (``data.reason`` explains it) before editing.
* ``slow`` - stream a chunk every ~0.2 s for ~10 s before editing, so that Stop can be exercised.
* ``flood <N>`` - stream N extra message chunks (at most 20,000) at the normal delay before editing,
  to load-test whatever renders the transcript.

``session/cancel`` stops a running turn promptly; the prompt then answers ``stopReason: "cancelled"``.
The delay between ordinary chunks comes from ``FOUNDRY_DEMO_AGENT_DELAY`` (seconds, default 0.02).
The process exits when its stdin reaches EOF (how ``sandbox-agent`` closes an ACP server).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import acp
from acp.schema import (
    AgentCapabilities,
    AllowedOutcome,
    Implementation,
    InitializeResponse,
    NewSessionResponse,
    PermissionOption,
    PromptResponse,
    SessionInfoUpdate,
    ToolCallLocation,
    ToolCallUpdate,
    Usage,
    UsageUpdate,
)

__all__ = [
    "AGENT_NAME",
    "FAILURE_REASON",
    "NOTES_FILE",
    "SLOW_CHUNKS",
    "SLOW_INTERVAL_SECONDS",
    "DemoAgent",
    "main",
    "prompt_text",
]

log = logging.getLogger(__name__)

AGENT_NAME = "foundry-demo-agent"
AGENT_VERSION = "1.0.0"
NOTES_FILE = "NOTES.md"
FAILURE_REASON = "the demo agent was asked to fail (the prompt contains 'fail')"
DELAY_ENV = "FOUNDRY_DEMO_AGENT_DELAY"
DEFAULT_DELAY_SECONDS = 0.02
# "slow" streams 50 chunks 0.2 s apart: ~10 s, long enough for a human to press Stop in the demo.
SLOW_CHUNKS = 50
SLOW_INTERVAL_SECONDS = 0.2
FLOOD_RE = re.compile(r"\bflood\s+(\d{1,6})\b")
MAX_FLOOD_CHUNKS = 20_000
ALLOW_OPTION_ID = "allow"
REJECT_OPTION_ID = "reject"


def _chunk_delay() -> float:
    raw = os.environ.get(DELAY_ENV, "")
    if not raw:
        return DEFAULT_DELAY_SECONDS
    try:
        return max(0.0, float(raw))
    except ValueError:
        log.warning("invalid delay env=%s value=%r; using default=%s", DELAY_ENV, raw, DEFAULT_DELAY_SECONDS)
        return DEFAULT_DELAY_SECONDS


def prompt_text(blocks: list[Any]) -> str:
    """Concatenate the text of the prompt's text blocks (other block kinds are ignored)."""
    parts: list[str] = []
    for block in blocks:
        text = getattr(block, "text", None)
        if text is None and isinstance(block, dict):
            text = block.get("text")
        if isinstance(text, str):
            parts.append(text)
    return "\n".join(parts).strip()


def _note_line(text: str) -> str:
    first_line = text.splitlines()[0].strip() if text else ""
    return f"- {first_line or '(empty prompt)'}\n"


def _append_note(path: Path, line: str) -> tuple[str | None, str]:
    """Append ``line`` to the notes file, creating it with a heading. Returns (old_text, new_text)."""
    old = path.read_text(encoding="utf-8") if path.exists() else None
    new = (old if old is not None else "# Notes\n\n") + line
    path.write_text(new, encoding="utf-8")
    return old, new


@dataclass
class _Session:
    cwd: Path
    turns: int = 0
    running: asyncio.Task[PromptResponse] | None = field(default=None, repr=False)


class DemoAgent:
    """The deterministic demo agent (see the module docstring for its scenarios).

    One instance serves one ACP connection; sessions are kept in memory only (``loadSession`` is not
    supported). Each prompt runs as its own task so that ``session/cancel`` can interrupt it.
    """

    def __init__(self, *, delay: float | None = None) -> None:
        self._conn: acp.Client | None = None
        self._sessions: dict[str, _Session] = {}
        self._delay = _chunk_delay() if delay is None else delay

    def on_connect(self, conn: acp.Client) -> None:
        """Keep the client connection to stream updates and ask for permission."""
        self._conn = conn

    @property
    def _client(self) -> acp.Client:
        if self._conn is None:
            raise RuntimeError("the demo agent is not connected to a client")
        return self._conn

    async def initialize(
        self,
        protocol_version: int,
        client_capabilities: Any = None,
        client_info: Any = None,
        **kwargs: Any,
    ) -> InitializeResponse:
        """Answer the handshake with our protocol version and identity. Idempotent."""
        return InitializeResponse(
            protocol_version=acp.PROTOCOL_VERSION,
            agent_capabilities=AgentCapabilities(load_session=False),
            agent_info=Implementation(name=AGENT_NAME, title="Foundry demo agent", version=AGENT_VERSION),
        )

    async def new_session(
        self,
        cwd: str,
        additional_directories: list[str] | None = None,
        mcp_servers: list[Any] | None = None,
        **kwargs: Any,
    ) -> NewSessionResponse:
        """Create a session working in ``cwd`` (where ``NOTES.md`` will be edited)."""
        session_id = f"demo-{uuid.uuid4().hex[:12]}"
        self._sessions[session_id] = _Session(cwd=Path(cwd))
        log.info("session created session_id=%s cwd=%s", session_id, cwd)
        return NewSessionResponse(session_id=session_id)

    async def prompt(self, session_id: str, prompt: list[Any], **kwargs: Any) -> PromptResponse:
        """Run one turn. Returns ``end_turn``, or ``cancelled`` after ``session/cancel``.

        Raises:
            acp.RequestError: unknown session, a turn already running, or the ``fail`` keyword.
        """
        session = self._sessions.get(session_id)
        if session is None:
            raise acp.RequestError.invalid_params({"reason": f"unknown session {session_id!r}"})
        if session.running is not None and not session.running.done():
            raise acp.RequestError.invalid_request({"reason": "a prompt is already running in this session"})
        text = prompt_text(prompt)
        turn = asyncio.create_task(self._run_turn(session_id, session, text))
        session.running = turn
        try:
            return await turn
        except asyncio.CancelledError:
            current = asyncio.current_task()
            # Distinguish "our turn was cancelled by session/cancel" (answer normally with `cancelled`)
            # from "this request handler itself is being cancelled" (connection shutdown: propagate).
            if turn.cancelled() and (current is None or current.cancelling() == 0):
                log.info("turn cancelled session_id=%s", session_id)
                return PromptResponse(stop_reason="cancelled")
            turn.cancel()
            raise
        finally:
            session.running = None

    async def cancel(self, session_id: str, **kwargs: Any) -> None:
        """Handle the ``session/cancel`` notification: stop the running turn, if any. Idempotent."""
        session = self._sessions.get(session_id)
        if session is not None and session.running is not None and not session.running.done():
            session.running.cancel()

    async def _pause(self, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)
        else:
            # Still yield, so that a cancel notification gets a chance to run between chunks.
            await asyncio.sleep(0)

    async def _say(self, session_id: str, text: str, pause: float | None = None) -> None:
        await self._client.session_update(session_id, acp.update_agent_message_text(text))
        await self._pause(self._delay if pause is None else pause)

    async def _run_turn(self, session_id: str, session: _Session, text: str) -> PromptResponse:
        lowered = text.lower()
        session.turns += 1
        await self._client.session_update(
            session_id,
            acp.update_plan(
                [
                    acp.plan_entry("Read the request", priority="high", status="completed"),
                    acp.plan_entry(f"Update {NOTES_FILE}", priority="medium", status="in_progress"),
                    acp.plan_entry("Summarize the change", priority="low", status="pending"),
                ]
            ),
        )
        await self._say(session_id, "Working on: ")
        await self._say(session_id, text or "(empty prompt)")

        if "fail" in lowered:
            raise acp.RequestError.internal_error({"reason": FAILURE_REASON})

        if "slow" in lowered:
            for index in range(SLOW_CHUNKS):
                await self._say(session_id, f" .{index + 1}", pause=SLOW_INTERVAL_SECONDS)

        flood = FLOOD_RE.search(lowered)
        if flood:
            for index in range(min(int(flood.group(1)), MAX_FLOOD_CHUNKS)):
                await self._say(session_id, f" w{index + 1}")

        notes = session.cwd / NOTES_FILE
        tool_call_id = f"call_{session.turns}"
        await self._client.session_update(
            session_id,
            acp.start_tool_call(
                tool_call_id,
                f"Edit {NOTES_FILE}",
                kind="edit",
                status="pending",
                locations=[ToolCallLocation(path=str(notes))],
                raw_input={"path": str(notes), "append": _note_line(text)},
            ),
        )

        if "permission" in lowered and not await self._ask_permission(session_id, tool_call_id, notes):
            await self._client.session_update(
                session_id,
                acp.update_tool_call(
                    tool_call_id, status="failed", raw_output={"reason": "permission denied"}
                ),
            )
            await self._say(session_id, f"\nPermission denied; {NOTES_FILE} was left unchanged.")
            return await self._finish(session_id, text)

        await self._client.session_update(
            session_id, acp.update_tool_call(tool_call_id, status="in_progress")
        )
        old, new = await asyncio.to_thread(_append_note, notes, _note_line(text))
        await self._client.session_update(
            session_id,
            acp.update_tool_call(
                tool_call_id,
                status="completed",
                content=[acp.tool_diff_content(str(notes), new, old)],
                raw_output={"bytesWritten": len(new.encode("utf-8"))},
            ),
        )
        await self._say(session_id, f"\nUpdated {NOTES_FILE}.")
        return await self._finish(session_id, text)

    async def _ask_permission(self, session_id: str, tool_call_id: str, notes: Path) -> bool:
        response = await self._client.request_permission(
            session_id=session_id,
            tool_call=ToolCallUpdate(tool_call_id=tool_call_id, title=f"Edit {NOTES_FILE}", kind="edit"),
            options=[
                PermissionOption(option_id=ALLOW_OPTION_ID, name="Allow once", kind="allow_once"),
                PermissionOption(option_id=REJECT_OPTION_ID, name="Reject", kind="reject_once"),
            ],
        )
        outcome = response.outcome
        allowed = isinstance(outcome, AllowedOutcome) and outcome.option_id == ALLOW_OPTION_ID
        log.info("permission answered session_id=%s path=%s allowed=%s", session_id, notes, allowed)
        return allowed

    async def _finish(self, session_id: str, text: str) -> PromptResponse:
        used = 1000 + len(text)
        await self._client.session_update(
            session_id, UsageUpdate(session_update="usage_update", used=used, size=200_000)
        )
        title = (text.splitlines()[0] if text else "Demo session")[:60]
        await self._client.session_update(
            session_id, SessionInfoUpdate(session_update="session_info_update", title=f"Demo: {title}")
        )
        return PromptResponse(
            stop_reason="end_turn",
            usage=Usage(input_tokens=1000, output_tokens=len(text), total_tokens=used),
        )


def main() -> None:
    """Serve one ACP connection on stdin/stdout until stdin reaches EOF."""
    logging.basicConfig(
        level=os.environ.get("FOUNDRY_DEMO_AGENT_LOG_LEVEL", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # DemoAgent implements only part of the `acp.Agent` protocol on purpose: the acp router answers
    # "method not found" for the rest (authenticate, load_session, set_session_mode…).
    asyncio.run(acp.run_agent(cast("acp.Agent", DemoAgent())))
