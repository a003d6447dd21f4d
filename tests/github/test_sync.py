"""Full sync: the real PyGithub driver against the fake GitHub, applied to the organization as
PR-backed virtual tasks."""

from __future__ import annotations

import json
from datetime import timedelta

import httpx
import sqlalchemy as sa

from actors.github_data.client import start_installation_reconciliation
from actors.organization.schema import task_summaries
from foundry.drivers.github.fake import MOCK_TIME
from tests.github.conftest import GitHub, eventually
from tests.http.conftest import Server


async def test_first_sign_in_mirrors_repositories_members_and_open_prs(
    server: Server, github: GitHub, acme: httpx.AsyncClient
) -> None:
    org = (await acme.get("/v1/organizations/acme")).json()
    assert org["github"]["syncStatus"] == "synced"
    assert org["github"]["syncGeneration"] == 1
    assert [r["fullName"] for r in org["repos"]] == ["acme/anvil", "acme/portable-hole", "acme/rocket"]
    tasks = {t["taskId"]: t for t in org["taskSummaries"]}
    assert set(tasks) == {"pr-910001-1", "pr-910001-2"}
    countdown = tasks["pr-910001-1"]
    assert countdown["isVirtual"] is True
    assert countdown["status"] == "virtual"
    assert countdown["title"] == "Add launch countdown"
    assert countdown["branch"] == "feat/countdown"
    assert countdown["pullRequest"]["state"] == "open"
    assert countdown["pullRequest"]["authorLogin"] == "alice"
    # GitHub's own updated_at, not the sync time.
    assert countdown["pullRequest"]["updatedAt"] == "2026-01-05T15:30:00Z"
    assert countdown["updatedAt"] == int((MOCK_TIME + timedelta(hours=6)).timestamp() * 1000)
    assert tasks["pr-910001-2"]["pullRequest"]["state"] == "draft"
    members = {m["login"]: m["role"] for m in (await acme.get("/v1/organizations/acme/members")).json()}
    assert members == {"alice": "member", "carol": "admin"}
    # The sync used the installation's token, never a member's OAuth token.
    pulls = server.github.requests_to("/repos/acme/")
    assert pulls
    assert all(r.headers["authorization"].startswith("token ghs_") for r in pulls)
    # Members came from two list calls, not one /users call per member.
    assert server.github.requests_to("/users/") == []


async def test_resync_without_changes_writes_and_broadcasts_nothing(
    server: Server, github: GitHub, acme: httpx.AsyncClient
) -> None:
    before = await github.tasks()
    async with github.recording() as events:
        status = await github.sync()
    stats = json.loads(status["lastSyncStats"])
    assert stats["generation"] == 2
    assert stats["taskSummaryWrites"] == 0
    assert stats["repoWrites"] == 0
    assert stats["rowsWritten"] == 0
    assert await github.tasks() == before
    assert events.named("taskSummariesUpdated") == []
    # Only sync progress moves the header; the last word is "synced".
    headers = events.named("organizationUpdated")
    assert headers
    assert headers[-1].data["github"]["syncStatus"] == "synced"
    assert {h.data["github"]["syncPhase"] for h in headers} <= {
        "repositories",
        "members",
        "pull_requests",
        None,
    }


async def test_changes_of_one_sync_land_in_one_broadcast(
    server: Server, github: GitHub, acme: httpx.AsyncClient
) -> None:
    fake = server.github
    fake.update_pull("acme/rocket", 1, title="Add launch countdown (T-10)")
    fake.update_pull("acme/rocket", 2, merged=True)
    fake.add_pull("acme/anvil", 7, "Heavier anvils", "feat/heavy", author="carol")
    fake.add_pull("acme/anvil", 8, "Lighter anvils", "feat/light", author="alice", draft=True)
    async with github.recording() as events:
        status = await github.sync()
    assert json.loads(status["lastSyncStats"])["taskSummaryWrites"] == 4
    batches = events.named("taskSummariesUpdated")
    assert len(batches) == 1
    data = batches[0].data
    assert sorted(t["taskId"] for t in data["upserted"]) == ["pr-910001-1", "pr-910002-7", "pr-910002-8"]
    assert data["removed"] == ["pr-910001-2"]  # merged: its virtual task is archived
    tasks = await github.tasks()
    assert tasks["pr-910001-1"]["title"] == "Add launch countdown (T-10)"
    assert tasks["pr-910001-2"]["archivedAt"] is not None
    assert tasks["pr-910001-2"]["pullRequest"]["state"] == "merged"
    visible = [t["taskId"] for t in (await acme.get("/v1/organizations/acme")).json()["taskSummaries"]]
    assert "pr-910001-2" not in visible
    assert "pr-910002-8" in visible


async def test_a_pr_on_a_real_tasks_branch_attaches_to_that_task(
    server: Server, github: GitHub, acme: httpx.AsyncClient
) -> None:
    # A task made by a member (the task actor's summary row) whose agent pushed feat/launch.
    host = server.runtime.host("organization", 0)
    instance = await host._acquire("acme")
    try:
        async with instance.engine.begin() as conn:
            await conn.execute(
                task_summaries.insert().values(
                    task_id="t-launch",
                    repo_id="910001",
                    repo_full_name="acme/rocket",
                    title="Launch sequence",
                    status="idle",
                    is_virtual=False,
                    branch="feat/launch",
                    created_at=1,
                    updated_at=1,
                )
            )
    finally:
        host._release(instance)
    server.github.add_pull("acme/rocket", 3, "Launch sequence", "feat/launch", author="alice")
    await github.sync()
    tasks = await github.tasks()
    assert "pr-910001-3" not in tasks  # no virtual twin
    real = tasks["t-launch"]
    assert real["pullRequest"]["number"] == 3
    assert real["pullRequest"]["state"] == "open"
    assert real["title"] == "Launch sequence"
    assert real["status"] == "idle"
    server.github.update_pull("acme/rocket", 3, state="closed")
    await github.sync()
    real = (await github.tasks())["t-launch"]
    assert real["pullRequest"]["state"] == "closed"
    assert real["archivedAt"] is None  # a real task is never archived by GitHub


async def test_progress_is_published_while_syncing(
    server: Server, github: GitHub, acme: httpx.AsyncClient
) -> None:
    for i in range(12):
        server.github.add_repo(1001, "acme", f"extra-{i}", id=930000 + i)
    async with github.recording() as events:
        await github.sync()
    phases = [e.data["github"] for e in events.named("organizationUpdated")]
    pr_phase = [p for p in phases if p["syncPhase"] == "pull_requests"]
    assert pr_phase, phases
    assert all(p["syncStatus"] == "syncing" and p["totalCount"] == 15 for p in pr_phase)
    counts = [p["processedCount"] for p in pr_phase]
    assert counts == sorted(counts)
    assert counts[-1] == 15
    assert phases[-1]["syncStatus"] == "synced"
    assert phases[-1]["syncPhase"] is None
    assert len((await acme.get("/v1/organizations/acme")).json()["repos"]) == 15


async def test_a_failed_sync_shows_its_error_and_the_next_one_recovers(
    server: Server, github: GitHub, acme: httpx.AsyncClient
) -> None:
    server.github.fail_next("/installation/repositories", 502)
    status = await github.sync()
    assert status["syncStatus"] == "error"
    org = (await acme.get("/v1/organizations/acme")).json()
    assert org["github"]["syncStatus"] == "error"
    assert "502" in org["github"]["syncError"]
    assert len(org["taskSummaries"]) == 2  # nothing was lost
    status = await github.sync()
    assert status["syncStatus"] == "synced"
    org = (await acme.get("/v1/organizations/acme")).json()
    assert org["github"]["syncStatus"] == "synced"
    assert org["github"]["syncError"] is None


async def test_members_can_ask_for_a_sync_others_cannot(server: Server, github: GitHub) -> None:
    async with server.signed_in("alice") as alice, server.signed_in("bob") as bob:
        server.github.add_pull("acme/anvil", 5, "Sharper corners", "feat/corners")
        response = await alice.post("/v1/organizations/acme/sync")
        assert response.status_code == 202, response.text
        assert response.json() == {"status": "queued"}

        async def visible() -> bool:
            tasks = (await alice.get("/v1/organizations/acme")).json()["taskSummaries"]
            return any(t["taskId"] == "pr-910002-5" for t in tasks)

        await eventually(visible, what="the synced PR")
        assert (await bob.post("/v1/organizations/acme/sync")).status_code == 404
        cross = await alice.post("/v1/organizations/acme/sync", headers={"Origin": "https://evil.example"})
        assert cross.status_code == 403
    async with server.client() as anonymous:
        assert (await anonymous.post("/v1/organizations/acme/sync")).status_code == 401
    events = await server.runtime.call("audit-log", "acme", "list", {"kind": "organization.sync_requested"})
    assert len(events) == 1


async def test_sync_needs_a_connected_installation(
    server: Server, github: GitHub, acme: httpx.AsyncClient
) -> None:
    host = server.runtime.host("organization", 0)
    instance = await host._acquire("acme")
    try:
        async with instance.engine.begin() as conn:
            await conn.execute(sa.text("UPDATE profile SET installation_status = 'suspended'"))
    finally:
        host._release(instance)
    response = await acme.post("/v1/organizations/acme/sync")
    assert response.status_code == 409
    assert response.json()["error"] == "conflict"
    assert "not connected" in response.json()["detail"]


async def test_startup_reconciliation_rebuilds_wiped_state(server: Server, github: GitHub) -> None:
    """State wiped (a fresh data dir): GET /app/installations recreates every organization, its
    installation index and its mirror before anyone signs in."""
    await start_installation_reconciliation(server.runtime)

    async def both_synced() -> bool:
        for org in ("acme", "globex"):
            status = await server.runtime.call("organization", org, "github_status")
            if status.get("syncStatus") != "synced":
                return False
        return True

    await eventually(both_synced, what="acme and globex synced")
    found = await server.runtime.call(
        "organization", "app", "organization_for_installation", {"installationId": 1002}
    )
    assert found["organizationId"] == "globex"
    globex = await github.organization("globex")
    assert [r["fullName"] for r in globex["repos"]] == ["globex/doomsday-device", "globex/hammock"]
    assert [t["taskId"] for t in globex["taskSummaries"]] == ["pr-920001-1"]
    assert {m["login"] for m in await server.runtime.call("organization", "globex", "members")} == {
        "bob",
        "carol",
    }
    # Signing in afterwards finds everything in place and does not sync again.
    async with server.signed_in("bob") as bob:
        org = (await bob.get("/v1/organizations/globex")).json()
    assert org["github"]["syncGeneration"] == 1
