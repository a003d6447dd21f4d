"""Every webhook family Foundry handles, from real payloads (@octokit/webhooks-examples), through the
real HTTP endpoint, to what a member sees.

Payloads are used as GitHub sent them, with the changes each test names: the installation id (most
examples are repository hooks without one), ``updated_at`` where a story needs an order (the examples
were recorded at unrelated times), and the few actions that have no example.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from foundry.webhooks.github import trim_payload
from tests.fakes.webhooks import example, owned_by
from tests.github.conftest import ACME_INSTALLATION, ACME_LOGIN, HELLO_WORLD_ID, GitHub, eventually
from tests.http.conftest import Server

TASK = f"pr-{HELLO_WORLD_ID}-2"  # PR #2 of Codertocat/Hello-World, the PR of every example


def hook(event: str, action: str | None = None, index: int = 0, installation: int = ACME_INSTALLATION) -> Any:
    payload = owned_by(example(event, action, index), ACME_LOGIN)
    payload["installation"] = {**(payload.get("installation") or {}), "id": installation}
    return payload


def at(minute: int) -> str:
    return f"2026-02-01T10:{minute:02d}:00Z"


def pr_hook(action: str, minute: int, index: int = 0) -> Any:
    payload = hook("pull_request", action, index)
    payload["pull_request"]["updated_at"] = at(minute)
    return payload


async def test_pull_request_lifecycle_drives_its_virtual_task(
    server: Server, github: GitHub, acme: httpx.AsyncClient
) -> None:
    async with github.recording() as events:
        assert (await github.send("pull_request", pr_hook("opened", 1)))["status"] == "applied"
        task = await eventually(lambda: github.task(TASK), what="the virtual task")
        assert task["isVirtual"]
        assert task["status"] == "virtual"
        assert task["title"] == "Update the README with new information."
        assert task["branch"] == "changes"
        assert task["repoFullName"] == "Codertocat/Hello-World"
        assert task["pullRequest"]["state"] == "open"
        # The repository it came with joins the catalog.
        repos = {r["id"]: r for r in (await acme.get("/v1/organizations/acme")).json()["repos"]}
        assert repos[HELLO_WORLD_ID]["fullName"] == "Codertocat/Hello-World"

        edited = pr_hook("opened", 2)  # no `edited` example exists: the same payload, edited
        edited["action"] = "edited"
        edited["pull_request"]["title"] = "Update the README (reviewed)"
        await github.send("pull_request", edited)

        async def titled() -> bool:
            return (await github.task(TASK) or {}).get("title") == "Update the README (reviewed)"

        await eventually(titled, what="the new title")

        async def state_after(action: str, minute: int, expected: str, payload: Any = None) -> dict[str, Any]:
            await github.send("pull_request", payload or pr_hook(action, minute))

            async def reached() -> dict[str, Any] | None:
                row = await github.task(TASK)
                return row if row and row["pullRequest"]["state"] == expected else None

            return await eventually(reached, what=f"{action} → {expected}")

        await state_after("converted_to_draft", 3, "draft")
        await state_after("ready_for_review", 4, "open")
        sync = pr_hook("synchronize", 5)
        sync["pull_request"]["head"]["sha"] = "f" * 40
        await github.send("pull_request", sync)

        async def moved() -> bool:
            return (await github.task(TASK) or {}).get("pullRequest", {}).get("headSha") == "f" * 40

        await eventually(moved, what="the new head")
        merged = pr_hook("closed", 6)
        merged["pull_request"].update(merged=True, merged_at=at(6))  # the examples have no merge
        row = await state_after("closed", 6, "merged", merged)
        assert row["archivedAt"] is not None  # a merged PR archives its virtual task
        listed = [t["taskId"] for t in (await acme.get("/v1/organizations/acme")).json()["taskSummaries"]]
        assert TASK not in listed
        row = await state_after("reopened", 7, "open")
        assert row["archivedAt"] is None

        # A late redelivery of an old state changes nothing (GitHub does not order deliveries).
        late = await github.send("pull_request", pr_hook("converted_to_draft", 3))
        assert late["status"] == "ignored"
        assert "older" in late["reason"]
        assert (await github.task(TASK) or {})["pullRequest"]["state"] == "open"
    batches = events.named("taskSummariesUpdated")
    assert all(len(b.data["upserted"]) + len(b.data["removed"]) == 1 for b in batches)


async def test_reviews_and_comments_are_items_of_the_tasks_pr(
    server: Server, github: GitHub, acme: httpx.AsyncClient
) -> None:
    await github.send("pull_request", pr_hook("opened", 1))
    before = (await eventually(lambda: github.task(TASK)))["updatedAt"]

    review = hook("pull_request_review", "submitted")
    assert (await github.send("pull_request_review", review))["status"] == "applied"
    comment = hook("pull_request_review_comment", "created")
    await github.send("pull_request_review_comment", comment)
    on_pr = hook("issue_comment", "created")
    on_pr["issue"]["number"] = 2  # the examples comment on issue #1; this one is on PR #2
    on_pr["issue"]["pull_request"] = {"url": "https://api.github.com/repos/Codertocat/Hello-World/pulls/2"}
    await github.send("issue_comment", on_pr)
    on_issue = await github.send("issue_comment", hook("issue_comment", "created", 1))
    assert on_issue["status"] == "ignored"
    assert "not on a pull request" in on_issue["reason"]

    async def items() -> dict[str, dict[str, Any]]:
        rows = await server.runtime.call(
            "github-data", "acme", "pr_items", {"repoId": HELLO_WORLD_ID, "number": 2}
        )
        assert [r["createdAt"] for r in rows] == sorted(r["createdAt"] for r in rows)  # oldest first
        return {r["kind"]: r for r in rows}

    found = await items()
    assert set(found) == {"review", "review_comment", "comment"}
    assert found["review"]["state"] == review["review"]["state"]
    assert found["review"]["authorLogin"] == review["review"]["user"]["login"]
    assert found["review_comment"]["path"] == comment["comment"]["path"]
    assert found["comment"]["body"] == on_pr["comment"]["body"]

    # Edits replace, deletions keep a tombstone, a redelivery under a new id adds nothing.
    edited = hook("pull_request_review_comment", "edited")
    edited["comment"]["id"] = comment["comment"]["id"]
    edited["comment"]["body"] = "On second thought: fine."
    edited["comment"]["updated_at"] = at(30)
    await github.send("pull_request_review_comment", edited)
    gone = hook("issue_comment", "deleted")
    gone["issue"] = on_pr["issue"]
    await github.send("issue_comment", gone)
    await github.send("pull_request_review", review)
    found = await items()
    assert len(found) == 3
    assert found["review_comment"]["body"] == "On second thought: fine."
    assert found["comment"]["deleted"] is True
    assert found["comment"]["body"] is None
    # Activity (the edit, newer than the PR's own update) moved the task up the sidebar.

    async def bumped() -> bool:
        return bool((await github.task(TASK) or {})["updatedAt"] > before)

    await eventually(bumped, what="the task's activity time")


async def test_checks_and_statuses_set_the_ci_state_of_the_task(
    server: Server, github: GitHub, acme: httpx.AsyncClient
) -> None:
    await github.send("pull_request", pr_hook("opened", 1))
    await eventually(lambda: github.task(TASK))

    async def ci(expected: str | None) -> None:
        async def reached() -> bool:
            return (await github.task(TASK) or {}).get("ciState") == expected

        await eventually(reached, what=f"ci {expected}")

    await github.send("check_run", hook("check_run", "created"))  # queued
    await ci("pending")
    await github.send("check_run", hook("check_run", "completed", 0))  # github-actions: failure
    await ci("failure")
    await github.send("check_run", hook("check_run", "completed", 1))  # the same check, rerun: success
    await ci("success")
    await github.send("check_suite", hook("check_suite", "completed"))  # the suite: success
    await ci("success")
    other = await github.send("status", hook("status"))  # a commit that heads no PR
    assert other["status"] == "applied"
    assert "no pull request" in other["reason"]
    # A new head has no CI yet.
    sync = pr_hook("synchronize", 2)
    sync["pull_request"]["head"]["sha"] = "a" * 40
    await github.send("pull_request", sync)
    await ci(None)
    status = hook("status")
    status.update(sha="a" * 40, state="failure")
    await github.send("status", status)
    await ci("failure")


async def test_pushes_creates_and_deletes_track_branch_heads(
    server: Server, github: GitHub, acme: httpx.AsyncClient
) -> None:
    await github.send("pull_request", pr_hook("opened", 1))
    await eventually(lambda: github.task(TASK))

    async def heads() -> dict[str, Any]:
        rows = await server.runtime.call("github-data", "acme", "branches", {"repoId": HELLO_WORLD_ID})
        return {b["name"]: b["headSha"] for b in rows}

    master = hook("push", None, 4)  # refs/heads/master
    await github.send("push", master)
    assert (await heads())["master"] == master["after"]
    to_pr = hook("push", None, 5)
    to_pr.update(ref="refs/heads/changes", after="b" * 40)  # a push to the PR's branch
    await github.send("push", to_pr)

    async def head_moved() -> bool:
        return (await github.task(TASK) or {}).get("pullRequest", {}).get("headSha") == "b" * 40

    await eventually(head_moved, what="the PR head from the push")
    tag = await github.send("push", hook("push", None, 0))
    assert tag["status"] == "ignored"
    assert "not a branch" in tag["reason"]
    created = hook("create")
    assert (await github.send("create", created))["status"] == "ignored"  # a tag
    created.update(ref="feature-x", ref_type="branch")
    await github.send("create", created)
    assert "feature-x" in await heads()
    deleted = hook("delete")
    deleted.update(ref="feature-x", ref_type="branch")
    await github.send("delete", deleted)
    assert "feature-x" not in await heads()


async def test_installation_lifecycle_of_a_new_account(server: Server, github: GitHub) -> None:
    """A brand-new installation on an account Foundry never saw: the organization creates itself,
    mirrors its repositories, and follows suspend, unsuspend, new permissions and removal."""
    fake = server.github
    fake.add_installation(957387, "Codertocat", "User", account_id=21031067)
    fake.add_repo(957387, "Codertocat", "Hello-World", id=186853002)
    fake.add_pull("Codertocat/Hello-World", 2, "Update the README with new information.", "changes")
    created = example("installation", "created")
    assert (await github.send("installation", created, key="personal-codertocat"))["status"] == "applied"
    org = "personal-codertocat"

    async def synced() -> dict[str, Any] | None:
        status = await server.runtime.call("organization", org, "github_status")
        return status if status.get("syncStatus") == "synced" else None

    await eventually(synced, what="the new organization's sync")
    summary = await github.organization(org)
    assert summary["github"]["installationStatus"] == "connected"
    assert [r["fullName"] for r in summary["repos"]] == ["Codertocat/Hello-World"]
    assert [t["taskId"] for t in summary["taskSummaries"]] == [TASK]
    assert [m["userId"] for m in await server.runtime.call("organization", org, "members")] == ["gh-21031067"]
    routed = await server.runtime.call(
        "organization", "app", "organization_for_installation", {"installationId": 957387}
    )
    assert routed["organizationId"] == org

    fake.add_repo(957387, "Codertocat", "Space", id=186853100)
    added = example("installation_repositories", "added")
    await github.send("installation_repositories", added, key=org)

    async def two_repos() -> bool:
        return len((await github.organization(org))["repos"]) == 2

    await eventually(two_repos, what="the added repository")

    async def status_is(expected: str) -> bool:
        return bool((await github.organization(org))["github"]["installationStatus"] == expected)

    suspend = example("installation", "suspend")
    suspend["installation"]["id"] = 957387  # the suspend/unsuspend examples are of another install
    await github.send("installation", suspend, key=org)
    await eventually(lambda: status_is("suspended"), what="suspended")
    unsuspend = example("installation", "unsuspend")
    unsuspend["installation"]["id"] = 957387
    await github.send("installation", unsuspend, key=org)
    await eventually(lambda: status_is("connected"), what="connected again")
    generation = (await github.organization(org))["github"]["syncGeneration"]
    await github.send("installation", example("installation", "new_permissions_accepted"), key=org)

    async def resynced() -> bool:
        return bool((await github.organization(org))["github"]["syncGeneration"] > generation)

    await eventually(resynced, what="a resync after new permissions")
    deleted = example("installation", "created")
    deleted["action"] = "deleted"  # the deletion examples are of another account
    await github.send("installation", deleted, key=org)
    await eventually(lambda: status_is("install_required"), what="install_required")
    summary = await github.organization(org)
    assert summary["repos"] == []
    assert summary["taskSummaries"] == []
    # A sync that was still running when the App was uninstalled delivers its result afterwards (seen
    # on a loaded machine after the resync above): the repositories must not come back.
    late = summary["github"]["syncGeneration"] + 1
    outcome = await server.runtime.actor("organization", org).send(
        "apply_github_sync", {"generation": late, "processed": 2, "total": 2}, wait=True
    )
    assert outcome["applied"] is False
    summary = await github.organization(org)
    assert summary["repos"] == []
    assert summary["github"]["installationStatus"] == "install_required"
    # Nor does a delivery GitHub sent before the uninstall, routed to the organization's mirror
    # before the uninstall was known and applied after it.
    late_pr = example("pull_request", "synchronize")
    late_pr["pull_request"]["updated_at"] = "2030-01-01T00:00:00Z"
    late_id = str(uuid.uuid4())
    await server.runtime.send(
        "github-data",
        org,
        "ingest_webhook",
        {
            "deliveryId": late_id,
            "event": "pull_request",
            "action": "synchronize",
            "installationId": 957387,
            "receivedAt": 1,
            "payload": trim_payload("pull_request", late_pr),
        },
        command_id=f"github-delivery:{late_id}",
    )
    await github.recorded(late_id, key=org)
    await asyncio.sleep(1.0)  # the organization applies what github-data recorded a moment later
    summary = await github.organization(org)
    assert summary["repos"] == []
    assert summary["taskSummaries"] == []


async def test_repository_events_keep_the_catalog_current(
    server: Server, github: GitHub, acme: httpx.AsyncClient
) -> None:
    async def repos() -> dict[str, dict[str, Any]]:
        return {r["id"]: r for r in (await acme.get("/v1/organizations/acme")).json()["repos"]}

    async def catalog_shows(repo_id: str, **expected: Any) -> None:
        """The organization applies what github-data recorded a moment later: wait for it."""

        async def probe() -> bool:
            repo = (await repos()).get(repo_id)
            if not expected:
                return repo is None
            return repo is not None and all(repo[k] == v for k, v in expected.items())

        await eventually(probe, what=f"repository {repo_id} with {expected or 'none'}")

    renamed = hook("repository", "renamed")
    created = hook("repository", "created", 1)
    old_name = renamed["changes"]["repository"]["name"]["from"]
    created["repository"].update(name=old_name, full_name=f"Octocoders/{old_name}")  # before the rename
    await github.send("repository", created)
    await catalog_shows("186853261", fullName=f"Octocoders/{old_name}")
    await github.send("repository", renamed)
    await catalog_shows("186853261", fullName=renamed["repository"]["full_name"])
    archived = hook("repository", "edited")
    archived["action"] = "archived"  # no `archived` example: an edited repository, now archived
    archived["repository"]["archived"] = True
    await github.send("repository", archived)
    await catalog_shows("186853261", archived=True)

    await github.send("pull_request", pr_hook("opened", 1))  # a PR on Codertocat/Hello-World
    await eventually(lambda: github.task(TASK))
    deleted = hook("repository", "publicized")
    deleted["action"] = "deleted"  # no `deleted` example: the same repository, deleted
    await github.send("repository", deleted)
    await catalog_shows(HELLO_WORLD_ID)

    async def archived_task() -> bool:
        return (await github.task(TASK) or {}).get("archivedAt") is not None

    await eventually(archived_task, what="the virtual task of the deleted repository archived")
    # A delivery GitHub sent before the deletion, arriving after it, brings nothing back.
    await github.send("pull_request", pr_hook("synchronize", 59))
    await asyncio.sleep(1.0)  # the organization applies what github-data recorded a moment later
    assert await archived_task()
    assert HELLO_WORLD_ID not in await repos()
    # Archived with its pull request as GitHub last showed it: nobody closed it.
    assert (await github.task(TASK))["pullRequest"]["state"] == "open"
    listed = (await acme.get("/v1/organizations/acme/tasks", params={"status": "archived"})).json()["tasks"]
    assert [t["pullRequest"]["state"] for t in listed if t["taskId"] == TASK] == ["open"]
    # Why it cannot be started says what happened: its pull request was not closed on GitHub.
    refused = await acme.post(f"/v1/organizations/acme/tasks/{TASK}/sessions", json={})
    assert refused.status_code == 409, refused.text
    assert "no longer available to the GitHub App" in refused.json()["detail"]


async def test_member_changes_apply_at_once(server: Server, github: GitHub) -> None:
    async with server.signed_in("alice") as alice, server.signed_in("carol") as carol:

        async def members() -> dict[str, str]:
            rows = (await carol.get("/v1/organizations/acme/members")).json()
            return {m["login"]: m["role"] for m in rows}

        added = hook("organization", "member_added")
        await github.send("organization", added)
        await eventually(lambda: _has(members, "hacktocat"), what="hacktocat a member")
        invited = await github.send("organization", hook("organization", "member_invited"))
        assert invited["status"] == "ignored"

        # GitHub's member list is re-read on team and collaborator changes, roles included.
        server.github.add_member("acme", "dave", "admin")
        await github.send("membership", hook("membership", "added"))
        await eventually(lambda: _has(members, "dave"), what="dave from the refreshed list")
        assert (await members())["dave"] == "admin"
        await github.send("member", hook("member", "added"))

        assert (await alice.get("/v1/organizations/acme")).status_code == 200
        server.github.remove_member("acme", "alice")
        removed = hook("organization", "member_added")
        removed["action"] = "member_removed"  # no `member_removed` example: alice leaves
        removed["membership"]["user"].update(login="alice", id=5001)
        await github.send("organization", removed)

        async def locked_out() -> bool:
            return (await alice.get("/v1/organizations/acme")).status_code == 404

        await eventually(locked_out, what="alice losing access")
        assert (await alice.get("/v1/organizations/acme/members")).status_code == 404


async def _has(members: Any, login: str) -> bool:
    return login in await members()


async def test_ping_and_unused_events_are_recorded(
    server: Server, github: GitHub, acme: httpx.AsyncClient
) -> None:
    ping = hook("ping")
    assert (await github.send("ping", ping))["status"] == "applied"
    star = {"action": "created", "installation": {"id": ACME_INSTALLATION}, "starred_at": at(1)}
    recorded = await github.send("star", star)
    assert recorded["status"] == "ignored"
    assert "not used" in recorded["reason"]
    labeled = await github.send("pull_request", pr_hook("labeled", 9))
    assert labeled["status"] == "applied"  # any PR action keeps the mirror current


async def test_a_repository_taken_from_the_app_keeps_its_pull_requests_as_last_seen(
    server: Server, github: GitHub
) -> None:
    """Taking a repository out of the installation closes none of its pull requests on GitHub: its
    archived tasks keep showing them open, after the webhook and after a full sync alike."""
    fake = server.github
    fake.add_installation(957387, "Codertocat", "User", account_id=21031067)
    fake.add_repo(957387, "Codertocat", "Hello-World", id=186853002)
    fake.add_pull("Codertocat/Hello-World", 2, "Update the README with new information.", "changes")
    assert (await github.send("installation", example("installation", "created"), key="personal-codertocat"))[
        "status"
    ] == "applied"
    org = "personal-codertocat"

    async def open_and_archived() -> bool:
        row = await github.task(TASK, org) or {}
        return row.get("archivedAt") is not None and row["pullRequest"]["state"] == "open"

    await eventually(lambda: github.task(TASK, org), what="the pull request's task")
    fake.set_repo_installation("Codertocat/Hello-World", None)
    removed = example("installation_repositories", "removed")
    removed["installation"].update(id=957387, account=created_account(example("installation", "created")))
    removed["repositories_removed"] = [
        {"id": 186853002, "name": "Hello-World", "full_name": "Codertocat/Hello-World", "private": False}
    ]
    assert (await github.send("installation_repositories", removed, key=org))["status"] == "applied"
    await eventually(open_and_archived, what="the task archived with its pull request open")
    await github.sync(org)
    assert (await github.organization(org))["repos"] == []
    assert await open_and_archived()


def created_account(installation_created: dict[str, Any]) -> dict[str, Any]:
    return dict(installation_created["installation"]["account"])
