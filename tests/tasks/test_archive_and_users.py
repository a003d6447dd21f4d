"""Archive (never losing unpushed work), per-user state on a shared task, rename and owner change."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from foundry.demo_agent import NOTES_FILE
from tests.tasks.conftest import (
    TaskServer,
    create_task,
    events,
    idle_session,
    task_detail,
    wait_summary,
    wait_task,
)


def remote_branches(remote: Path) -> list[str]:
    out = subprocess.run(
        ["git", "--git-dir", str(remote), "for-each-ref", "--format=%(refname:short)", "refs/heads"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


async def test_archive_is_refused_with_unpushed_work_unless_forced_then_rescues_it(tasks_server: TaskServer):
    async with tasks_server.signed_in("alice") as client:
        created = await create_task(client, prompt="Work worth keeping")
        task_id = created["taskId"]
        await wait_task(client, task_id, idle_session)
        url = f"/v1/organizations/acme/tasks/{task_id}/archive"

        refused = await client.post(url, json={})
        assert refused.status_code == 409
        body = refused.json()
        assert body["error"] == "conflict"
        assert f"1 uncommitted change ({NOTES_FILE})" in body["detail"]
        assert "force" in body["detail"]
        sandbox_dir = Path(tasks_server.provider.sandbox_dir(task_id))
        assert sandbox_dir.is_dir()
        assert (await task_detail(client, task_id))["status"] == "idle"

        forced = await client.post(url, json={"force": True})
        assert forced.status_code == 200, forced.text
        rescue = forced.json()["rescueBranch"]
        assert rescue.startswith(f"foundry/rescue/{task_id}-")
        remote = tasks_server.remote("acme/rocket")
        assert rescue in remote_branches(remote)
        shown = subprocess.run(
            ["git", "--git-dir", str(remote), "show", f"{rescue}:{NOTES_FILE}"],
            capture_output=True,
            text=True,
        )
        assert "- Work worth keeping" in shown.stdout
        # Then the sandbox is destroyed and the task archived everywhere.
        assert not sandbox_dir.exists()
        assert tasks_server.provider.process_id(task_id) is None
        detail = await task_detail(client, task_id)
        assert detail["status"] == "archived"
        assert all(s["status"] == "closed" for s in detail["sessions"])
        # The organization hears of it from the task (its outbox), right after the archive answered.
        for _ in range(200):
            org = (await client.get("/v1/organizations/acme")).json()
            if task_id not in {t["taskId"] for t in org["taskSummaries"]}:
                break
            await asyncio.sleep(0.05)
        assert task_id not in {t["taskId"] for t in org["taskSummaries"]}
        # The transcript stays readable; nothing else runs any more.
        assert (await events(client, task_id, created["sessionId"]))[-1]["event"] == "sessionClosed"
        refused = await client.post(
            f"/v1/organizations/acme/tasks/{task_id}/sessions/{created['sessionId']}/messages",
            json={"text": "hi"},
        )
        assert refused.status_code == 409
        assert "archived" in refused.json()["detail"]
        assert (await client.get(f"/v1/organizations/acme/tasks/{task_id}/diff")).status_code == 409
        assert (await client.post(url, json={})).json()["already"] is True
        audit = (await client.get("/v1/organizations/acme/audit-log", params={"taskId": task_id})).json()
        archived = next(e for e in audit if e["kind"] == "task.archive")
        assert archived["payload"]["rescueBranch"] == rescue
        assert archived["payload"]["force"] is True
        assert any(e["kind"] == "task.rescue_pushed" for e in audit)


async def test_archive_after_the_work_is_pushed_needs_no_force(tasks_server: TaskServer):
    async with tasks_server.signed_in("alice") as client:
        created = await create_task(client, prompt="Small change")
        task_id = created["taskId"]
        await wait_task(client, task_id, idle_session)
        assert (await client.post(f"/v1/organizations/acme/tasks/{task_id}/pull-request")).status_code == 200
        archived = await client.post(f"/v1/organizations/acme/tasks/{task_id}/archive")
        assert archived.status_code == 200, archived.text
        assert archived.json()["rescueBranch"] is None
        assert not any(
            b.startswith("foundry/rescue/") for b in remote_branches(tasks_server.remote("acme/rocket"))
        )


async def test_concurrent_archives_all_answer_archived_and_one_does_the_work(tasks_server: TaskServer):
    """A double click, or two people at once: every archive of the task answers 200, exactly one of
    them did it (rescued the work, destroyed the sandbox), the others say ``already``."""
    async with tasks_server.signed_in("alice") as alice, tasks_server.signed_in("carol") as carol:
        created = await create_task(alice, prompt="Concurrent archive")
        task_id = created["taskId"]
        await wait_task(alice, task_id, idle_session)
        url = f"/v1/organizations/acme/tasks/{task_id}/archive"
        answers = await asyncio.gather(
            *(client.post(url, json={"force": True}) for client in (alice, carol, alice, carol, alice))
        )
        audit = (await alice.get("/v1/organizations/acme/audit-log", params={"taskId": task_id})).json()
    assert [a.status_code for a in answers] == [200] * 5, [a.text for a in answers]
    assert sorted(a.json()["already"] for a in answers) == [False, True, True, True, True]
    (done,) = [a.json() for a in answers if not a.json()["already"]]
    assert done["rescueBranch"] is not None  # the demo agent left notes uncommitted
    assert [e["kind"] for e in audit].count("task.archive") == 1


async def test_two_users_on_one_task_see_their_own_unread_draft_and_active_session(tasks_server: TaskServer):
    async with tasks_server.signed_in("alice") as alice, tasks_server.signed_in("carol") as carol:
        created = await create_task(alice, prompt="Shared work")
        task_id, session_id = created["taskId"], created["sessionId"]
        base = f"/v1/organizations/acme/tasks/{task_id}/sessions/{session_id}"
        await wait_task(alice, task_id, idle_session)

        # The finished turn is unread for the owner, not for everyone. It travels through
        # the task's outbox to the user actor, so it lands moments after the turn ends.
        for _ in range(100):
            mine = await task_detail(alice, task_id)
            if mine["sessions"][0]["unread"]:
                break
            await asyncio.sleep(0.05)
        theirs = await task_detail(carol, task_id)
        assert mine["sessions"][0]["unread"] is True
        assert mine["unread"] is True
        assert theirs["sessions"][0]["unread"] is False
        assert (await alice.post(base + "/read")).status_code == 200
        assert (await task_detail(alice, task_id))["sessions"][0]["unread"] is False

        # Drafts are per user.
        assert (await carol.put(base + "/draft", json={"text": "carol's idea"})).status_code == 200
        assert (await alice.put(base + "/draft", json={"text": "alice's plan"})).status_code == 200
        assert (await task_detail(carol, task_id))["sessions"][0]["draft"]["text"] == "carol's idea"
        assert (await task_detail(alice, task_id))["sessions"][0]["draft"]["text"] == "alice's plan"

        # Carol sends: her draft clears; the turn's end is unread for the owner (alice) only.
        before = (await task_detail(carol, task_id))["sessions"][0]["lastSeq"]
        assert (await carol.post(base + "/messages", json={"text": "carol's idea"})).status_code == 202
        await wait_task(
            carol, task_id, lambda d: idle_session(d) and d["sessions"][0]["lastSeq"] > before + 5
        )
        carol_view = await task_detail(carol, task_id)
        # The turn's end reaches alice's user actor through the task's outbox, after the turn ended.
        alice_view = await wait_task(alice, task_id, lambda d: d["sessions"][0]["unread"])
        assert carol_view["sessions"][0]["draft"]["text"] == ""
        assert carol_view["sessions"][0]["unread"] is False
        assert alice_view["sessions"][0]["draft"]["text"] == "alice's plan"
        assert alice_view["sessions"][0]["unread"] is True

        # Active sessions are per user too.
        second = (await carol.post(f"/v1/organizations/acme/tasks/{task_id}/sessions", json={})).json()
        assert (await task_detail(carol, task_id))["activeSessionId"] == second["sessionId"]
        assert (await task_detail(alice, task_id))["activeSessionId"] == session_id

        # Owner change (to a member) and rename reach the organization summary.
        people = (await alice.get("/v1/organizations/acme/members")).json()
        carol_id = next(p["userId"] for p in people if p["login"] == "carol")
        changed = await alice.post(f"/v1/organizations/acme/tasks/{task_id}/owner", json={"userId": carol_id})
        assert changed.status_code == 200, changed.text
        renamed = await alice.patch(
            f"/v1/organizations/acme/tasks/{task_id}", json={"title": "  Shared   work "}
        )
        assert renamed.status_code == 200
        assert renamed.json()["title"] == "Shared work"
        stranger = await alice.post(
            f"/v1/organizations/acme/tasks/{task_id}/owner", json={"userId": "gh-5002"}
        )
        assert stranger.status_code == 422
        detail = await wait_task(alice, task_id, lambda d: d["owner"]["login"] == "carol")
        assert detail["title"] == "Shared work"
        # The organization's row follows through the task's outbox, just after the answers.
        row = await wait_summary(
            alice, task_id, lambda row: row["ownerLogin"] == "carol" and row["title"] == "Shared work"
        )
        assert row["ownerLogin"] == "carol"
        assert row["title"] == "Shared work"
