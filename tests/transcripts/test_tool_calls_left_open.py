"""A tool call the agent left running is closed by Foundry once no agent will close it any more: the
session is closed, the task archived, or the agent replaced after its sandbox died. Otherwise it
would spin on the page for good."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from tests.tasks.conftest import TaskServer, wait_task
from tests.transcripts.conftest import session_log, start_task, terminal, wait_running, wait_turns

TASKS = "/v1/organizations/acme/tasks"


def closed_by_foundry(log: list[dict[str, Any]], before: str) -> dict[str, str]:
    """The tool calls Foundry closed before the first ``before`` event, with their status."""
    end = [e["event"] for e in log].index(before)
    return {
        e["data"]["update"]["toolCallId"]: e["data"]["update"]["status"]
        for e in log[:end]
        if e["event"] == "agentUpdate" and e["data"].get("origin") == "foundry"
    }


async def _task_with_a_call_left_open(client: Any) -> tuple[str, str]:
    task_id, session_id = await start_task(client, "open")
    log = await wait_turns(client, task_id, session_id, 1)
    assert terminal(log) == ["turnEnded"]
    assert not closed_by_foundry(log, "turnEnded")  # the agent's own turn end leaves it to the agent
    return task_id, session_id


async def test_closing_a_session_closes_the_tool_calls_its_agent_left_open(scripted_server: TaskServer):
    async with scripted_server.signed_in("alice") as client:
        task_id, session_id = await _task_with_a_call_left_open(client)
        closed = await client.delete(f"{TASKS}/{task_id}/sessions/{session_id}")
        assert closed.status_code == 200, closed.text
        log = await session_log(client, task_id, session_id)
    assert closed_by_foundry(log, "sessionClosed") == {"open-1": "cancelled"}


async def test_archiving_a_task_closes_the_tool_calls_its_agents_left_open(scripted_server: TaskServer):
    async with scripted_server.signed_in("alice") as client:
        task_id, session_id = await _task_with_a_call_left_open(client)
        archived = await client.post(f"{TASKS}/{task_id}/archive", json={"force": True})
        assert archived.status_code == 200, archived.text
        log = await session_log(client, task_id, session_id)
    assert closed_by_foundry(log, "sessionClosed") == {"open-1": "cancelled"}


async def test_an_agent_replaced_after_its_sandbox_died_has_its_open_tool_calls_closed(
    scripted_server: TaskServer,
):
    async with scripted_server.signed_in("alice") as client:
        task_id, session_id = await _task_with_a_call_left_open(client)
        pid = scripted_server.provider.process_id(task_id)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await wait_task(client, task_id, lambda d: d["sandboxError"] is not None)
        sent = await client.post(f"{TASKS}/{task_id}/sessions/{session_id}/messages", json={"text": "hello"})
        assert sent.status_code == 202, sent.text
        log = await wait_turns(client, task_id, session_id, 2)
    assert terminal(log) == ["turnEnded", "turnEnded"]
    assert closed_by_foundry(log, "agentRestarted") == {"open-1": "failed"}


async def _task_mid_flood(client: Any) -> tuple[str, str]:
    """A task whose agent floods at a token rate for seconds, ignoring cancels (it goes on until it
    is shut down), once the flood is under way."""
    task_id, session_id = await start_task(client, "deaf pace 20 flood 20000")
    await wait_running(client, task_id)
    while len(await session_log(client, task_id, session_id)) < 50:
        await asyncio.sleep(0.05)
    return task_id, session_id


async def test_closing_a_session_mid_turn_ends_the_turn_first_and_records_nothing_after_the_close(
    scripted_server: TaskServer,
):
    # The close used to land inside the running turn: `sessionClosed`, then the flood's events and
    # the turn's end after it.
    async with scripted_server.signed_in("alice") as client:
        task_id, session_id = await _task_mid_flood(client)
        closed = await client.delete(f"{TASKS}/{task_id}/sessions/{session_id}")
        assert closed.status_code == 200, closed.text
        await asyncio.sleep(3.0)  # the agent is shut down meanwhile; nothing more may follow
        log = await session_log(client, task_id, session_id)
        detail = await client.get(f"{TASKS}/{task_id}")
    kinds = [e["event"] for e in log]
    assert kinds[-2:] == ["turnCancelled", "sessionClosed"], [(e["event"], e["data"]) for e in log[-4:]]
    assert log[-2]["data"]["stopReason"] == "closed"
    assert terminal(log) == ["turnCancelled"]
    assert closed_by_foundry(log, "turnCancelled") == {"flood-1": "cancelled"}
    session = detail.json()["sessions"][0]
    assert session["status"] == "closed"


async def test_archiving_a_task_mid_turn_ends_the_turn_as_archived_and_records_nothing_after(
    scripted_server: TaskServer,
):
    # The archive destroyed the sandbox under the running turn, whose failure was then recorded as
    # a forced Stop ("cancelled", "forced") instead of "archived".
    async with scripted_server.signed_in("alice") as client:
        task_id, session_id = await _task_mid_flood(client)
        archived = await client.post(f"{TASKS}/{task_id}/archive", json={"force": True})
        assert archived.status_code == 200, archived.text
        await asyncio.sleep(2.0)  # nothing more may follow
        log = await session_log(client, task_id, session_id)
    kinds = [e["event"] for e in log]
    assert terminal(log) == ["turnCancelled"], [(e["event"], e["data"]) for e in log[-4:]]
    ended = log[kinds.index("turnCancelled")]["data"]
    assert ended["stopReason"] == "archived"
    assert "forced" not in ended
    assert kinds[-1] == "sessionClosed"
    assert not [k for k in kinds[kinds.index("turnCancelled") :] if k == "agentUpdate"]
    assert closed_by_foundry(log, "turnCancelled") == {"flood-1": "cancelled"}
