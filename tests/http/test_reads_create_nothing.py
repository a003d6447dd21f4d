"""Reads and subscriptions never create state: a task the organization does not list answers
not_found (HTTP 404, or an error frame) and no database file appears; a virtual pull-request task is
readable from the organization's row without its actor being created."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import websockets

from tests.http.conftest import Server

N = 50


def databases(data_dir: Path) -> set[Path]:
    return set(data_dir.rglob("*.sqlite3"))


def made_up_ids(n: int) -> list[str]:
    return [uuid.uuid4().hex for _ in range(n)]


async def frames_until_errors(ws: Any, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while len(errors) < count:
        remaining = deadline - asyncio.get_running_loop().time()
        assert remaining > 0, f"{len(errors)} error frames of {count}; other frames: {others[:5]}"
        frame = json.loads(await asyncio.wait_for(ws.recv(), remaining))
        (errors if frame.get("op") == "error" else others).append(frame)
    assert others == [], others
    return errors


async def test_made_up_tasks_and_sessions_are_not_found_and_create_no_file(server: Server) -> None:
    async with server.signed_in("alice") as alice:
        assert (await alice.get("/v1/organizations/acme")).status_code == 200
        before = databases(server.settings.data_dir)

        url = server.url.replace("http://", "ws://") + "/v1/realtime"
        cookie = f"foundry_session={alice.cookies['foundry_session']}"
        async with websockets.connect(url, additional_headers={"Cookie": cookie}) as ws:
            topics = [f"task:acme:{t}" for t in made_up_ids(N)]
            topics += [f"session:acme:{t}:session-{uuid.uuid4().hex}" for t in made_up_ids(N)]
            for topic in topics:
                await ws.send(json.dumps({"op": "subscribe", "topic": topic}))
            errors = await frames_until_errors(ws, len(topics))
            assert sorted(e["topic"] for e in errors) == sorted(topics)
            assert {e["error"] for e in errors} == {"not_found"}
            # The socket is still fine.
            await ws.send(json.dumps({"op": "ping"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"op": "pong"}

        base = "/v1/organizations/acme/tasks"
        for task_id in made_up_ids(N):
            session = f"session-{uuid.uuid4().hex}"
            for method, path in (
                ("GET", f"{base}/{task_id}"),
                ("GET", f"{base}/{task_id}/diff"),
                ("GET", f"{base}/{task_id}/files"),
                ("GET", f"{base}/{task_id}/sessions/{session}/events"),
                ("POST", f"{base}/{task_id}/sessions/{session}/read"),
                ("POST", f"{base}/{task_id}/archive"),
            ):
                response = await alice.request(method, path)
                assert response.status_code == 404, (method, path, response.text)
                assert response.json()["error"] == "not_found"
        assert databases(server.settings.data_dir) - before == set()


async def test_a_virtual_pull_request_task_is_read_without_creating_it(server: Server) -> None:
    async with server.signed_in("alice") as alice:
        virtual = []
        for _ in range(250):
            summaries = (await alice.get("/v1/organizations/acme")).json()["taskSummaries"]
            virtual = [t for t in summaries if t["isVirtual"]]
            if virtual:
                break
            await asyncio.sleep(0.02)
        assert virtual, "the seeded open pull requests appear as virtual tasks"
        task = virtual[0]
        before = databases(server.settings.data_dir)

        detail = await alice.get(f"/v1/organizations/acme/tasks/{task['taskId']}")
        assert detail.status_code == 200, detail.text
        body = detail.json()
        assert (body["taskId"], body["title"], body["branch"]) == (
            task["taskId"],
            task["title"],
            task["branch"],
        )
        assert body["pullRequest"]["number"] == task["pullRequest"]["number"]
        assert body["sessions"] == []
        diff = await alice.get(f"/v1/organizations/acme/tasks/{task['taskId']}/diff")
        assert diff.status_code == 409
        assert "nobody has opened a session on yet" in diff.json()["detail"]
        events = await alice.get(f"/v1/organizations/acme/tasks/{task['taskId']}/sessions/session-x/events")
        assert events.status_code == 404

        url = server.url.replace("http://", "ws://") + "/v1/realtime"
        cookie = f"foundry_session={alice.cookies['foundry_session']}"
        async with websockets.connect(url, additional_headers={"Cookie": cookie}) as ws:
            await ws.send(json.dumps({"op": "subscribe", "topic": f"task:acme:{task['taskId']}"}))
            (error,) = await frames_until_errors(ws, 1)
            assert error["error"] == "conflict"
            assert "organization:acme" in error["detail"]
        assert databases(server.settings.data_dir) - before == set()
        # Still virtual: nothing materialized it.
        summaries = (await alice.get("/v1/organizations/acme")).json()["taskSummaries"]
        assert next(t for t in summaries if t["taskId"] == task["taskId"])["isVirtual"] is True


async def test_refused_writes_leave_a_virtual_pull_request_task_virtual_and_unowned(server: Server) -> None:
    """Only opening a session starts a pull request's task. Every other write is refused (404 for a
    session it does not have, 409 for the task itself) and creates nothing: no task actor, no owner,
    nothing materialized by a request that failed."""
    async with server.signed_in("alice") as alice:
        summaries: list[dict[str, Any]] = []
        for _ in range(250):
            summaries = (await alice.get("/v1/organizations/acme")).json()["taskSummaries"]
            if any(t["isVirtual"] for t in summaries):
                break
            await asyncio.sleep(0.02)
        task = next(t for t in summaries if t["isVirtual"])
        base = f"/v1/organizations/acme/tasks/{task['taskId']}"
        before = databases(server.settings.data_dir)
        session_writes = [
            ("POST", f"{base}/sessions/s-1/stop", None),
            ("POST", f"{base}/sessions/s-1/messages", {"text": "hi"}),
            ("PATCH", f"{base}/sessions/s-1", {"name": "n"}),
            ("DELETE", f"{base}/sessions/s-1", None),
            ("POST", f"{base}/sessions/s-1/permissions/r-1", {"optionId": "allow"}),
        ]
        for method, path, body in session_writes:
            answer = await alice.request(method, path, json=body)
            assert answer.status_code == 404, (path, answer.text)
            assert answer.json()["detail"] == "session 's-1' not found in this task"
        task_writes = [
            ("PATCH", base, {"title": "mine now"}),
            ("POST", f"{base}/archive", {"force": True}),
            ("POST", f"{base}/owner", {"userId": "gh-5001"}),
            ("POST", f"{base}/pull-request", {}),
        ]
        for method, path, body in task_writes:
            answer = await alice.request(method, path, json=body)
            assert answer.status_code == 409, (path, answer.text)
            assert "nobody has opened a session on yet" in answer.json()["detail"]
        row = next(
            t
            for t in (await alice.get("/v1/organizations/acme")).json()["taskSummaries"]
            if t["taskId"] == task["taskId"]
        )
    assert row["isVirtual"] is True
    assert row.get("ownerUserId") is None
    assert row["title"] == task["title"]
    assert databases(server.settings.data_dir) - before == set()
