"""A test ACP agent that runs each prompt as a shell command in its sandbox, as a coding agent's tool
call would, and answers with the command's output (one message chunk, then ``end_turn``).

``session/cancel`` kills the command (its whole process group) and answers ``cancelled``. The process
exits when its stdin reaches EOF (how sandbox-agent closes an ACP server).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
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


class ShellAgent:
    """Runs each prompt with ``sh -c`` (see the module docstring)."""

    def __init__(self) -> None:
        self._conn: acp.Client | None = None
        self._running: dict[str, asyncio.Task[PromptResponse]] = {}

    def on_connect(self, conn: acp.Client) -> None:
        self._conn = conn

    async def initialize(self, protocol_version: int, **kwargs: Any) -> InitializeResponse:
        return InitializeResponse(
            protocol_version=acp.PROTOCOL_VERSION,
            agent_capabilities=AgentCapabilities(load_session=False),
            agent_info=Implementation(name="shell-agent", title="Shell test agent", version="1.0.0"),
        )

    async def new_session(self, cwd: str, **kwargs: Any) -> NewSessionResponse:
        return NewSessionResponse(session_id=f"shell-{uuid.uuid4().hex[:12]}")

    async def prompt(self, session_id: str, prompt: list[Any], **kwargs: Any) -> PromptResponse:
        turn = asyncio.create_task(self._run(session_id, prompt_text(prompt)))
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

    async def cancel(self, session_id: str, **kwargs: Any) -> None:
        turn = self._running.get(session_id)
        if turn is not None:
            turn.cancel()

    async def _run(self, session_id: str, command: str) -> PromptResponse:
        assert self._conn is not None
        process = await asyncio.create_subprocess_shell(
            command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            output, _ = await process.communicate()
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            raise
        text = output.decode(errors="replace")[-4000:] + f"\n[exit {process.returncode}]"
        await self._conn.session_update(session_id, acp.update_agent_message_text(text))
        return PromptResponse(stop_reason="end_turn")


def main() -> None:
    asyncio.run(acp.run_agent(cast("acp.Agent", ShellAgent())))


if __name__ == "__main__":
    main()
