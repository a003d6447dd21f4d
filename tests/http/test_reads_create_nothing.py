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
    """A write that can only fail on a virtual pull-request task (it has no session yet; its pull
    request exists) is refused and creates nothing: no task actor, no owner. The first write that
    succeeds (renaming it, here) is what makes it a task, owned by whoever did it."""
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
        refused = [
            ("POST", f"{base}/pull-request", {}, 409),
            ("POST", f"{base}/owner", {"userId": "gh-nobody"}, 422),
            ("PATCH", base, {"title": "   "}, 422),
            ("POST", f"{base}/sessions", {"prompt": "review", "agent": "no-such-agent"}, 422),
            ("POST", f"{base}/sessions", {"model": "no-such-model"}, 422),
        ]
        for method, path, body, status in refused:
            answer = await alice.request(method, path, json=body)
            assert answer.status_code == status, (path, answer.text)

        async def row() -> dict[str, Any]:
            listed = (await alice.get("/v1/organizations/acme")).json()["taskSummaries"]
            return dict(next(t for t in listed if t["taskId"] == task["taskId"]))

        still = await row()
        assert databases(server.settings.data_dir) - before == set()
        renamed = await alice.patch(base, json={"title": "Review the launch PR"})
        for _ in range(200):  # the task pushes its new summary to the organization just after
            now = await row()
            if now["title"] == "Review the launch PR":
                break
            await asyncio.sleep(0.05)
    assert still["isVirtual"] is True
    assert still.get("ownerUserId") is None
    assert still["title"] == task["title"]
    assert renamed.status_code == 200, renamed.text
    assert now["isVirtual"] is False
    assert now["title"] == "Review the launch PR"
