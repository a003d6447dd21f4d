"""Sandboxes across restarts, crashes, idleness and bursts, seen as a user sees them.

Each test drives the HTTP API of a real server with real ``sandbox-agent`` processes and checks the
processes themselves through ``/proc``.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from foundry.demo_agent import NOTES_FILE
from tests.procs import alive
from tests.tasks.conftest import (
    TaskServer,
    create_task,
    events,
    idle_session,
    running_server,
    task_detail,
    wait_task,
)

NOT_RESTORED = "agent restarted; earlier context was not restored"


def messages_url(task_id: str, session_id: str) -> str:
    return f"/v1/organizations/acme/tasks/{task_id}/sessions/{session_id}/messages"


def _home_of(pid: int) -> str | None:
    try:
        for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            if item.startswith(b"HOME="):
                return item[5:].decode(errors="replace")
    except OSError:
        return None
    return None


def sandbox_processes(root: Path, *, servers_only: bool = False) -> dict[int, str]:
    """Live processes started for the sandboxes under ``root`` (pid → command name): their HOME is
    a sandbox directory, as the provider sets it for the server and the agents it spawns."""
    found: dict[int, str] = {}
    prefix = f"{root.resolve()}/"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        home = _home_of(int(entry.name))
        if home is None or not home.startswith(prefix):
            continue
        try:
            name = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if servers_only and name != "sandbox-agent":
            continue
        found[int(entry.name)] = name
    return found


async def until(check: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        await asyncio.sleep(0.1)


def settled(detail: dict[str, Any]) -> bool:
    """The first session finished its queued messages, one way or the other."""
    session = detail["sessions"][0]
    return session["queuedMessages"] == 0 and session["status"] in ("idle", "error")


async def send_and_settle(
    client: httpx.AsyncClient, task_id: str, session_id: str, text: str
) -> dict[str, Any]:
    response = await client.post(messages_url(task_id, session_id), json={"text": text})
    assert response.status_code == 202, response.text
    await wait_task(client, task_id, lambda d: d["sessions"][0]["status"] == "running" or settled(d))
    return await wait_task(client, task_id, settled, timeout=90)


def assert_resumed(log: list[dict[str, Any]], turns: int) -> None:
    ended = [e for e in log if e["event"] == "turnEnded"]
    assert len(ended) == turns, [e["event"] for e in log]
    restarted = [e for e in log if e["event"] == "agentRestarted"]
    assert restarted, [e["event"] for e in log]
    assert restarted[-1]["data"]["text"] == NOT_RESTORED
    assert restarted[-1]["data"]["loaded"] is False


# ------------------------------------------------------------------------------------------ restarts


async def test_a_restart_stops_every_sandbox_process_and_the_session_carries_on_afterwards(tmp_path: Path):
    async with running_server(tmp_path, close_provider=False) as server, server.signed_in("alice") as client:
        created = await create_task(client, prompt="First note")
        task_id, session_id = created["taskId"], created["sessionId"]
        await wait_task(client, task_id, idle_session)
        root = server.settings.sandbox_root
        before = sandbox_processes(root)
        assert "sandbox-agent" in before.values(), before
    # Only the runtime closed (as `foundry serve` does on a clean stop): nothing of it is left.
    await until(lambda: not alive(list(before)), 10, f"the sandbox processes {before} to stop")

    async with running_server(tmp_path) as server, server.signed_in("alice") as client:
        detail = await send_and_settle(client, task_id, session_id, "Second note")
        assert detail["sessions"][0]["status"] == "idle", detail["sessions"][0]
        assert detail["status"] == "idle"
        log = await events(client, task_id, session_id)
        assert_resumed(log, turns=2)
        notes = (Path(server.provider.sandbox_dir(task_id)) / "repo" / NOTES_FILE).read_text()
        assert "- First note" in notes
        assert "- Second note" in notes


async def test_an_idle_session_survives_a_killed_sandbox_agent(tmp_path: Path):
    async with running_server(tmp_path) as server, server.signed_in("alice") as client:
        created = await create_task(client, prompt="Before the kill")
        task_id, session_id = created["taskId"], created["sessionId"]
        await wait_task(client, task_id, idle_session)
        pid = server.provider.process_id(task_id)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await wait_task(client, task_id, lambda d: d["sandboxError"] is not None)

        detail = await send_and_settle(client, task_id, session_id, "After the kill")
        assert detail["sessions"][0]["status"] == "idle", detail["sessions"][0]
        assert detail["sandboxError"] is None
        assert_resumed(await events(client, task_id, session_id), turns=2)


# ------------------------------------------------------------------------------------------ idleness


async def test_an_idle_sandbox_is_stopped_and_the_next_message_restarts_it(tmp_path: Path):
    async with (
        running_server(tmp_path, idle_minutes=0.05) as server,
        server.signed_in("alice") as client,
    ):
        created = await create_task(client, prompt="Before going idle")
        task_id, session_id = created["taskId"], created["sessionId"]
        await wait_task(client, task_id, idle_session)
        root = server.settings.sandbox_root
        running = sandbox_processes(root)
        assert "sandbox-agent" in running.values(), running
        assert len(running) >= 2, running  # the server and the agent
        await until(lambda: not alive(list(running)), 20, f"idle sandbox processes {running} to stop")
        assert (Path(server.provider.sandbox_dir(task_id)) / "repo" / NOTES_FILE).exists()  # dir kept
        detail = await task_detail(client, task_id)
        assert detail["status"] == "idle"  # reclaiming is not an error

        detail = await send_and_settle(client, task_id, session_id, "After the nap")
        assert detail["sessions"][0]["status"] == "idle", detail["sessions"][0]
        assert_resumed(await events(client, task_id, session_id), turns=2)


# ------------------------------------------------------------------------------------------ bursts


@pytest.mark.timeout(400)
async def test_a_burst_of_tasks_never_runs_more_sandboxes_than_the_cap_and_all_complete(tmp_path: Path):
    cap = 3
    tasks = 3 * cap  # three waves: every task but the first few waits for a slot
    async with (
        running_server(tmp_path, max_running=cap, max_starting=cap) as server,
        server.signed_in("alice") as client,
    ):
        # Nine tasks start at once on a shared 2-core machine: reads may wait.
        client.timeout = httpx.Timeout(60)
        root = server.settings.sandbox_root
        peak = 0
        sampling = True

        async def sample() -> None:
            nonlocal peak
            while sampling:
                count = len(await asyncio.to_thread(sandbox_processes, root, servers_only=True))
                peak = max(peak, count)
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        created = await asyncio.gather(*(create_task(client, prompt=f"Burst note {i}") for i in range(tasks)))
        ids = [c["taskId"] for c in created]
        saw_queued: dict[str, Any] = {}
        deadline = time.monotonic() + 360
        pending = set(ids)
        while pending:
            assert time.monotonic() < deadline, f"{len(pending)} tasks never finished"
            for task_id in list(pending):
                detail = await task_detail(client, task_id)
                if detail["status"] == "queued":
                    saw_queued = detail
                if idle_session(detail):
                    pending.discard(task_id)
                assert detail["status"] != "error", detail
            await asyncio.sleep(0.2)
        sampling = False
        await sampler
        assert peak <= cap, f"{peak} sandbox-agent servers ran at once; the cap is {cap}"
        assert peak >= 1
        assert saw_queued, "no task ever showed the queued state"
        queue = saw_queued["sandboxQueue"]
        assert queue["position"] >= 1
        assert "sandbox" in queue["reason"]


async def queued_behind_a_running_task(client: httpx.AsyncClient) -> tuple[dict[str, Any], dict[str, Any]]:
    """On a server with one sandbox slot: a task whose turn holds it, then one waiting for it; the
    waiting task (as created) and its detail once it shows `queued`."""
    first = await create_task(client, prompt="A slow note that holds the only slot")
    await wait_task(client, first["taskId"], lambda d: d["sessions"][0]["status"] == "running")
    second = await create_task(client, prompt="Waiting for a slot")
    return second, await wait_task(client, second["taskId"], lambda d: d["status"] == "queued")


async def test_a_task_queued_for_a_sandbox_still_starts_after_a_restart(tmp_path: Path):
    async with (
        running_server(tmp_path, max_running=1) as server,
        server.signed_in("alice") as client,
    ):
        second, detail = await queued_behind_a_running_task(client)
        assert detail["sandboxQueue"]["position"] == 1
        assert "1 of 1 running" in detail["sandboxQueue"]["reason"]
    # Nobody touches the second task after the restart (the organization's summaries are read, which
    # never wakes a task): it must start on its own.
    async with running_server(tmp_path, max_running=1) as server, server.signed_in("alice") as client:
        deadline = time.monotonic() + 90
        while True:
            org = (await client.get("/v1/organizations/acme")).json()
            summary = next(t for t in org["taskSummaries"] if t["taskId"] == second["taskId"])
            if summary["status"] == "idle":
                break
            assert time.monotonic() < deadline, summary
            await asyncio.sleep(0.2)
        detail = await task_detail(client, second["taskId"])
        assert idle_session(detail), detail
        assert detail["sandboxQueue"] is None
        log = await events(client, second["taskId"], second["sessionId"])
        assert [e for e in log if e["event"] == "turnEnded"]


async def test_a_turn_cut_short_by_a_restart_ends_without_anyone_reading_the_task(tmp_path: Path):
    """A running turn is a job, not a queued command: after a restart the host's recovery must still
    wake its task, which reports the turn interrupted. It stayed "running" until someone happened to
    read the task (the organization's summaries, read here, never wake a task)."""
    async with (
        running_server(tmp_path) as server,
        server.signed_in("alice") as client,
    ):
        created = await create_task(client, prompt="A slow note")
        await wait_task(client, created["taskId"], lambda d: d["sessions"][0]["status"] == "running")
    async with running_server(tmp_path) as server, server.signed_in("alice") as client:
        deadline = time.monotonic() + 60
        while True:
            org = (await client.get("/v1/organizations/acme")).json()
            summary = next(t for t in org["taskSummaries"] if t["taskId"] == created["taskId"])
            if summary["status"] != "running":
                break
            assert time.monotonic() < deadline, f"still {summary['status']} 60 s after the restart"
            await asyncio.sleep(0.2)
        log = await events(client, created["taskId"], created["sessionId"])
        ends = [e for e in log if e["event"] in ("turnEnded", "turnFailed", "turnCancelled")]
        assert [e["event"] for e in ends] == ["turnFailed"], ends
        assert "restart" in ends[0]["data"]["error"]


async def test_after_a_restart_a_dead_turns_permission_request_is_withdrawn_and_a_stopped_turn_cancelled(
    tmp_path: Path,
):
    """The turn a restart cut short while it waited for a permission leaves no question behind
    (answering it is a 409, not a 202 recorded for a turn nobody runs), and a turn whose Stop had
    been acknowledged ends cancelled, as the user asked, not failed with "send the message again"."""
    async with running_server(tmp_path) as server, server.signed_in("alice") as client:
        asking = await create_task(client, prompt="permission please edit")
        await wait_task(client, asking["taskId"], lambda d: d["sessions"][0]["pendingPermissions"])
        stopped = await create_task(client, prompt="A slow note")
        await wait_task(client, stopped["taskId"], lambda d: d["sessions"][0]["status"] == "running")
        path = server.runtime.host("task", 0).path_for(f"acme:{stopped['taskId']}")
    # What an acknowledged Stop writes, with the crash before the turn could end: the flag alone.
    with sqlite3.connect(path) as db:
        assert db.execute("UPDATE messages SET stop_requested_at = 1 WHERE status = 'running'").rowcount == 1
    async with running_server(tmp_path) as server, server.signed_in("alice") as client:
        asked = await wait_task(client, asking["taskId"], lambda d: d["sessions"][0]["status"] != "running")
        base = f"/v1/organizations/acme/tasks/{asking['taskId']}/sessions/{asking['sessionId']}"
        answer = await client.post(f"{base}/permissions/0", json={"optionId": "allow"})
        ended = await wait_task(client, stopped["taskId"], lambda d: d["sessions"][0]["status"] != "running")
        log = await events(client, stopped["taskId"], stopped["sessionId"])
        asked_log = await events(client, asking["taskId"], asking["sessionId"])
    assert asked["sessions"][0]["pendingPermissions"] == []
    assert answer.status_code == 409, answer.text
    # The tool call that asked is closed too (the dashboard showed it running forever): failed, as
    # its turn (interrupted by the restart).
    updates = [e["data"] for e in asked_log if e["event"] == "agentUpdate"]
    asking_calls = {u["update"]["toolCallId"] for u in updates if u["kind"] == "tool_call"}
    assert asking_calls
    asked_ends = [e["event"] for e in asked_log if e["event"] in ("turnEnded", "turnFailed", "turnCancelled")]
    assert asked_ends == ["turnFailed"]
    by_foundry = [u["update"] for u in updates if u.get("origin") == "foundry"]
    closed = {u["toolCallId"] for u in by_foundry if u["status"] == "failed"}
    assert asking_calls <= closed, (asking_calls, closed)
    assert ended["sessions"][0]["status"] == "idle"
    assert ended["sessions"][0]["error"] is None
    ends = [e["event"] for e in log if e["event"] in ("turnEnded", "turnFailed", "turnCancelled")]
    assert ends == ["turnCancelled"]


async def test_archiving_during_a_turn_cancels_it_rather_than_failing_it(tmp_path: Path):
    async with running_server(tmp_path) as server, server.signed_in("alice") as client:
        created = await create_task(client, prompt="A slow note")
        task_id = created["taskId"]
        await wait_task(client, task_id, lambda d: d["sessions"][0]["status"] == "running")
        archived = await client.post(f"/v1/organizations/acme/tasks/{task_id}/archive", json={"force": True})
        assert archived.status_code == 200, archived.text
        deadline = time.monotonic() + 30
        while True:
            log = await events(client, task_id, created["sessionId"])
            ends = [e for e in log if e["event"] in ("turnEnded", "turnFailed", "turnCancelled")]
            if ends:
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # nothing else may follow
        log = await events(client, task_id, created["sessionId"])
        detail = await task_detail(client, task_id)
    ends = [e["event"] for e in log if e["event"] in ("turnEnded", "turnFailed", "turnCancelled")]
    assert ends == ["turnCancelled"], [e for e in log if e["event"] == "turnFailed"]
    assert detail["sessions"][0]["error"] is None


# ------------------------------------------------------------------------------------------ session/load


def use_loadable_agent(server: TaskServer) -> None:
    """Sandboxes started from now on run the test agent that supports ``session/load`` as ``mock``."""
    script = Path(__file__).with_name("loadable_agent.py")
    server.provider._launchers["mock"] = f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -I {script} "$@"\n'


async def test_an_agent_that_can_load_sessions_gets_its_session_back_after_a_crash(tmp_path: Path):
    async with running_server(tmp_path) as server, server.signed_in("alice") as client:
        use_loadable_agent(server)
        created = await create_task(client, prompt="Remember this")
        task_id, session_id = created["taskId"], created["sessionId"]
        await wait_task(client, task_id, idle_session)
        pid = server.provider.process_id(task_id)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await wait_task(client, task_id, lambda d: d["sandboxError"] is not None)

        detail = await send_and_settle(client, task_id, session_id, "And this")
        assert detail["sessions"][0]["status"] == "idle", detail["sessions"][0]
        log = await events(client, task_id, session_id)
        restarted = [e for e in log if e["event"] == "agentRestarted"]
        assert [e["data"] for e in restarted] == [
            {"loaded": True, "text": "agent restarted; earlier context was restored"}
        ]
        assert len([e for e in log if e["event"] == "turnEnded"]) == 2
        # The history the agent replayed while loading is not recorded a second time.
        kinds = [e["data"].get("kind") for e in log if e["event"] == "agentUpdate"]
        assert "user_message_chunk" not in kinds


async def test_archiving_a_task_that_waits_for_a_sandbox_records_no_error(tmp_path: Path):
    """Its provisioning ends when the archive destroys the sandbox it waited for: the task's history
    says it was archived, not that something failed."""
    async with (
        running_server(tmp_path, max_running=1) as server,
        server.signed_in("alice") as client,
    ):
        second, _ = await queued_behind_a_running_task(client)
        task_id = second["taskId"]
        # Found by the status the list shows it with (the list follows the task a moment later).
        deadline = time.monotonic() + 20
        while True:
            listed = await client.get("/v1/organizations/acme/tasks", params={"status": "queued"})
            assert listed.status_code == 200, listed.text
            if [t["taskId"] for t in listed.json()["tasks"]] == [task_id]:
                break
            assert time.monotonic() < deadline, listed.json()
            await asyncio.sleep(0.2)
        archived = await client.post(f"/v1/organizations/acme/tasks/{task_id}/archive", json={"force": True})
        assert archived.status_code == 200, archived.text
        await asyncio.sleep(3)  # the provisioning job notices and ends
        audit = (await client.get("/v1/organizations/acme/audit-log", params={"taskId": task_id})).json()
        kinds = [e["kind"] for e in audit]
        assert "task.archive" in kinds
        assert "task.error" not in kinds, audit
