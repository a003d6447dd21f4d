"""A scripted ACP agent for transcript tests, run by sandbox-agent as the ``mock`` agent.

It speaks ACP over stdio like a real coding agent; each prompt's text is a small script, one command
per whitespace-separated group (several may follow each other):

* ``flood N`` - open tool call ``flood-<turn>``, stream N message chunks ``#1 `` … ``#N `` as fast as
  the pipe takes them, then complete the tool call (its ``rawOutput.doneAtMs`` is the wall-clock time
  the last chunk was sent). ``session/cancel`` stops it between chunks (the
  tool call is then left ``in_progress``, as a real agent leaves it).
* ``pause MS`` - sleep MS milliseconds (cancellable).
* ``pace MS`` - later floods of this turn sleep MS milliseconds after every 50 chunks: a token-rate
  agent rather than a pipe at full speed.
* ``crash`` - exit the process at once with status 3 (the prompt is never answered).
* ``open`` - open tool call ``open-<turn>`` (``in_progress``) and never close it.
* ``deaf`` - ignore ``session/cancel`` for the rest of the turn.

Unlike the demo agent it writes nothing to disk, so thousands of turns cost nothing but events.
The process exits when its stdin reaches EOF (how sandbox-agent closes an ACP server).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any, cast

import acp
from acp.schema import (
    AgentCapabilities,
    Implementation,
    InitializeResponse,
    NewSessionResponse,
    PromptResponse,
)

from foundry.demo_agent.agent import prompt_text


class ScriptedAgent:
    """Runs each prompt as a script (see the module docstring)."""

    def __init__(self) -> None:
        self._conn: acp.Client | None = None
        self._running: dict[str, asyncio.Task[PromptResponse]] = {}
        self._deaf: set[str] = set()
        self._turns = 0
        self._pace_s = 0.0

    def on_connect(self, conn: acp.Client) -> None:
        self._conn = conn

    async def initialize(self, protocol_version: int, **kwargs: Any) -> InitializeResponse:
        return InitializeResponse(
            protocol_version=acp.PROTOCOL_VERSION,
            agent_capabilities=AgentCapabilities(load_session=False),
            agent_info=Implementation(name="scripted-agent", title="Scripted test agent", version="1.0.0"),
        )

    async def new_session(self, cwd: str, **kwargs: Any) -> NewSessionResponse:
        return NewSessionResponse(session_id=f"scripted-{uuid.uuid4().hex[:12]}")

    async def prompt(self, session_id: str, prompt: list[Any], **kwargs: Any) -> PromptResponse:
        turn = asyncio.create_task(self._run(session_id, prompt_text(prompt).split()))
        self._running[session_id] = turn
        try:
            return await turn
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if turn.cancelled() and (current is None or current.cancelling() == 0):
                return PromptResponse(stop_reason="cancelled")
            turn.cancel()
            raise
        finally:
            self._running.pop(session_id, None)
            self._deaf.discard(session_id)

    async def cancel(self, session_id: str, **kwargs: Any) -> None:
        turn = self._running.get(session_id)
        if turn is not None and session_id not in self._deaf:
            turn.cancel()

    async def _run(self, session_id: str, words: list[str]) -> PromptResponse:
        assert self._conn is not None
        self._turns += 1
        self._pace_s = 0.0
        i = 0
        while i < len(words):
            word = words[i].lower()
            arg = int(words[i + 1]) if i + 1 < len(words) and words[i + 1].isdigit() else None
            if word == "flood" and arg is not None:
                await self._flood(session_id, arg)
            elif word == "pause" and arg is not None:
                await asyncio.sleep(arg / 1000)
            elif word == "pace" and arg is not None:
                self._pace_s = arg / 1000
            elif word == "crash":
                os._exit(3)
            elif word == "deaf":
                self._deaf.add(session_id)
            elif word == "open":
                call_id = f"open-{self._turns}"
                await self._conn.session_update(
                    session_id, acp.start_tool_call(call_id, "Left open", kind="other", status="in_progress")
                )
            i += 2 if arg is not None else 1
        return PromptResponse(stop_reason="end_turn")

    async def _flood(self, session_id: str, count: int) -> None:
        assert self._conn is not None
        call_id = f"flood-{self._turns}"
        await self._conn.session_update(
            session_id, acp.start_tool_call(call_id, f"Flood {count}", kind="other", status="pending")
        )
        await self._conn.session_update(session_id, acp.update_tool_call(call_id, status="in_progress"))
        for n in range(1, count + 1):
            await self._conn.session_update(session_id, acp.update_agent_message_text(f"#{n} "))
            if n % 50 == 0:
                await asyncio.sleep(self._pace_s)  # lets session/cancel in
        # When the last chunk left the agent (wall clock, same machine): the bench's reference point.
        done = {"doneAtMs": int(time.time() * 1000)}
        await self._conn.session_update(
            session_id, acp.update_tool_call(call_id, status="completed", raw_output=done)
        )


def main() -> None:
    asyncio.run(acp.run_agent(cast("acp.Agent", ScriptedAgent())))


if __name__ == "__main__":
    main()
