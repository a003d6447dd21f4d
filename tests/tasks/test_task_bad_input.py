"""Bad input and authorization on the task routes: clear 4xx JSON, nothing created or changed.

These tests run without sandboxes (the binary setting points nowhere), so nothing starts in the
background; provisioning simply fails with a message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.tasks.conftest import ACME_ROCKET, TaskServer, create_task, running_server

DOOMSDAY_DEVICE = "920002"  # globex, archived


@pytest.fixture
async def quiet_server(tmp_path: Path) -> AsyncIterator[TaskServer]:
    async with running_server(tmp_path, binary=str(tmp_path / "absent")) as server:
        yield server


async def test_task_creation_refuses_bad_input_and_creates_nothing(quiet_server: TaskServer):
    async with quiet_server.signed_in("carol") as carol:
        url = "/v1/organizations/acme/tasks"
        before = (await carol.get("/v1/organizations/acme")).json()["taskSummaries"]

        unknown = await carol.post(url, json={"repoId": "999", "prompt": "x"})
        assert unknown.status_code == 404
        assert unknown.json()["error"] == "not_found"
        assert "repository '999' not found" in unknown.json()["detail"]

        too_long = await carol.post(url, json={"repoId": ACME_ROCKET, "prompt": "x" * 100_001})
        assert too_long.status_code == 422
        assert too_long.json()["fields"] == ["prompt"]
        empty = await carol.post(url, json={"repoId": ACME_ROCKET, "prompt": ""})
        assert empty.status_code == 422
        assert empty.json()["fields"] == ["prompt"]
        extra = await carol.post(url, json={"repoId": ACME_ROCKET, "prompt": "x", "priority": 1})
        assert extra.status_code == 422
        assert extra.json()["fields"] == ["priority"]
        bad_branch = await carol.post(url, json={"repoId": ACME_ROCKET, "prompt": "x", "branch": "a..b"})
        assert bad_branch.status_code == 422
        assert "invalid branch name" in bad_branch.json()["detail"]
        default_branch = await carol.post(url, json={"repoId": ACME_ROCKET, "prompt": "x", "branch": "main"})
        assert default_branch.status_code == 409
        bad_model = await carol.post(url, json={"repoId": ACME_ROCKET, "prompt": "x", "model": "gpt-0"})
        assert bad_model.status_code == 422
        assert "unknown model" in bad_model.json()["detail"]
        mismatch = await carol.post(
            url, json={"repoId": ACME_ROCKET, "prompt": "x", "agent": "codex", "model": "demo"}
        )
        assert mismatch.status_code == 422
        archived = await carol.post(
            "/v1/organizations/globex/tasks", json={"repoId": DOOMSDAY_DEVICE, "prompt": "x"}
        )
        assert archived.status_code == 409
        assert "archived" in archived.json()["detail"]
        cross_site = await carol.post(
            url, json={"repoId": ACME_ROCKET, "prompt": "x"}, headers={"Origin": "https://evil.example"}
        )
        assert cross_site.status_code == 403

        assert (await carol.get("/v1/organizations/acme")).json()["taskSummaries"] == before

        # Exactly at the limit is fine; an explicit branch is taken once, then refused.
        ok = await create_task(carol, prompt="y" * 100_000, branch="feature/limits")
        assert ok["branchName"] == "feature/limits"
        taken = await carol.post(url, json={"repoId": ACME_ROCKET, "prompt": "x", "branch": "feature/limits"})
        assert taken.status_code == 409
        assert ok["taskId"] in taken.json()["detail"]
        # Generated branch names never collide.
        first = await create_task(carol, prompt="Fix the thing")
        second = await create_task(carol, prompt="Fix the thing")
        assert first["title"] == "fix: Fix the thing"
        assert (first["branchName"], second["branchName"]) == (
            "foundry/fix-the-thing-1",
            "foundry/fix-the-thing-2",
        )


async def test_every_task_route_checks_membership_and_that_the_task_is_in_the_org(quiet_server: TaskServer):
    async with quiet_server.signed_in("alice") as alice:
        created = await create_task(alice, prompt="Private to acme")
    task_id, session_id = created["taskId"], created["sessionId"]
    base = f"/v1/organizations/acme/tasks/{task_id}"
    sessions = f"{base}/sessions/{session_id}"
    routes = [
        ("GET", base, None),
        ("PATCH", base, {"title": "stolen"}),
        ("POST", f"{base}/archive", {}),
        ("POST", f"{base}/pull-request", {}),
        ("GET", f"{base}/diff", None),
        ("GET", f"{base}/files", None),
        ("POST", f"{base}/owner", {"userId": "gh-5002"}),
        ("POST", f"{base}/sessions", {}),
        ("POST", f"{sessions}/messages", {"text": "hi"}),
        ("POST", f"{sessions}/stop", None),
        ("PATCH", sessions, {"name": "x"}),
        ("DELETE", sessions, None),
        ("GET", f"{sessions}/events", None),
        ("PUT", f"{sessions}/draft", {"text": "x"}),
        ("POST", f"{sessions}/read", None),
        ("POST", f"{sessions}/permissions/0", {"optionId": "allow"}),
    ]
    async with quiet_server.signed_in("bob") as bob, quiet_server.signed_in("carol") as carol:
        for method, path, body in routes:
            # bob is not in acme: the same 404 as for an organization that does not exist.
            response = await bob.request(method, path, json=body)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error"] == "not_found"
            # carol is in globex too, but this task is not globex's.
            response = await carol.request(method, path.replace("/acme/", "/globex/"), json=body)
            assert response.status_code == 404, (method, path, response.text)
        async with quiet_server.client() as anonymous:
            for method, path, body in routes:
                response = await anonymous.request(method, path, json=body)
                assert response.status_code == 401, (method, path)
        missing = await carol.get("/v1/organizations/acme/tasks/0123456789abcdef0123456789abcdef")
        assert missing.status_code == 404
        assert (await carol.get("/v1/organizations/acme/tasks/..%2F..%2Fetc")).status_code == 404
        detail = (await carol.get(base)).json()
        assert detail["title"] == "feat: Private to acme"
