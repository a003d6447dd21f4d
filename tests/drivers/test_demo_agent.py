"""The demo agent speaks ACP over stdio like a real coding agent (no sandbox-agent in between)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import acp
import pytest
from acp.schema import AllowedOutcome, DeniedOutcome, RequestPermissionResponse

from foundry.demo_agent import FAILURE_REASON, NOTES_FILE, prompt_text
from foundry.demo_agent.launcher import launcher_path, launcher_script, write_launcher


class RecordingClient:
    """An ACP client that records session updates and answers permission requests as told."""

    def __init__(self, allow: bool = True) -> None:
        self.allow = allow
        self.updates: list[Any] = []
        self.permission_requests: list[Any] = []

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        self.updates.append(update)

    async def request_permission(
        self, options: list[Any], session_id: str, tool_call: Any, **kwargs: Any
    ) -> RequestPermissionResponse:
        self.permission_requests.append(tool_call)
        if self.allow:
            return RequestPermissionResponse(outcome=AllowedOutcome(outcome="selected", option_id="allow"))
        return RequestPermissionResponse(outcome=DeniedOutcome(outcome="cancelled"))

    def kinds(self) -> list[str]:
        return [update.session_update for update in self.updates]

    def text(self) -> str:
        return "".join(
            update.content.text for update in self.updates if update.session_update == "agent_message_chunk"
        )


@pytest.fixture
def client() -> RecordingClient:
    return RecordingClient()


@pytest.fixture
async def agent(
    client: RecordingClient, tmp_path: Path
) -> AsyncIterator[tuple[acp.ClientSideConnection, asyncio.subprocess.Process]]:
    env = {"FOUNDRY_DEMO_AGENT_DELAY": "0", "PATH": os.environ.get("PATH", "")}
    async with acp.spawn_agent_process(
        client, sys.executable, "-m", "foundry.demo_agent", env=env, cwd=tmp_path
    ) as (conn, process):
        await conn.initialize(protocol_version=acp.PROTOCOL_VERSION)
        yield conn, process


async def _session(conn: acp.ClientSideConnection, cwd: Path) -> str:
    return (await conn.new_session(cwd=str(cwd), mcp_servers=[])).session_id


async def test_turn_streams_plan_text_tool_and_appends_to_notes(
    agent: Any, client: RecordingClient, tmp_path: Path
):
    conn, _ = agent
    session_id = await _session(conn, tmp_path)

    first = await conn.prompt(session_id=session_id, prompt=[acp.text_block("Add a greeting")])
    second = await conn.prompt(session_id=session_id, prompt=[acp.text_block("Then say goodbye")])

    assert first.stop_reason == second.stop_reason == "end_turn"
    kinds = client.kinds()
    one_turn = kinds[: len(kinds) // 2]
    assert one_turn[0] == "plan"
    assert (
        one_turn.index("agent_message_chunk")
        < one_turn.index("tool_call")
        < one_turn.index("tool_call_update")
    )
    assert one_turn[-2:] == ["usage_update", "session_info_update"]
    assert "Working on: Add a greeting" in client.text()
    notes = (tmp_path / NOTES_FILE).read_text()
    assert notes == "# Notes\n\n- Add a greeting\n- Then say goodbye\n"
    completed = [
        u for u in client.updates if u.session_update == "tool_call_update" and u.status == "completed"
    ]
    assert completed[0].content[0].new_text == "# Notes\n\n- Add a greeting\n"


async def test_permission_reject_leaves_the_file_alone(agent: Any, client: RecordingClient, tmp_path: Path):
    conn, _ = agent
    client.allow = False
    session_id = await _session(conn, tmp_path)

    result = await conn.prompt(session_id=session_id, prompt=[acp.text_block("needs permission")])

    assert result.stop_reason == "end_turn"
    assert len(client.permission_requests) == 1
    assert not (tmp_path / NOTES_FILE).exists()
    assert "Permission denied" in client.text()

    client.allow = True
    await conn.prompt(session_id=session_id, prompt=[acp.text_block("permission again")])
    assert (tmp_path / NOTES_FILE).read_text().endswith("- permission again\n")


async def test_fail_answers_with_a_json_rpc_error(agent: Any, tmp_path: Path):
    conn, _ = agent
    session_id = await _session(conn, tmp_path)

    with pytest.raises(acp.RequestError) as caught:
        await conn.prompt(session_id=session_id, prompt=[acp.text_block("please fail")])

    assert caught.value.data == {"reason": FAILURE_REASON}
    assert not (tmp_path / NOTES_FILE).exists()


async def test_cancel_stops_a_slow_turn_promptly(agent: Any, client: RecordingClient, tmp_path: Path):
    conn, _ = agent
    session_id = await _session(conn, tmp_path)
    turn = asyncio.create_task(conn.prompt(session_id=session_id, prompt=[acp.text_block("go slow")]))
    while " .2" not in client.text():
        await asyncio.sleep(0.05)

    started = time.monotonic()
    await conn.cancel(session_id=session_id)
    result = await asyncio.wait_for(turn, 5)

    assert result.stop_reason == "cancelled"
    assert time.monotonic() - started < 1.0
    assert not (tmp_path / NOTES_FILE).exists()


async def test_flood_streams_the_requested_number_of_chunks(
    agent: Any, client: RecordingClient, tmp_path: Path
):
    conn, _ = agent
    session_id = await _session(conn, tmp_path)

    answer = await conn.prompt(session_id=session_id, prompt=[acp.text_block("Flood 300 please")])

    assert answer.stop_reason == "end_turn"
    chunks = [u.content.text for u in client.updates if u.session_update == "agent_message_chunk"]
    flood = [c for c in chunks if c.startswith(" w")]
    assert flood == [f" w{i}" for i in range(1, 301)]
    assert (tmp_path / NOTES_FILE).exists()  # the turn still edits the file afterwards


async def test_exits_on_stdin_eof(agent: Any):
    _, process = agent
    process.stdin.close()
    assert await asyncio.wait_for(process.wait(), 10) == 0


def test_prompt_text_joins_text_blocks_only():
    blocks = [acp.text_block("one"), {"type": "image"}, {"type": "text", "text": "two"}]
    assert prompt_text(blocks) == "one\ntwo"


def test_write_launcher_is_an_executable_script(tmp_path: Path):
    path = write_launcher(tmp_path / "xdg", "mock", python="/opt/py thon")

    assert path == launcher_path(tmp_path / "xdg", "mock")
    assert path == tmp_path / "xdg" / "sandbox-agent" / "bin" / "agent_processes" / "mock-acp"
    assert os.access(path, os.X_OK)
    assert path.read_text() == launcher_script("/opt/py thon")
    assert "exec '/opt/py thon' -I -m foundry.demo_agent" in path.read_text()
