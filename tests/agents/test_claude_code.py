"""The real Claude Code runs a task's prompt: Foundry's sandbox (jailed, through the real
sandbox-agent 0.4.2) starts Claude Code's real ACP adapter, which runs the real Claude Code, which
calls a fake Anthropic Messages API with the organization's own key; the fake model's answer
streams into the task's transcript. An agent that is not installed fails its session saying how
to install it."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.agent_credentials.conftest import agent_output, credential_url, files_containing
from tests.agents.fake_anthropic import FakeAnthropic
from tests.tasks.conftest import ACME_ROCKET, TaskServer, create_task, running_server, task_detail

ACME_KEY = "sk-ant-api03-acme-7d2f9c1e5b-only-for-acme-tail"
DEPLOYMENT_KEY = "sk-ant-deployment-wide-0000-never-used"
REPLY = ["The launch checklist ", "is ready, ", "said the fake model."]
#: Claude Code starts in a few seconds; a busy 2-core machine makes that several times longer.
TURN_TIMEOUT_S = 90.0


def cmdlines_containing(needle: str) -> list[str]:
    """Command lines of this machine's processes that contain ``needle``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # exited meanwhile, or not ours to read
        if needle.encode() in cmdline:
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


async def wait_reply(client: httpx.AsyncClient, task_id: str, session_id: str) -> str:
    deadline = time.monotonic() + TURN_TIMEOUT_S
    while True:
        text = await agent_output(client, "acme", task_id, session_id)
        if "".join(REPLY) in text:
            return text
        detail = await task_detail(client, task_id)
        session = next(s for s in detail["sessions"] if s["sessionId"] == session_id)
        assert session["status"] != "error", f"the session failed: {session}"
        assert time.monotonic() < deadline, f"no answer from Claude Code; transcript so far: {text!r}"
        await asyncio.sleep(0.2)


async def sandbox_agents(server: TaskServer) -> dict[str, dict[str, Any]]:
    """``GET /v1/agents`` of the (one) running sandbox, by agent id."""
    [sandbox_id] = server.provider.running_ids()
    endpoint = (await server.provider.status(sandbox_id)).endpoint
    assert endpoint is not None
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {endpoint.token}"}) as client:
        response = await client.get(f"{endpoint.base_url}/v1/agents")
    assert response.status_code == 200, response.text
    return {agent["id"]: agent for agent in response.json()["agents"]}


async def test_real_claude_code_answers_a_task_with_the_organization_s_key(
    tmp_path: Path, agents_dir: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO)
    fake = FakeAnthropic({ACME_KEY}, REPLY).start()
    try:
        async with (
            running_server(
                tmp_path,
                agents_dir=str(agents_dir),
                # The jail reaches the fake on this machine's loopback only with the host's network
                # (egress blocks loopback on purpose).
                network="host",
                # Deployment-wide settings: where the model API is, and a key the organization's own
                # key must replace.
                agent_env={"ANTHROPIC_BASE_URL": fake.url, "ANTHROPIC_API_KEY": DEPLOYMENT_KEY},
            ) as server,
            server.signed_in("carol") as carol,
        ):
            stored = await carol.put(credential_url("acme", "ANTHROPIC_API_KEY"), json={"value": ACME_KEY})
            assert stored.status_code == 204, stored.text

            created = await create_task(
                carol, repoId=ACME_ROCKET, prompt="Write the launch checklist", model="sonnet"
            )
            task_id, session_id = created["taskId"], created["sessionId"]
            text = await wait_reply(carol, task_id, session_id)

            detail = await task_detail(carol, task_id)
            [session] = [s for s in detail["sessions"] if s["sessionId"] == session_id]
            assert session["agent"] == "claude"
            assert text.strip().endswith("".join(REPLY)), text

            # sandbox-agent itself sees Claude Code installed: the launcher and the `claude` program.
            agents = await sandbox_agents(server)
            assert agents["claude"]["installed"] is True, agents["claude"]
            # The running agent's processes carry the key in their environment only.
            assert cmdlines_containing(ACME_KEY) == []
            # No file holds it: not Foundry's (databases, logs, records), not the sandbox's (the
            # launcher scripts, Claude Code's own settings in the sandbox's home).
            assert files_containing(server.settings.data_dir, ACME_KEY) == []
    finally:
        fake.stop()

    messages = [r for r in fake.seen() if r.path.split("?")[0] == "/v1/messages"]
    assert messages, [(r.method, r.path) for r in fake.seen()]
    # Every request carried acme's key: never the deployment's, never none.
    assert {r.headers.get("x-api-key") for r in fake.seen()} == {ACME_KEY}
    # The user's prompt reached the model in a streamed Messages request.
    prompted = [
        r
        for r in messages
        if r.body.get("stream") and "Write the launch checklist" in str(r.body.get("messages"))
    ]
    assert prompted, [r.body for r in messages]
    assert ACME_KEY not in caplog.text


async def test_an_agent_that_is_not_installed_fails_its_session_naming_the_install_command(
    tmp_path: Path, agents_dir: Path
):
    # Only Claude Code is installed in this agents directory.
    only_claude = tmp_path / "agents"
    only_claude.mkdir()
    os.symlink(agents_dir / "claude", only_claude / "claude")
    server_at = running_server(tmp_path, agents_dir=str(only_claude))
    async with server_at as server, server.signed_in("carol") as carol:
        created = await create_task(carol, repoId=ACME_ROCKET, prompt="Fix the build", model="gpt-5.3-codex")
        task_id, session_id = created["taskId"], created["sessionId"]
        deadline = time.monotonic() + 60
        while True:
            detail = await task_detail(carol, task_id)
            [session] = [s for s in detail["sessions"] if s["sessionId"] == session_id]
            if session["status"] == "error":
                break
            assert time.monotonic() < deadline, f"the session never failed: {session}"
            await asyncio.sleep(0.1)
        assert session["agent"] == "codex"
        assert "foundry agents install codex" in session["error"], session["error"]
        # The sandbox lists what is installed: Claude Code (and the demo agent of mock mode).
        assert "installed: claude, mock" in session["error"], session["error"]


async def test_without_a_key_claude_code_s_turn_fails_naming_the_key_to_set(tmp_path: Path, agents_dir: Path):
    fake = FakeAnthropic({ACME_KEY}, REPLY).start()
    try:
        server_at = running_server(
            tmp_path, agents_dir=str(agents_dir), network="host", agent_env={"ANTHROPIC_BASE_URL": fake.url}
        )
        async with server_at as server, server.signed_in("carol") as carol:
            created = await create_task(
                carol, repoId=ACME_ROCKET, prompt="Write the checklist", model="sonnet"
            )
            task_id, session_id = created["taskId"], created["sessionId"]
            deadline = time.monotonic() + TURN_TIMEOUT_S
            while True:
                page = await carol.get(
                    f"/v1/organizations/acme/tasks/{task_id}/sessions/{session_id}/events",
                    params={"since": 0},
                )
                failed = [e for e in page.json()["events"] if e["event"] == "turnFailed"]
                if failed:
                    break
                assert time.monotonic() < deadline, f"the turn never failed: {page.json()['events']}"
                await asyncio.sleep(0.2)
    finally:
        fake.stop()
    error = failed[0]["data"]["error"]
    assert "Authentication required" in error, error
    assert "ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN in the organization's agent credentials" in error
    assert fake.seen() == []  # Claude Code never called the model without a key
