"""A test agent that supports ACP ``session/load``: the demo agent plus sessions kept on disk.

It advertises ``loadSession``, writes each session (its cwd and the prompts it ran) to
``$HOME/loadable-sessions/<id>.json``, and on ``session/load`` replays the earlier prompts as
``user_message_chunk`` updates, as ACP asks, before it answers. Run as a script by a sandbox launcher.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any, cast

import acp
from acp.schema import AgentCapabilities, Implementation, InitializeResponse, LoadSessionResponse

from foundry.demo_agent import DemoAgent, _Session, prompt_text


def _store() -> Path:
    path = Path(os.environ["HOME"]) / "loadable-sessions"
    path.mkdir(parents=True, exist_ok=True)
    return path


class LoadableAgent(DemoAgent):
    async def initialize(self, protocol_version: int, *args: Any, **kwargs: Any) -> InitializeResponse:
        return InitializeResponse(
            protocol_version=acp.PROTOCOL_VERSION,
            agent_capabilities=AgentCapabilities(load_session=True),
            agent_info=Implementation(name="loadable-test-agent", version="1.0.0"),
        )

    async def new_session(self, cwd: str, *args: Any, **kwargs: Any) -> Any:
        response = await super().new_session(cwd, *args, **kwargs)
        self._save(response.session_id, cwd, [])
        return response

    async def prompt(self, session_id: str, prompt: list[Any], **kwargs: Any) -> Any:
        record = self._load(session_id)
        if record is not None:
            record["prompts"].append(prompt_text(prompt))
            self._save(session_id, record["cwd"], record["prompts"])
        return await super().prompt(session_id, prompt, **kwargs)

    async def load_session(self, cwd: str, session_id: str, *args: Any, **kwargs: Any) -> LoadSessionResponse:
        record = self._load(session_id)
        if record is None:
            raise acp.RequestError.invalid_params({"reason": f"unknown session {session_id!r}"})
        self._sessions[session_id] = _Session(cwd=Path(cwd), turns=len(record["prompts"]))
        for text in record["prompts"]:
            await self._client.session_update(session_id, acp.update_user_message_text(text))
        return LoadSessionResponse()

    def _save(self, session_id: str, cwd: str, prompts: list[str]) -> None:
        (_store() / f"{session_id}.json").write_text(json.dumps({"cwd": cwd, "prompts": prompts}))

    def _load(self, session_id: str) -> dict[str, Any] | None:
        path = _store() / f"{session_id}.json"
        return json.loads(path.read_text()) if path.exists() else None


if __name__ == "__main__":
    asyncio.run(acp.run_agent(cast("acp.Agent", LoadableAgent())))
