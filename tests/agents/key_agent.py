"""A test ACP agent that authenticates as Codex's adapter does: ``initialize`` lists methods of type
``env_var``, ``session/new`` fails with ACP's ``auth_required`` until the client called
``authenticate`` with one of them, and ``authenticate`` fails when that method's variable is not in
the agent's environment. A prompt is answered with the method that succeeded (never the key).
The process exits when its stdin reaches EOF.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any, cast

import acp
from acp.schema import (
    AgentCapabilities,
    AuthenticateResponse,
    AuthEnvVar,
    EnvVarAuthMethod,
    Implementation,
    InitializeResponse,
    NewSessionResponse,
    PromptResponse,
)

METHODS = {"codex-api-key": "CODEX_API_KEY", "openai-api-key": "OPENAI_API_KEY"}


class KeyAgent:
    def __init__(self) -> None:
        self._conn: acp.Client | None = None
        self._method: str | None = None

    def on_connect(self, conn: acp.Client) -> None:
        self._conn = conn

    async def initialize(self, protocol_version: int, **kwargs: Any) -> InitializeResponse:
        methods = [
            EnvVarAuthMethod(type="env_var", id=method, name=f"Use {name}", vars=[AuthEnvVar(name=name)])
            for method, name in METHODS.items()
        ]
        return InitializeResponse(
            protocol_version=acp.PROTOCOL_VERSION,
            agent_capabilities=AgentCapabilities(load_session=False),
            auth_methods=methods,
            agent_info=Implementation(name="key-agent", title="Key test agent", version="1.0.0"),
        )

    async def authenticate(self, method_id: str, **kwargs: Any) -> AuthenticateResponse:
        name = METHODS.get(method_id)
        if name is None or not os.environ.get(name):
            raise acp.RequestError.internal_error({"details": f"{name or method_id} is not set"})
        self._method = method_id
        return AuthenticateResponse()

    async def new_session(self, cwd: str, **kwargs: Any) -> NewSessionResponse:
        if self._method is None:
            raise acp.RequestError.auth_required()
        return NewSessionResponse(session_id=f"key-{uuid.uuid4().hex[:12]}")

    async def prompt(self, session_id: str, prompt: list[Any], **kwargs: Any) -> PromptResponse:
        assert self._conn is not None
        text = f"authenticated with {self._method}"
        await self._conn.session_update(session_id, acp.update_agent_message_text(text))
        return PromptResponse(stop_reason="end_turn")

    async def cancel(self, session_id: str, **kwargs: Any) -> None:
        return None


def main() -> None:
    asyncio.run(acp.run_agent(cast("acp.Agent", KeyAgent())))


if __name__ == "__main__":
    main()
