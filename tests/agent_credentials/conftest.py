"""Agent credentials tier: the real HTTP server (in-process runtime) and, for the environment of a
task's agent, real sandbox-agent servers running a test agent that runs each prompt in a shell."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from foundry.drivers.github.fake import FakeGitHub
from tests.http.conftest import server  # noqa: F401 - the HTTP tier's fixture, reused here
from tests.tasks.conftest import TaskServer, running_server

SHELL_AGENT = f"{sys.executable} -I {Path(__file__).parents[1] / 'security' / 'shell_agent.py'}"
#: The deployment-wide value every sandbox gets unless its organization sets its own.
DEPLOYMENT_ANTHROPIC_KEY = "deployment-wide-anthropic-key-0000"
DEPLOYMENT_OPENAI_KEY = "deployment-wide-openai-key-1111"


def add_globex_admin(github: FakeGitHub) -> None:
    """``dave``: an admin of globex only (the seeded world has no globex admin)."""
    github.add_user("dave", 5004, name="Dave Doe", email="dave@globex.example")
    github.add_member("globex", "dave", "admin")


def files_containing(root: Path, needle: str) -> list[str]:
    """Files under ``root`` whose raw bytes contain ``needle`` (SQLite files and their WALs too)."""
    found = []
    for path in root.rglob("*"):
        # Sockets and pipes of a running sandbox are not files to read.
        if path.is_file() and not path.is_symlink() and needle.encode() in path.read_bytes():
            found.append(str(path))
    return found


def credential_url(org: str, name: str = "") -> str:
    return f"/v1/organizations/{org}/agent-credentials" + (f"/{name}" if name else "")


@asynccontextmanager
async def shell_server_at(tmp_path: Path, **sandbox: Any) -> AsyncIterator[TaskServer]:
    """Sandboxes whose ``mock`` agent runs each prompt as a shell command, with deployment-wide
    provider keys in ``agent_env``."""
    env = {
        "FOUNDRY_DEMO_AGENT_DELAY": "0",
        "ANTHROPIC_API_KEY": DEPLOYMENT_ANTHROPIC_KEY,
        "OPENAI_API_KEY": DEPLOYMENT_OPENAI_KEY,
    }
    async with running_server(
        tmp_path, agent_commands={"mock": SHELL_AGENT}, agent_env=env, **sandbox
    ) as started:
        add_globex_admin(started.github)
        yield started


@pytest.fixture
async def shell_server(tmp_path: Path) -> AsyncIterator[TaskServer]:
    async with shell_server_at(tmp_path) as started:
        yield started


async def agent_output(client: httpx.AsyncClient, org: str, task_id: str, session_id: str) -> str:
    """Everything the agent said in a session (the shell agent says its command's output)."""
    text = ""
    since = 0
    while True:
        response = await client.get(
            f"/v1/organizations/{org}/tasks/{task_id}/sessions/{session_id}/events", params={"since": since}
        )
        assert response.status_code == 200, response.text
        page: dict[str, Any] = response.json()
        for event in page["events"]:
            if event["event"] == "agentUpdate" and event["data"]["kind"] == "agent_message_chunk":
                text += event["data"]["update"]["content"]["text"]
        if not page["more"]:
            return text
        since = page["nextSince"]


async def wait_output(
    client: httpx.AsyncClient, org: str, task_id: str, session_id: str, turns: int = 1, timeout: float = 60
) -> str:
    """The agent's output once ``turns`` turns ended (``[exit N]`` ends each of the shell agent's
    answers)."""
    for _ in range(int(timeout / 0.1)):
        text = await agent_output(client, org, task_id, session_id)
        if text.count("[exit ") >= turns:
            return text
        await asyncio.sleep(0.1)
    raise AssertionError(f"the agent never answered in {org}/{task_id}")
