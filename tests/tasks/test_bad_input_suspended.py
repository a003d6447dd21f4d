"""Creating a task while the organization's GitHub App installation is suspended: 409 with the reason
(set by the ``installation.suspend`` webhook, cleared by ``unsuspend``); nothing is created."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.webhooks import example
from tests.github.conftest import ACME_INSTALLATION, GitHub, eventually
from tests.tasks.conftest import ACME_ROCKET, TaskServer, running_server

ACME_ACCOUNT = {"login": "acme", "id": 7001, "type": "Organization"}


@pytest.fixture
async def quiet_server(tmp_path: Path) -> AsyncIterator[TaskServer]:
    async with running_server(tmp_path, binary=str(tmp_path / "absent")) as server:
        yield server


def installation_hook(action: str) -> dict[str, Any]:
    payload = example("installation", action)
    payload["installation"].update(id=ACME_INSTALLATION, account=dict(ACME_ACCOUNT))
    return payload


async def test_task_creation_is_409_while_the_installation_is_suspended(quiet_server: TaskServer) -> None:
    github = GitHub(quiet_server)
    url = "/v1/organizations/acme/tasks"
    body = {"repoId": ACME_ROCKET, "prompt": "Add a launch checklist"}
    try:
        async with quiet_server.signed_in("carol") as carol:

            async def status_is(expected: str) -> bool:
                organization = (await carol.get("/v1/organizations/acme")).json()
                return bool(organization["github"]["installationStatus"] == expected)

            before = (await carol.get("/v1/organizations/acme")).json()["taskSummaries"]
            assert (await github.send("installation", installation_hook("suspend")))["status"] == "applied"
            await eventually(lambda: status_is("suspended"), what="the suspended installation")

            refused = await carol.post(url, json=body)
            assert refused.status_code == 409, refused.text
            assert refused.json() == {
                "error": "conflict",
                "detail": "the GitHub App installation of 'acme' is suspended on GitHub; an owner of "
                "the GitHub account must unsuspend it before tasks can be created",
            }
            assert (await carol.get("/v1/organizations/acme")).json()["taskSummaries"] == before

            assert (await github.send("installation", installation_hook("unsuspend")))["status"] == "applied"
            await eventually(lambda: status_is("connected"), what="the unsuspended installation")
            created = await carol.post(url, json=body)
            assert created.status_code == 201, created.text
    finally:
        await github.aclose()
