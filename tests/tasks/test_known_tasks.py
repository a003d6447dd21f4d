"""A task's organization vouches for it once per API process: later writes find it without asking
the organization again, and the rule it enforces (404 outside ``{org}``) still holds for everyone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.tasks.conftest import TaskServer, create_task, running_server


@pytest.fixture
async def quiet_server(tmp_path: Path) -> AsyncIterator[TaskServer]:
    async with running_server(tmp_path, binary=str(tmp_path / "absent")) as server:
        yield server


def _count_task_summary_calls(server: TaskServer, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    asked: list[str] = []
    call = server.runtime.call

    async def counting(role: str, key: str, name: str, *args: Any, **kwargs: Any) -> Any:
        if role == "organization" and name == "task_summary":
            asked.append(key)
        return await call(role, key, name, *args, **kwargs)

    monkeypatch.setattr(server.runtime, "call", counting)
    return asked


async def test_writes_ask_the_organization_once_and_other_organizations_still_get_404(
    quiet_server: TaskServer, monkeypatch: pytest.MonkeyPatch
):
    asked = _count_task_summary_calls(quiet_server, monkeypatch)
    async with quiet_server.signed_in("alice") as alice:
        task_id = (await create_task(alice, prompt="Vouched once"))["taskId"]
        base = f"/v1/organizations/acme/tasks/{task_id}"
        first = await alice.patch(base, json={"title": "First name"})
        assert first.status_code == 200, first.text
        assert asked == ["acme"]
        for title in ("Second name", "Third name"):
            assert (await alice.patch(base, json={"title": title})).status_code == 200
        opened = await alice.post(f"{base}/sessions", json={})
        assert opened.status_code == 201, opened.text
        assert asked == ["acme"], "later writes asked the organization again"
        assert (await alice.get(base)).json()["title"] == "Third name"

        missing = await alice.patch("/v1/organizations/acme/tasks/0123456789abcdef", json={"title": "x"})
        assert missing.status_code == 404
    async with quiet_server.signed_in("carol") as carol:
        # carol is a member of globex: the task known for acme is still not globex's.
        stolen = await carol.patch(f"/v1/organizations/globex/tasks/{task_id}", json={"title": "stolen"})
        assert stolen.status_code == 404, stolen.text
        assert asked[-1] == "globex"
    async with quiet_server.signed_in("bob") as bob:
        # bob is not in acme at all: membership is checked before the task.
        assert (await bob.patch(base, json={"title": "stolen"})).status_code == 404
    async with quiet_server.signed_in("alice") as alice:
        assert (await alice.get(base)).json()["title"] == "Third name"
