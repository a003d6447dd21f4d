"""A task the organization lists is always readable, even before its actor has received
``initialize`` (after a burst of creations that takes a while): detail and realtime come from the
organization's row with status ``provisioning``, diff/files answer 409 "still provisioning", and
archiving works — the later ``initialize`` then sets the task up archived and starts no sandbox."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from actors.task.naming import task_key
from tests.github.conftest import eventually
from tests.tasks.conftest import TaskServer, create_task, running_server, task_detail

TASKS = 6


@pytest.fixture
async def quiet_server(tmp_path: Path) -> AsyncIterator[TaskServer]:
    async with running_server(tmp_path, binary=str(tmp_path / "absent")) as server:
        yield server


@pytest.fixture
def held_initialize(quiet_server: TaskServer, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Holds every ``initialize`` the organization's outbox delivers until the event is set, as a
    busy task host would."""
    runtime = quiet_server.runtime
    original = runtime._send
    released = asyncio.Event()

    async def held(role: str, key: str, name: str, body: Any, **kwargs: Any) -> tuple[str, Any]:
        if role == "task" and name == "initialize":
            await released.wait()
        return await original(role, key, name, body, **kwargs)

    monkeypatch.setattr(runtime, "_send", held)
    return released


async def test_listed_tasks_are_readable_and_archivable_before_they_initialize(
    quiet_server: TaskServer, held_initialize: asyncio.Event
) -> None:
    base = "/v1/organizations/acme/tasks"
    async with quiet_server.signed_in("carol") as carol, quiet_server.websocket(carol) as ws:
        created = [await create_task(carol, prompt=f"Burst task {i}") for i in range(TASKS)]
        for task in created:
            detail = await task_detail(carol, task["taskId"])
            assert detail["status"] == "provisioning", detail
            assert (detail["title"], detail["branch"]) == (task["title"], task["branchName"])
            assert [s["sessionId"] for s in detail["sessions"]] == [task["sessionId"]]
            for sub in ("diff", "files"):
                response = await carol.get(f"{base}/{task['taskId']}/{sub}")
                assert response.status_code == 409, response.text
                assert "is still provisioning" in response.json()["detail"]
            page = await carol.get(f"{base}/{task['taskId']}/sessions/{task['sessionId']}/events")
            assert page.status_code == 200, page.text
            assert (page.json()["events"], page.json()["more"]) == ([], False)

        # Realtime: the task topic answers with a provisioning snapshot, the first session topic
        # with an empty transcript; live events follow once the task initializes.
        watched = created[1]
        task_topic = f"task:acme:{watched['taskId']}"
        session_topic = f"session:acme:{watched['taskId']}:{watched['sessionId']}"
        await ws.subscribe(task_topic)
        snapshot = await ws.until(lambda f: f.get("topic") == task_topic and f.get("event") == "snapshot")
        assert snapshot["data"]["status"] == "provisioning"
        await ws.subscribe(session_topic)
        await ws.until(lambda f: f == {"op": "subscribed", "topic": session_topic})

        # Archive one while its initialize is held.
        archived = created[0]
        response = await carol.post(f"{base}/{archived['taskId']}/archive")
        assert response.status_code == 200, response.text
        assert response.json()["archived"] is True
        assert (await task_detail(carol, archived["taskId"]))["status"] == "archived"

        async def gone_from_the_list() -> bool:
            summaries = (await carol.get("/v1/organizations/acme")).json()["taskSummaries"]
            return archived["taskId"] not in {t["taskId"] for t in summaries}

        await eventually(gone_from_the_list, what="the archived task leaving the list")
        again = await carol.post(f"{base}/{archived['taskId']}/archive")
        assert again.status_code == 200
        assert again.json()["already"] is True

        held_initialize.set()

        async def initialized(task_id: str) -> dict[str, Any] | None:
            detail = await task_detail(carol, task_id)
            return None if detail.get("provisional") else detail

        late = await eventually(lambda: initialized(archived["taskId"]), timeout=30, what="initialize")
        assert late["status"] == "archived"
        assert late["sessions"] == []
        assert late["provisioning"]["state"] == "none"
        sandboxes = quiet_server.settings.data_dir / "sandbox"
        key = task_key("acme", archived["taskId"])
        assert not [p for p in sandboxes.rglob("*.sqlite3") if p.name == f"{key}.sqlite3"]

        # The others initialize and go on (their provisioning fails here: there is no sandbox binary).
        for task in created[1:]:
            await eventually(lambda t=task: initialized(t["taskId"]), timeout=30, what="initialize")
        live = await ws.until(
            lambda f: f.get("topic") == session_topic and f.get("event") == "sessionCreated"
        )
        assert live["seq"] == 1
        update = await ws.until(lambda f: f.get("topic") == task_topic and f.get("event") == "taskUpdated")
        assert update["seq"] == snapshot["seq"] + 1

        audit = (
            await carol.get("/v1/organizations/acme/audit-log", params={"taskId": archived["taskId"]})
        ).json()
        assert "task.archive" in {e["kind"] for e in audit}
