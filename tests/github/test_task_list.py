"""``GET /v1/organizations/{org}/tasks``: every task once across pages, filters, search, bad input."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.github.conftest import GitHub
from tests.http.conftest import Server

BASE = "/v1/organizations/acme/tasks"
PULLS = 130


async def pages(client: httpx.AsyncClient, **params: Any) -> list[list[dict[str, Any]]]:
    out: list[list[dict[str, Any]]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await client.get(BASE, params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        out.append(body["tasks"])
        cursor = body["nextCursor"]
        if cursor is None:
            return out


async def test_tasks_are_listed_once_across_pages_and_filtered(
    server: Server, github: GitHub, acme: httpx.AsyncClient
) -> None:
    for n in range(1, PULLS + 1):
        repo = "acme/anvil" if n % 2 else "acme/rocket"
        title = "Sharper corners" if n % 10 == 0 else f"Routine change {n}"
        server.github.add_pull(repo, 1000 + n, title, f"feat/change-{n}")
    assert (await github.sync())["syncStatus"] == "synced"
    everything = [t for page in await pages(acme, limit=50) for t in page]
    ids = [t["taskId"] for t in everything]
    assert len(ids) == len(set(ids))  # nothing twice
    prs = {t["taskId"] for t in everything if t["isVirtual"]}
    assert len({t for t in prs if int(t.rsplit("-", 1)[1]) > 1000}) == PULLS  # nothing skipped
    assert [t["taskId"] for t in everything] == [t["taskId"] for t in sorted(everything, key=_newest_first)]

    anvil = [t for page in await pages(acme, repoId="910002", limit=7) for t in page]
    assert anvil
    assert {t["repoFullName"] for t in anvil} == {"acme/anvil"}
    assert {t["taskId"] for t in anvil} == {t["taskId"] for t in everything if t["repoId"] == "910002"}

    found = (await acme.get(BASE, params={"q": "sharper CORNERS"})).json()["tasks"]
    assert len(found) == PULLS // 10
    assert all("Sharper corners" in t["title"] for t in found)
    # Search text is never a pattern: % and _ match themselves only.
    assert (await acme.get(BASE, params={"q": "%"})).json()["tasks"] == []
    assert (await acme.get(BASE, params={"q": "_"})).json()["tasks"] == []

    virtual = (await acme.get(BASE, params={"status": "virtual", "limit": 200})).json()["tasks"]
    assert {t["taskId"] for t in virtual} == prs
    assert (await acme.get(BASE, params={"status": "archived"})).json()["tasks"] == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"status": "sleeping"}, "status"),
        ({"cursor": "not-a-cursor!"}, "cursor"),
        ({"q": "x" * 201}, "q"),
    ],
)
async def test_bad_list_parameters_are_a_clear_422(
    server: Server, github: GitHub, acme: httpx.AsyncClient, params: dict[str, Any], field: str
) -> None:
    response = await acme.get(BASE, params=params)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_input"
    assert field in response.text


async def test_only_members_list_an_organizations_tasks(
    server: Server, github: GitHub, acme: httpx.AsyncClient
) -> None:
    async with server.signed_in("bob") as bob:  # not a member of acme
        assert (await bob.get(BASE)).status_code == 404
    async with server.client() as anonymous:
        assert (await anonymous.get(BASE)).status_code == 401


def _newest_first(task: dict[str, Any]) -> tuple[int, str]:
    return (-task["updatedAt"], _reverse(task["taskId"]))


def _reverse(text: str) -> str:
    return "".join(chr(0x10FFFF - ord(c)) for c in text)


async def test_a_pull_request_closed_on_github_is_listed_as_archived_only(
    server: Server, github: GitHub, acme: httpx.AsyncClient
) -> None:
    """A closed pull request archives its virtual row: it leaves the default list and the
    ``virtual`` filter, and ``status=archived`` finds it."""
    server.github.add_pull("acme/anvil", 7001, "Soon closed", "feat/soon-closed")
    assert (await github.sync())["syncStatus"] == "synced"
    task_id = "pr-910002-7001"
    assert task_id in {t["taskId"] for page in await pages(acme, status="virtual") for t in page}
    server.github.add_pull("acme/anvil", 7001, "Soon closed", "feat/soon-closed", state="closed", merged=True)
    assert (await github.sync())["syncStatus"] == "synced"

    def listed(found: list[list[dict[str, Any]]]) -> bool:
        return task_id in {t["taskId"] for page in found for t in page}

    assert not listed(await pages(acme))
    assert not listed(await pages(acme, status="virtual"))
    assert listed(await pages(acme, status="archived"))
    assert listed(await pages(acme, status="virtual,archived"))
