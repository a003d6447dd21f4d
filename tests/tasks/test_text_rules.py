"""One set of rules for text a person types, on every route that takes it: a value refused in one
place is refused everywhere (422 naming the field) and changes nothing; an accepted one is stored
cleaned the same way everywhere."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.tasks.conftest import ACME_ROCKET, TaskServer, create_task, running_server

#: Nothing to read: whitespace, zero-width spaces, byte order marks, direction marks, NUL.
EMPTY_TEXTS = [
    *("   ", "\t\n\r ", "\u200b", "\ufeff", "\u200e\u200f", "\u00a0\u3000", "\x00", " \x00 \u200b "),
    # Blank-looking letters and symbols, and marks with nothing to mark.
    *("\u3164", "\u2800", "\u034f", "\ufe0f", "\u0301", "\u3164\u200b\u2800"),
]
#: Control characters that have no place in a one-line title or name.
CONTROL_TEXTS = ["a\x00b", "\x1b[31mred", "bell\x07", "del\x7f", "nul at end\x00"]


@pytest.fixture
async def quiet_server(tmp_path: Path) -> AsyncIterator[TaskServer]:
    # Sandboxes cannot start (no binary): tasks are created and fail at once, cheaply.
    async with running_server(tmp_path, binary=str(tmp_path / "absent")) as server:
        yield server


def _refused(response: httpx.Response, field: str) -> None:
    assert response.status_code == 422, response.text
    assert response.json()["fields"] == [field], response.json()


async def _state(client: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    org = (await client.get("/v1/organizations/acme")).json()
    task = (await client.get(f"/v1/organizations/acme/tasks/{task_id}")).json()
    return {
        "tasks": sorted(t["taskId"] for t in org["taskSummaries"]),
        "displayName": org.get("displayName"),
        "title": task["title"],
        "sessions": [(s["sessionId"], s["name"], s.get("queuedMessages")) for s in task["sessions"]],
    }


async def test_prompts_and_messages_with_nothing_to_read_are_refused_everywhere(
    quiet_server: TaskServer,
) -> None:
    async with quiet_server.signed_in("alice") as alice:
        task = await create_task(alice)
        base = f"/v1/organizations/acme/tasks/{task['taskId']}"
        session = task["sessionId"]
        before = await _state(alice, task["taskId"])
        for text in EMPTY_TEXTS:
            _refused(
                await alice.post(
                    "/v1/organizations/acme/tasks", json={"repoId": ACME_ROCKET, "prompt": text}
                ),
                "prompt",
            )
            _refused(await alice.post(f"{base}/sessions", json={"prompt": text}), "prompt")
            _refused(await alice.post(f"{base}/sessions/{session}/messages", json={"text": text}), "text")
        # A NUL anywhere in a prompt is refused too; other characters of pasted output are kept.
        _refused(await alice.post(f"{base}/sessions/{session}/messages", json={"text": "ls\x00"}), "text")
        after = await _state(alice, task["taskId"])
        kept = await alice.post(
            f"{base}/sessions/{session}/messages", json={"text": "\x1b[32mok\x1b[0m\n\tdone"}
        )
    assert before == after
    assert kept.status_code == 202, kept.text


async def test_titles_and_names_follow_one_rule_wherever_they_are_set(quiet_server: TaskServer) -> None:
    async with quiet_server.signed_in("carol") as carol:
        task = await create_task(carol)
        base = f"/v1/organizations/acme/tasks/{task['taskId']}"
        session = task["sessionId"]
        before = await _state(carol, task["taskId"])
        for text in EMPTY_TEXTS + CONTROL_TEXTS:
            _refused(
                await carol.post(
                    "/v1/organizations/acme/tasks",
                    json={"repoId": ACME_ROCKET, "prompt": "go", "title": text},
                ),
                "title",
            )
            _refused(await carol.patch(base, json={"title": text}), "title")
            _refused(await carol.post(f"{base}/sessions", json={"name": text}), "name")
            _refused(await carol.patch(f"{base}/sessions/{session}", json={"name": text}), "name")
            _refused(
                await carol.patch("/v1/organizations/acme/settings", json={"displayName": text}),
                "displayName",
            )
            _refused(await carol.post(f"{base}/pull-request", json={"title": text}), "title")
        _refused(await carol.post(f"{base}/pull-request", json={"title": "ok", "body": "a\x00b"}), "body")
        after = await _state(carol, task["taskId"])
        # Accepted values are cleaned alike: runs of whitespace become one space.
        renamed = await carol.patch(base, json={"title": "  Launch \n\t plan  "})
        named = await carol.post(f"{base}/sessions", json={"name": " Review\u3000 notes "})
        org = await carol.patch("/v1/organizations/acme/settings", json={"displayName": "Acme\n Corp"})
    assert before == after
    assert renamed.json()["title"] == "Launch plan"
    assert named.status_code == 201, named.text
    assert org.status_code == 200, org.text
    assert org.json()["displayName"] == "Acme Corp"


async def test_credential_values_and_booleans_are_taken_as_typed(quiet_server: TaskServer) -> None:
    async with quiet_server.signed_in("carol") as carol:
        task = await create_task(carol)
        url = "/v1/organizations/acme/agent-credentials/GEMINI_API_KEY"
        for value in ["   ", "key\x1b[0m", "key\u200b", "\tkey"]:
            _refused(await carol.put(url, json={"value": value}), "value")
        listed = (await carol.get("/v1/organizations/acme/agent-credentials")).json()
        # "yes" and 1 are not booleans: the client is told, nothing is guessed.
        base = f"/v1/organizations/acme/tasks/{task['taskId']}"
        for flag in ["yes", 1, "true", None]:
            _refused(await carol.post(f"{base}/pull-request", json={"draft": flag}), "draft")
            _refused(await carol.post(f"{base}/archive", json={"force": flag}), "force")
        detail = (await carol.get(base)).json()
    assert all(c["name"] != "GEMINI_API_KEY" for c in listed), listed
    assert detail["archivedAt"] is None


async def test_drafts_refuse_a_nul_and_a_closed_session(quiet_server: TaskServer) -> None:
    """A draft is a message not sent yet: no NUL (it could never be sent), and only for a session
    that can still receive it (a closed one is a 409 and does not become the active session)."""
    async with quiet_server.signed_in("alice") as alice:
        task = await create_task(alice)
        base = f"/v1/organizations/acme/tasks/{task['taskId']}"
        other = (await alice.post(f"{base}/sessions", json={"name": "Other"})).json()["sessionId"]
        assert (await alice.delete(f"{base}/sessions/{other}")).status_code == 200
        before = await alice.get(base)
        nul = await alice.put(f"{base}/sessions/{task['sessionId']}/draft", json={"text": "a\x00b"})
        closed = await alice.put(f"{base}/sessions/{other}/draft", json={"text": "later"})
        after = await alice.get(base)
        kept = await alice.put(f"{base}/sessions/{task['sessionId']}/draft", json={"text": "  later\n"})
    _refused(nul, "text")
    assert closed.status_code == 409, closed.text
    assert after.json().get("activeSessionId") == before.json().get("activeSessionId")
    assert kept.status_code == 200, kept.text
