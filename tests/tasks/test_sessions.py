"""Sessions: Stop cancels the running turn while other commands keep flowing, permission requests,
agent failures, rename and close (sandbox-agent's DELETE bug), queued messages."""

from __future__ import annotations

import asyncio
import time

from foundry.demo_agent import FAILURE_REASON, NOTES_FILE
from foundry.drivers.sandbox.client import SandboxAgentClient
from tests.tasks.conftest import (
    TaskServer,
    create_task,
    events,
    idle_session,
    task_detail,
    wait_summary,
    wait_task,
)


def base(task_id: str, session_id: str) -> str:
    return f"/v1/organizations/acme/tasks/{task_id}/sessions/{session_id}"


async def test_stop_cancels_the_running_turn_while_other_commands_flow(tasks_server: TaskServer):
    async with tasks_server.signed_in("alice") as client, tasks_server.websocket(client) as ws:
        created = await create_task(client, prompt="Take it slow please")
        task_id, session_id = created["taskId"], created["sessionId"]
        topic = f"session:acme:{task_id}:{session_id}"
        await ws.subscribe(topic)
        await ws.until(
            lambda f: f.get("event") == "agentUpdate" and f["data"]["kind"] == "agent_message_chunk"
        )
        detail = await task_detail(client, task_id)
        assert detail["status"] == "running"
        assert detail["sessions"][0]["thinkingSinceMs"] is not None

        # The task's loop is free during the turn: a rename and a queued message go through.
        started = time.monotonic()
        renamed = await client.patch(base(task_id, session_id), json={"name": "Slow one"})
        queued = await client.post(
            base(task_id, session_id) + "/messages", json={"text": "after the slow one"}
        )
        assert renamed.status_code == 200
        assert queued.status_code == 202
        assert queued.json()["queuePosition"] == 1
        assert time.monotonic() - started < 5  # never behind the ~10 s turn

        stop_started = time.monotonic()
        response = await client.post(base(task_id, session_id) + "/stop")
        assert response.status_code == 202, response.text
        assert response.json() == {"stopping": True, "droppedQueued": 1}
        ended = await ws.until(lambda f: f.get("event") in ("turnEnded", "turnFailed", "turnCancelled"))
        assert ended["event"] == "turnCancelled"
        assert ended["data"]["stopReason"] == "cancelled"
        assert "forced" not in ended["data"]  # ACP session/cancel, not a kill
        assert time.monotonic() - stop_started < 2  # the slow turn alone would take ~10 s

        detail = await wait_task(client, task_id, idle_session)
        session = detail["sessions"][0]
        assert session["name"] == "Slow one"
        assert session["queuedMessages"] == 0
        # Cancelled before editing: nothing changed in the checkout.
        diff = (await client.get(f"/v1/organizations/acme/tasks/{task_id}/diff")).json()
        assert diff["files"] == []
        # The same agent session keeps working after a Stop.
        response = await client.post(base(task_id, session_id) + "/messages", json={"text": "Quick note"})
        assert response.status_code == 202
        detail = await wait_task(
            client,
            task_id,
            lambda d: idle_session(d) and d["sessions"][0]["lastSeq"] > session["lastSeq"] + 3,
        )
        kinds = [e["event"] for e in await events(client, task_id, session_id)]
        assert kinds.count("turnCancelled") == 1
        assert kinds.count("turnEnded") == 1
        assert "stopRequested" in kinds
        assert "sessionRenamed" in kinds
        # ... and in the task's history, with who renamed it from what.
        for _ in range(100):
            audit = (await client.get("/v1/organizations/acme/audit-log", params={"taskId": task_id})).json()
            renames = [e for e in audit if e["kind"] == "task.session_renamed"]
            if renames:
                break
            await asyncio.sleep(0.05)
        assert [(e["payload"]["from"], e["payload"]["to"], e["actorUserId"]) for e in renames] == [
            ("Session 1", "Slow one", "gh-5001")
        ]


async def test_permission_request_is_an_event_answered_through_the_api(tasks_server: TaskServer):
    async with tasks_server.signed_in("alice") as client:
        created = await create_task(client, prompt="Edit with permission")
        task_id, session_id = created["taskId"], created["sessionId"]
        detail = await wait_task(client, task_id, lambda d: d["sessions"][0]["pendingPermissions"])
        [request] = detail["sessions"][0]["pendingPermissions"]
        log = await events(client, task_id, session_id)
        asked = next(e for e in log if e["event"] == "permissionRequested")
        assert asked["data"]["requestId"] == request["requestId"]
        assert [o["optionId"] for o in asked["data"]["options"]] == ["allow", "reject"]

        url = base(task_id, session_id) + f"/permissions/{request['requestId']}"
        bad = await client.post(url, json={"optionId": "maybe"})
        assert bad.status_code == 422
        assert "allow, reject" in bad.json()["detail"]
        missing = await client.post(
            base(task_id, session_id) + "/permissions/999", json={"optionId": "allow"}
        )
        assert missing.status_code == 404
        response = await client.post(url, json={"optionId": "allow"})
        assert response.status_code == 202, response.text
        again = await client.post(url, json={"optionId": "allow"})
        assert again.status_code == 409

        detail = await wait_task(client, task_id, idle_session)
        assert detail["sessions"][0]["pendingPermissions"] == []
        diff = (await client.get(f"/v1/organizations/acme/tasks/{task_id}/diff")).json()
        assert [f["path"] for f in diff["files"]] == [NOTES_FILE]
        kinds = [e["event"] for e in await events(client, task_id, session_id)]
        assert (
            kinds.index("permissionRequested") < kinds.index("permissionAnswered") < kinds.index("turnEnded")
        )


async def test_agent_failure_is_shown_and_the_next_message_works(tasks_server: TaskServer):
    async with tasks_server.signed_in("alice") as client:
        created = await create_task(client, prompt="Please fail loudly")
        task_id, session_id = created["taskId"], created["sessionId"]
        detail = await wait_task(client, task_id, lambda d: d["status"] == "error")
        assert FAILURE_REASON in detail["error"]
        assert detail["sessions"][0]["status"] == "error"
        assert FAILURE_REASON in detail["sessions"][0]["error"]
        log = await events(client, task_id, session_id)
        failed = next(e for e in log if e["event"] == "turnFailed")
        assert FAILURE_REASON in failed["data"]["error"]
        row = await wait_summary(client, task_id, lambda row: row["status"] == "error")
        assert FAILURE_REASON in row["error"]

        response = await client.post(base(task_id, session_id) + "/messages", json={"text": "Now succeed"})
        assert response.status_code == 202
        detail = await wait_task(client, task_id, idle_session)
        assert detail["error"] is None
        assert detail["sessions"][0]["error"] is None


async def test_sessions_open_rename_close_and_refuse_messages_once_closed(tasks_server: TaskServer):
    async with tasks_server.signed_in("alice") as client:
        created = await create_task(client, prompt="First session work")
        task_id = created["taskId"]
        await wait_task(client, task_id, idle_session)
        response = await client.post(
            f"/v1/organizations/acme/tasks/{task_id}/sessions", json={"name": "Second", "model": "demo"}
        )
        assert response.status_code == 201, response.text
        second = response.json()
        assert second["name"] == "Second"
        assert second["agent"] == "mock"
        detail = await wait_task(client, task_id, lambda d: idle_session(d, 1))
        assert [s["name"] for s in detail["sessions"]] == ["Session 1", "Second"]
        assert detail["activeSessionId"] == second["sessionId"]

        # Close while the agent runs: sandbox-agent 0.4.2's DELETE would hang; the route does not.
        busy = await client.post(base(task_id, second["sessionId"]) + "/messages", json={"text": "slow work"})
        assert busy.status_code == 202
        await wait_task(client, task_id, lambda d: d["sessions"][1]["status"] == "running")
        started = time.monotonic()
        closed = await client.delete(base(task_id, second["sessionId"]))
        assert closed.status_code == 200, closed.text
        assert time.monotonic() - started < 5  # sandbox-agent's own DELETE would hang
        refused = await client.post(base(task_id, second["sessionId"]) + "/messages", json={"text": "hello?"})
        assert refused.status_code == 409
        assert "closed" in refused.json()["detail"]
        detail = await wait_task(client, task_id, idle_session)
        assert detail["sessions"][1]["status"] == "closed"
        # Its agent process is gone from the sandbox (the DELETE workaround confirmed it).
        status = await tasks_server.provider.status(task_id)
        async with SandboxAgentClient(status.endpoint) as sandbox:
            for _ in range(200):
                servers = [s["serverId"] for s in await sandbox.list_acp_servers()]
                if not any(s.startswith(second["sessionId"]) for s in servers):
                    break
                await asyncio.sleep(0.05)
            assert any(s.startswith(created["sessionId"]) for s in servers), servers
            assert not any(s.startswith(second["sessionId"]) for s in servers), servers
        # The close is recorded at once; the running turn then ends (cancelled) in the background,
        # after whatever output the agent sent before the cancel reached it.
        ends = ("sessionClosed", "turnEnded", "sessionStatus", "turnFailed", "turnCancelled")
        for _ in range(200):
            log = await events(client, task_id, second["sessionId"])
            if log[-1]["event"] in ends:
                break
            await asyncio.sleep(0.05)
        assert log[-1]["event"] in ends, [(e["seq"], e["event"], str(e["data"])[:80]) for e in log[-8:]]
        assert "sessionClosed" in [e["event"] for e in log]
        # Unknown sessions and bad bodies.
        assert (
            await client.post(base(task_id, "session-nope") + "/messages", json={"text": "x"})
        ).status_code == 404
        assert (
            await client.post(base(task_id, created["sessionId"]) + "/messages", json={"text": ""})
        ).status_code == 422
        unknown_model = await client.post(
            f"/v1/organizations/acme/tasks/{task_id}/sessions", json={"model": "gpt-0"}
        )
        assert unknown_model.status_code == 422
        assert "unknown model" in unknown_model.json()["detail"]


async def test_an_agent_the_sandbox_lacks_is_named_with_the_installed_ones(tasks_server: TaskServer):
    async with tasks_server.signed_in("alice") as client:
        created = await create_task(client, prompt="Warm up")
        task_id = created["taskId"]
        await wait_task(client, task_id, idle_session)
        response = await client.post(
            f"/v1/organizations/acme/tasks/{task_id}/sessions", json={"model": "sonnet"}
        )
        assert response.status_code == 201, response.text
        assert response.json()["agent"] == "claude"
        detail = await wait_task(client, task_id, lambda d: d["sessions"][1]["status"] == "error")
        error = detail["sessions"][1]["error"]
        assert "'claude' is not installed in this sandbox (installed: mock)" in error


async def test_writes_sent_again_with_their_idempotency_key_apply_once(tasks_server: TaskServer):
    """An answer that never came (a dropped connection, a 503 while the node was away) leaves the
    sender not knowing; sending again with the same key must not make the agent run it twice."""
    async with tasks_server.signed_in("alice") as client, tasks_server.signed_in("carol") as carol:
        created = await create_task(client, prompt="First note")
        task_id, session_id = created["taskId"], created["sessionId"]
        await wait_task(client, task_id, idle_session)
        url = base(task_id, session_id) + "/messages"
        headers = {"Idempotency-Key": "3f1c2a9e-retry-me"}
        answers = [await client.post(url, json={"text": "Only once"}, headers=headers) for _ in range(3)]
        assert [a.status_code for a in answers] == [202] * 3, [a.text for a in answers]
        assert answers[1].json() == answers[0].json() == answers[2].json()
        # Another person's same key, and another key, are other messages.
        other = await carol.post(url, json={"text": "Carol's own"}, headers=headers)
        fresh = await client.post(url, json={"text": "A new one"}, headers={"Idempotency-Key": "another"})
        assert other.status_code == fresh.status_code == 202
        assert other.json() != answers[0].json()
        bad = await client.post(url, json={"text": "x"}, headers={"Idempotency-Key": "has spaces in it"})
        assert bad.status_code == 422
        assert "Idempotency-Key" in bad.text
        await wait_task(
            client, task_id, lambda d: idle_session(d) and d["sessions"][0]["queuedMessages"] == 0
        )
        texts = [
            e["data"]["text"]
            for e in await events(client, task_id, session_id)
            if e["event"] == "userMessage"
        ]
        assert texts.count("Only once") == 1, texts
        assert "Carol's own" in texts
        assert "A new one" in texts
        # Opening a session takes a key the same way.
        opened = [
            await client.post(
                f"/v1/organizations/acme/tasks/{task_id}/sessions",
                json={"name": "Once"},
                headers={"Idempotency-Key": "open-it-once"},
            )
            for _ in range(2)
        ]
        assert [o.status_code for o in opened] == [201, 201], [o.text for o in opened]
        assert opened[0].json()["sessionId"] == opened[1].json()["sessionId"]
        detail = await task_detail(client, task_id)
        assert [s["name"] for s in detail["sessions"]].count("Once") == 1
        # And creating a task: a retried create (its answer lost, or a 503) makes one task.
        new = {"repoId": "910001", "prompt": "Create me once"}
        made = [
            await client.post("/v1/organizations/acme/tasks", json=new, headers={"Idempotency-Key": "task-1"})
            for _ in range(2)
        ]
        assert [m.status_code for m in made] == [201, 201], [m.text for m in made]
        assert made[0].json() == made[1].json()
        another = await client.post(
            "/v1/organizations/acme/tasks", json=new, headers={"Idempotency-Key": "task-2"}
        )
        assert another.status_code == 201
        assert another.json()["taskId"] != made[0].json()["taskId"]
        listed = (await client.get("/v1/organizations/acme/tasks", params={"q": "Create me once"})).json()
        assert sorted(t["taskId"] for t in listed["tasks"]) == sorted(
            {made[0].json()["taskId"], another.json()["taskId"]}
        )
