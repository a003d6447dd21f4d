"""An agent that wants ACP ``authenticate`` before a session (as Codex's adapter does) gets it with
the organization's key from its environment; without a key, the session fails naming the variable
and where an admin sets it."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.agent_credentials.conftest import agent_output, credential_url
from tests.tasks.conftest import ACME_ROCKET, create_task, running_server, task_detail

KEY_AGENT = f"{sys.executable} -I {Path(__file__).parent / 'key_agent.py'}"
ACME_OPENAI_KEY = "sk-openai-acme-5c1d9e7f3a-tail"


async def session_of(client: httpx.AsyncClient, task_id: str, session_id: str) -> dict[str, Any]:
    detail = await task_detail(client, task_id)
    return next(s for s in detail["sessions"] if s["sessionId"] == session_id)


async def test_an_agent_that_asks_to_authenticate_uses_the_organization_s_key(tmp_path: Path):
    server_at = running_server(tmp_path, agent_commands={"mock": KEY_AGENT}, agent_env={})
    async with server_at as server, server.signed_in("carol") as carol:
        stored = await carol.put(credential_url("acme", "OPENAI_API_KEY"), json={"value": ACME_OPENAI_KEY})
        assert stored.status_code == 204, stored.text
        created = await create_task(carol, repoId=ACME_ROCKET, prompt="Fix the build", model="demo")
        task_id, session_id = created["taskId"], created["sessionId"]
        deadline = time.monotonic() + 45
        while "authenticated with" not in (text := await agent_output(carol, "acme", task_id, session_id)):
            session = await session_of(carol, task_id, session_id)
            assert session["status"] != "error", session["error"]
            assert time.monotonic() < deadline, f"no answer; transcript: {text!r}"
            await asyncio.sleep(0.1)
    # CODEX_API_KEY is not set: the agent refused that method, and the next one it lists worked.
    assert text.strip() == "authenticated with openai-api-key"


async def test_without_a_key_the_session_fails_naming_the_variables_and_the_credentials(tmp_path: Path):
    server_at = running_server(tmp_path, agent_commands={"mock": KEY_AGENT}, agent_env={})
    async with server_at as server, server.signed_in("carol") as carol:
        created = await create_task(carol, repoId=ACME_ROCKET, prompt="Fix the build", model="demo")
        task_id, session_id = created["taskId"], created["sessionId"]
        deadline = time.monotonic() + 45
        while (session := await session_of(carol, task_id, session_id))["status"] != "error":
            assert time.monotonic() < deadline, f"the session never failed: {session}"
            await asyncio.sleep(0.1)
    error = session["error"]
    assert "CODEX_API_KEY or OPENAI_API_KEY" in error, error
    assert "agent credentials" in error, error
