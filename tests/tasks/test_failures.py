"""Crashes and missing pieces: each one shows on the task with its reason, and the next message
restarts cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import pytest

from foundry.demo_agent import NOTES_FILE
from foundry.drivers.sandbox import liveness
from tests.tasks.conftest import (
    TaskServer,
    create_task,
    events,
    idle_session,
    running_server,
    task_detail,
    wait_summary,
    wait_task,
)


def messages_url(task_id: str, session_id: str) -> str:
    return f"/v1/organizations/acme/tasks/{task_id}/sessions/{session_id}/messages"


def demo_agent_pids(workdir: Path) -> list[int]:
    """Demo agent processes working in this sandbox (their cwd is its checkout)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if Path(os.readlink(entry / "cwd")) != workdir:
                continue
            if b"foundry.demo_agent" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


async def test_sandbox_agent_killed_mid_turn_errors_the_task_and_the_next_message_restarts_it(
    tasks_server: TaskServer,
):
    async with tasks_server.signed_in("alice") as client, tasks_server.websocket(client) as ws:
        created = await create_task(client, prompt="A slow first note")
        task_id, session_id = created["taskId"], created["sessionId"]
        await ws.subscribe(f"session:acme:{task_id}:{session_id}")
        await ws.until(
            lambda f: f.get("event") == "agentUpdate" and f["data"]["kind"] == "agent_message_chunk"
        )
        pid = tasks_server.provider.process_id(task_id)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

        detail = await wait_task(client, task_id, lambda d: d["status"] == "error" and d["sandboxError"])
        assert "killed by SIGKILL" in detail["error"]
        assert "send a message to restart" in detail["error"]
        detail = await wait_task(client, task_id, lambda d: d["sessions"][0]["status"] == "error")
        log = await events(client, task_id, session_id)
        assert any(e["event"] == "turnFailed" for e in log)
        await wait_summary(client, task_id, lambda row: row["status"] == "error")

        response = await client.post(messages_url(task_id, session_id), json={"text": "After the crash"})
        assert response.status_code == 202
        detail = await wait_task(client, task_id, idle_session)
        assert detail["error"] is None
        assert detail["sandboxError"] is None
        assert tasks_server.provider.process_id(task_id) not in (None, pid)
        # The checkout survived the crash; the new agent edited it.
        notes = (Path(tasks_server.provider.sandbox_dir(task_id)) / "repo" / NOTES_FILE).read_text()
        assert "- After the crash" in notes
        audit = (await client.get("/v1/organizations/acme/audit-log", params={"taskId": task_id})).json()
        assert {"task.error", "task.sandbox_restarted"} <= {e["kind"] for e in audit}


async def test_messages_queued_behind_a_turn_whose_sandbox_dies_still_run(tasks_server: TaskServer):
    """Acknowledged messages waiting behind the running turn run once the sandbox is restarted,
    without the user having to send anything else."""
    async with tasks_server.signed_in("alice") as client, tasks_server.websocket(client) as ws:
        created = await create_task(client, prompt="A slow note before the crash")
        task_id, session_id = created["taskId"], created["sessionId"]
        await ws.subscribe(f"session:acme:{task_id}:{session_id}")
        await ws.until(
            lambda f: f.get("event") == "agentUpdate" and f["data"]["kind"] == "agent_message_chunk"
        )
        waiting = [f"Queued note {n}" for n in range(3)]
        for text in waiting:
            response = await client.post(messages_url(task_id, session_id), json={"text": text})
            assert response.status_code == 202, response.text
        pid = tasks_server.provider.process_id(task_id)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

        detail = await wait_task(
            client,
            task_id,
            lambda d: idle_session(d) and d["sessions"][0]["queuedMessages"] == 0,
        )
        assert tasks_server.provider.process_id(task_id) not in (None, pid)
        log = await events(client, task_id, session_id)
        ids = {e["data"]["text"]: e["data"]["messageId"] for e in log if e["event"] == "userMessage"}
        ended = [e["data"]["messageId"] for e in log if e["event"] == "turnEnded"]
        # Compact, so a failure shows the whole end of the transcript and the session as it was read.
        tail = [
            (e["seq"], e["event"], e["data"].get("messageId") or e["data"].get("kind")) for e in log[-30:]
        ]
        assert [ids[t] for t in waiting] == ended[-3:], (tail, detail["sessions"])
        # The turn the crash broke says so in words, not as a transport exception with a URL.
        failed = [e["data"]["error"] for e in log if e["event"] == "turnFailed"]
        assert failed, tail
        assert all("SandboxError" not in f and "http://" not in f for f in failed), failed
        notes = (Path(tasks_server.provider.sandbox_dir(task_id)) / "repo" / NOTES_FILE).read_text()
        assert all(f"- {text}" in notes for text in waiting), notes
        assert detail["sandboxError"] is None


async def test_agent_process_killed_mid_turn_errors_the_session_and_a_new_agent_takes_over(
    tasks_server: TaskServer,
):
    async with tasks_server.signed_in("alice") as client, tasks_server.websocket(client) as ws:
        created = await create_task(client, prompt="Another slow note")
        task_id, session_id = created["taskId"], created["sessionId"]
        await ws.subscribe(f"session:acme:{task_id}:{session_id}")
        await ws.until(
            lambda f: f.get("event") == "agentUpdate" and f["data"]["kind"] == "agent_message_chunk"
        )
        workdir = Path(tasks_server.provider.sandbox_dir(task_id)) / "repo"
        [agent_pid] = demo_agent_pids(workdir)
        os.kill(agent_pid, signal.SIGKILL)

        failed = await ws.until(lambda f: f.get("event") == "turnFailed")
        assert "agent process exited unexpectedly" in failed["data"]["error"]
        detail = await wait_task(client, task_id, lambda d: d["sessions"][0]["status"] == "error")
        assert detail["sandboxError"] is None  # only the agent died, not the sandbox

        response = await client.post(messages_url(task_id, session_id), json={"text": "Start over"})
        assert response.status_code == 202
        await wait_task(client, task_id, idle_session)
        assert demo_agent_pids(workdir)
        assert agent_pid not in demo_agent_pids(workdir)


async def test_an_agent_that_died_while_idle_is_replaced_and_the_next_message_just_works(
    tasks_server: TaskServer,
):
    """Nobody was talking to the agent when it died: the user's next message must not be the one
    that finds out and fails. It gets a new agent, with a note that earlier context is gone."""
    async with tasks_server.signed_in("alice") as client:
        created = await create_task(client, prompt="A first note")
        task_id, session_id = created["taskId"], created["sessionId"]
        await wait_task(client, task_id, idle_session)
        workdir = Path(tasks_server.provider.sandbox_dir(task_id)) / "repo"
        [agent_pid] = demo_agent_pids(workdir)
        os.kill(agent_pid, signal.SIGKILL)
        await asyncio.sleep(0.5)  # the agent is gone before anyone writes to it

        response = await client.post(messages_url(task_id, session_id), json={"text": "A second note"})
        assert response.status_code == 202
        detail = await wait_task(
            client, task_id, lambda d: idle_session(d) or d["sessions"][0]["status"] == "error"
        )
        log = await events(client, task_id, session_id)
        ends = [e["event"] for e in log if e["event"] in ("turnEnded", "turnFailed")]
        assert ends == ["turnEnded", "turnEnded"], [e for e in log if e["event"] == "turnFailed"]
        assert detail["sessions"][0]["status"] == "idle"
        assert agent_pid not in demo_agent_pids(workdir)


async def test_missing_sandbox_agent_binary_is_named_by_readyz_and_the_task(tmp_path: Path):
    missing = str(tmp_path / "no-such-sandbox-agent")
    async with running_server(tmp_path, binary=missing) as server, server.signed_in("alice") as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        check = ready.json()["checks"]["sandboxAgent"]
        assert check["ok"] is False
        assert "scripts/bootstrap.sh" in check["detail"]

        created = await create_task(client, prompt="Never runs")
        detail = await wait_task(client, created["taskId"], lambda d: d["status"] == "error")
        assert "could not start the sandbox" in detail["error"]
        assert "scripts/bootstrap.sh" in detail["error"]
        assert detail["provisioning"]["state"] == "error"
        # The prompt is still queued, not lost: it runs once the sandbox can start.
        assert detail["sessions"][0]["queuedMessages"] == 1
        detail = await task_detail(client, created["taskId"])
        assert detail["status"] == "error"


async def test_task_host_restart_mid_turn_reports_the_interrupted_turn_and_carries_on(
    tasks_server: TaskServer,
):
    async with tasks_server.signed_in("alice") as client:
        async with tasks_server.websocket(client) as ws:
            created = await create_task(client, prompt="A slow note before the restart")
            task_id, session_id = created["taskId"], created["sessionId"]
            await ws.subscribe(f"session:acme:{task_id}:{session_id}")
            await ws.until(
                lambda f: f.get("event") == "agentUpdate" and f["data"]["kind"] == "agent_message_chunk"
            )
        workdir = Path(tasks_server.provider.sandbox_dir(task_id)) / "repo"
        [old_agent] = demo_agent_pids(workdir)
        # The task's host goes away with its jobs (as a Ray host restart would); state is on disk.
        await tasks_server.runtime.restart_host("task", 0)

        detail = await wait_task(client, task_id, lambda d: d["sessions"][0]["status"] == "error")
        assert "interrupted by a server restart" in detail["sessions"][0]["error"]
        log = await events(client, task_id, session_id)
        assert log[-2]["event"] == "turnFailed"
        assert log[-1]["event"] == "sessionStatus"
        response = await client.post(messages_url(task_id, session_id), json={"text": "Resume work"})
        assert response.status_code == 202
        await wait_task(client, task_id, idle_session)
        # The interrupted agent was shut down; one new agent serves the session.
        for _ in range(100):
            if old_agent not in demo_agent_pids(workdir):
                break
            await asyncio.sleep(0.05)
        assert old_agent not in demo_agent_pids(workdir)
        notes = (workdir / NOTES_FILE).read_text()
        assert "- Resume work" in notes
        assert "before the restart" not in notes


async def test_a_hung_sandbox_is_replaced_and_the_error_it_left_clears_once_the_diff_reads(
    tasks_server: TaskServer, monkeypatch: pytest.MonkeyPatch
):
    # A stopped (hung) sandbox-agent is stopped like a crash after its health checks go unanswered
    # (30 s in production); the diff that was waiting on it fails and says so on the task. That error
    # used to stay on the task for good, through later turns, diffs and restarts.
    monkeypatch.setattr(liveness, "CHECK_INTERVAL_S", 0.2)
    monkeypatch.setattr(liveness, "ANSWER_TIMEOUT_S", 0.5)
    monkeypatch.setattr(liveness, "HUNG_AFTER_S", 1.5)
    async with tasks_server.signed_in("alice") as client:
        created = await create_task(client, prompt="A note to read back")
        task_id = created["taskId"]
        await wait_task(client, task_id, idle_session)
        pid = tasks_server.provider.process_id(task_id)
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            failed = await client.get(f"/v1/organizations/acme/tasks/{task_id}/diff", timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):  # killed as hung meanwhile
                os.kill(pid, signal.SIGCONT)
        assert failed.status_code == 502, failed.text
        # The task says why (its sandbox stopped answering) and what failed meanwhile.
        detail = await wait_task(client, task_id, lambda d: "stopped answering" in str(d), timeout=15)
        assert detail["lastError"].startswith("reading the diff failed")
        # The next look at the changes starts the sandbox again, reads them, and the error is over.
        diff = await client.get(f"/v1/organizations/acme/tasks/{task_id}/diff", timeout=60)
        assert diff.status_code == 200, diff.text
        assert [f["path"] for f in diff.json()["files"]] == [NOTES_FILE]
        assert (await task_detail(client, task_id))["lastError"] is None
        assert tasks_server.provider.process_id(task_id) not in (None, pid)
