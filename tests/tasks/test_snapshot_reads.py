"""Task reads from the API process's snapshot cache: no actor asked once warm, and a caller's own
rename or draft is in the very next read, through the API process that made it or through another
one that has not heard of it yet (the read-your-writes cookie)."""

from __future__ import annotations

import httpx

from foundry.http.read_your_writes import COOKIE
from tests.http.auth_calls import ActorCalls
from tests.http.test_snapshot_reads import held_process
from tests.tasks.conftest import TaskServer, create_task, idle_session, task_detail, wait_task

TASK_READS = {
    ("task", "snapshot"),
    ("task", "get"),
    ("organization", "task_summary"),
    ("user", "get_task_state"),
}


async def test_task_reads_are_cached_and_never_older_than_the_callers_writes(
    tasks_server: TaskServer,
) -> None:
    calls = ActorCalls(tasks_server.runtime)
    async with tasks_server.signed_in("alice") as alice, held_process(tasks_server) as (other, held):
        created = await create_task(alice, prompt="A note for the cache")
        task_id, session_id = created["taskId"], created["sessionId"]
        await wait_task(alice, task_id, idle_session)
        path = f"/v1/organizations/acme/tasks/{task_id}"
        async with httpx.AsyncClient(base_url=other, timeout=10, cookies=alice.cookies) as via_b:
            first = await task_detail(via_b, task_id)
            start = len(calls.calls)
            assert (await task_detail(via_b, task_id))["title"] == first["title"]
            assert not [c for c in calls.calls[start:] if c in TASK_READS], "B did not cache the task"
            held.hold()

            renamed = await alice.patch(path, json={"title": "Renamed through A"})
            assert renamed.status_code == 200, renamed.text
            # Through A, which made the write: at once.
            assert (await task_detail(alice, task_id))["title"] == "Renamed through A"
            # Through B, which has heard nothing since (its events are held): stale without the
            # cookie, the caller's own write with it.
            session_only = {k: v for k, v in alice.cookies.items() if k != COOKIE}
            async with httpx.AsyncClient(base_url=other, timeout=10, cookies=session_only) as no_cookie:
                assert (await task_detail(no_cookie, task_id))["title"] == first["title"]
            via_b.cookies = alice.cookies
            assert (await task_detail(via_b, task_id))["title"] == "Renamed through A"

            draft = f"{path}/sessions/{session_id}/draft"
            assert (await alice.put(draft, json={"text": "half a thought"})).status_code == 200
            via_b.cookies = alice.cookies
            mine = await task_detail(via_b, task_id)
            assert mine["sessions"][0]["draft"]["text"] == "half a thought"
            assert held.batches, "B's cache heard nothing to hold: the test proved nothing"
