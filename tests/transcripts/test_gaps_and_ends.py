"""Event ids checked for gaps (repaired, or reported as lost), Stop within a second during a flood,
an agent that crashes or ignores cancel, and every turn ending exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from tests.tasks.conftest import TaskServer, idle_session, wait_task
from tests.transcripts.conftest import (
    SseProxy,
    TopicCollector,
    assert_seqs_dense,
    chunks,
    lost_count,
    route_through,
    session_log,
    start_task,
    terminal,
    wait_running,
    wait_turns,
)

# ACP server ids 1 and 2 are the answers to initialize and session/new, 3 and 4 open the flood's tool
# call, so chunk #n is event n + 4: dropping ids 200..399 drops chunks #196..#395.
DROPPED = range(200, 400)
MISSING_CHUNKS = range(196, 396)


def base(task_id: str, session_id: str) -> str:
    return f"/v1/organizations/acme/tasks/{task_id}/sessions/{session_id}"


async def test_a_gap_in_event_ids_is_re_read_and_repaired(scripted_server: TaskServer):
    # Under 1,024 events in all: sandbox-agent still holds the missing ones when they are re-read.
    async with SseProxy(drop=DROPPED, once=True).serving() as proxy:
        route_through(scripted_server, proxy)
        async with scripted_server.signed_in("alice") as client:
            task_id, session_id = await start_task(client, "flood 800")
            log = await wait_turns(client, task_id, session_id, 1)
    assert proxy.dropped[:1] == [DROPPED.start]  # the gap really happened
    assert proxy.streams >= 2  # …and was re-read
    assert chunks(log) == list(range(1, 801))
    assert terminal(log) == ["turnEnded"]
    assert not [e for e in log if e["event"] == "eventsLost"]
    assert_seqs_dense(log)


async def test_events_that_cannot_be_re_read_are_reported_lost(scripted_server: TaskServer):
    async with SseProxy(drop=DROPPED, once=False).serving() as proxy:
        route_through(scripted_server, proxy)
        async with scripted_server.signed_in("alice") as client:
            task_id, session_id = await start_task(client, "flood 800")
            log = await wait_turns(client, task_id, session_id, 1)
    lost = [e for e in log if e["event"] == "eventsLost"]
    assert [e["data"] for e in lost] == [{"from": DROPPED.start, "to": DROPPED.stop - 1}]
    assert chunks(log) == [n for n in range(1, 801) if n not in MISSING_CHUNKS]
    # The report sits where the missing events were.
    kinds = [e["event"] for e in log]
    assert chunks(log[: kinds.index("eventsLost")]) == list(range(1, MISSING_CHUNKS.start))
    assert terminal(log) == ["turnEnded"]
    assert_seqs_dense(log)


async def test_stop_during_a_flood_ends_the_turn_without_waiting_for_its_backlog(scripted_server: TaskServer):
    async with scripted_server.signed_in("alice") as client, scripted_server.websocket(client) as ws:
        # 30,000 chunks take the agent seconds: it is still flooding when Stop comes, however late
        # the first chunk reaches the websocket on a loaded machine (with 10,000 it once finished
        # first, and its turn rightly ended as turnEnded).
        task_id, session_id = await start_task(client, "pause 3000 flood 30000")
        topic = f"session:acme:{task_id}:{session_id}"
        collector = TopicCollector(ws)
        await collector.subscribe([topic])
        try:
            while not chunks(collector.frames[topic]):
                await asyncio.sleep(0.01)
            stopped = time.monotonic()
            response = await client.post(base(task_id, session_id) + "/stop")
            assert response.status_code == 202, response.text
            assert response.json()["stopping"] is True
            live = await collector.until_terminal(topic, timeout=10)
            elapsed = time.monotonic() - stopped
        finally:
            await collector.aclose()
        assert terminal(live) == ["turnCancelled"]
        # The flood's backlog takes many seconds to record; Stop must not wait for it. The product's
        # target (≤ 1 s, p50) is measured by `bench/transcripts.py` on a quiet machine; here, with the
        # whole suite competing for two cores, a Stop that waited for the backlog still fails clearly.
        assert elapsed <= 2.0, f"Stop took {elapsed:.2f}s"
        # The flood's tool call was left open by the agent: it is marked cancelled before the end.
        kinds = [e["event"] for e in live]
        cancelled_call = live[kinds.index("turnCancelled") - 1]
        assert cancelled_call["data"]["update"] == {
            "sessionUpdate": "tool_call_update",
            "toolCallId": "flood-1",
            "status": "cancelled",
        }
        await wait_task(client, task_id, idle_session, timeout=30)
        log = await session_log(client, task_id, session_id)
        numbers = chunks(log)
        assert numbers == list(range(1, len(numbers) + 1))  # what was recorded, once and in order
        assert terminal(log) == ["turnCancelled"]

        # The next turn starts after the cancelled one: none of its leftovers are recorded in it.
        sent = await client.post(base(task_id, session_id) + "/messages", json={"text": "flood 5"})
        assert sent.status_code == 202
        log = await wait_turns(client, task_id, session_id, 2)
        ended_at = [e["event"] for e in log].index("turnCancelled")
        second = log[ended_at + 1 :]
        assert chunks(second) == [1, 2, 3, 4, 5]
        assert terminal(log) == ["turnCancelled", "turnEnded"]
        # What Stop left unrecorded (if it cut the backlog short) is said in the cancelled turn, before
        # its end, and only there.
        stopped = [n for n, e in enumerate(log) if e["event"] == "eventsLost"]
        assert all(n < ended_at for n in stopped)
        assert all(log[n]["data"]["reason"] == "stopped" for n in stopped)
        assert_seqs_dense(log)


async def test_an_agent_that_ignores_stop_is_ended_then_replaced(scripted_server: TaskServer):
    async with scripted_server.signed_in("alice") as client:
        task_id, session_id = await start_task(client, "deaf pause 20000")
        await wait_task(client, task_id, lambda d: d["sessions"][0]["status"] == "running", timeout=60)
        stopped = time.monotonic()
        assert (await client.post(base(task_id, session_id) + "/stop")).status_code == 202
        log = await wait_turns(client, task_id, session_id, 1, timeout=10)
        assert time.monotonic() - stopped <= 1.5
        assert terminal(log) == ["turnCancelled"]
        # Its agent is shut down after the grace period; the next message starts a new one.
        sent = await client.post(base(task_id, session_id) + "/messages", json={"text": "flood 3"})
        assert sent.status_code == 202
        log = await wait_turns(client, task_id, session_id, 2, timeout=60)
        assert terminal(log) == ["turnCancelled", "turnEnded"]
        assert chunks(log) == [1, 2, 3]


async def test_an_agent_crash_mid_flood_fails_the_turn_once(scripted_server: TaskServer):
    async with scripted_server.signed_in("alice") as client:
        task_id, session_id = await start_task(client, "open flood 3000 crash")
        log = await wait_turns(client, task_id, session_id, 1, timeout=60)
        assert terminal(log) == ["turnFailed"]
        # The tool call the agent left open died with it: marked failed (not left spinning), before
        # the end.
        ended_at = [e["event"] for e in log].index("turnFailed")
        closing = [e["data"]["update"] for e in log[:ended_at] if e["data"].get("origin") == "foundry"]
        assert {"sessionUpdate": "tool_call_update", "toolCallId": "open-1", "status": "failed"} in closing
        assert all(update["status"] == "failed" for update in closing)
        assert log[ended_at - 1]["data"].get("origin") == "foundry"  # right before the end
        # Everything it said before dying, in order, once. The one exception is sandbox-agent's: it
        # occasionally skips an event id while an agent dies, and what it no longer has is marked
        # `eventsLost` in the transcript, never dropped silently.
        said = chunks(log)
        assert said == sorted(set(said))
        missing = set(range(1, 3001)) - set(said)
        lost = lost_count(log)
        assert len(missing) <= lost, (sorted(missing), lost)
        detail = await wait_task(client, task_id, lambda d: d["sessions"][0]["status"] == "error")
        assert "exited" in detail["sessions"][0]["error"] or "connection" in detail["sessions"][0]["error"]
        # A new agent takes the next message.
        sent = await client.post(base(task_id, session_id) + "/messages", json={"text": "flood 2"})
        assert sent.status_code == 202
        log = await wait_turns(client, task_id, session_id, 2, timeout=60)
        assert terminal(log) == ["turnFailed", "turnEnded"]
        assert_seqs_dense(log)


async def test_stop_while_idle_is_a_no_op_and_blank_messages_are_refused(scripted_server: TaskServer):
    async with scripted_server.signed_in("alice") as client:
        task_id, session_id = await start_task(client, "flood 1")
        await wait_task(client, task_id, idle_session, timeout=60)
        before = await session_log(client, task_id, session_id)
        response = await client.post(base(task_id, session_id) + "/stop")
        assert response.status_code == 202
        assert response.json() == {"stopping": False, "droppedQueued": 0}
        assert await session_log(client, task_id, session_id) == before  # no event
        for text in (" ", "\n\t  "):
            refused = await client.post(base(task_id, session_id) + "/messages", json={"text": text})
            assert refused.status_code == 422, refused.text
            assert refused.json()["error"] == "invalid_input"
        blank_session = await client.post(
            f"/v1/organizations/acme/tasks/{task_id}/sessions", json={"prompt": "   "}
        )
        assert blank_session.status_code == 422, blank_session.text
        assert await session_log(client, task_id, session_id) == before


async def test_repairing_a_gap_loses_at_most_the_gap(scripted_server: TaskServer):
    # The reader sees ids 200..202 missing only once sandbox-agent has sent event 1,600: by then
    # they have left its buffer of the last 1,024 events and are gone, but everything after them is
    # still on the stream being read. Re-reading must not trade that stream for a replay that starts
    # hundreds of events later: only the gap itself may be reported lost.
    gap = range(200, 203)
    async with SseProxy(drop=gap, once=True, hold_at=gap.stop, hold_until=1600).serving() as proxy:
        route_through(scripted_server, proxy)
        async with scripted_server.signed_in("alice") as client:
            task_id, session_id = await start_task(client, "flood 2000")
            log = await wait_turns(client, task_id, session_id, 1, timeout=120)
    lost = [e["data"] for e in log if e["event"] == "eventsLost"]
    if not proxy.dropped:
        # On a loaded machine sandbox-agent may end the first (dropping) stream before id 200, and
        # the reader resumes on one that drops nothing: then nothing may be missing at all.
        assert lost == []
        assert chunks(log) == list(range(1, 2001))
        return
    assert proxy.dropped == list(gap)
    assert lost == [{"from": gap.start, "to": gap.stop - 1}]
    missing = range(gap.start - 4, gap.stop - 4)  # chunk #n is event n + 4
    assert chunks(log) == [n for n in range(1, 2001) if n not in missing]
    assert terminal(log) == ["turnEnded"]
    assert_seqs_dense(log)


async def test_stop_ends_the_turn_at_once_while_sandbox_agent_hangs(scripted_server: TaskServer):
    # A silent turn makes Foundry ask sandbox-agent (after 5 s) whether the agent's server still
    # exists; a frozen sandbox-agent never answers. Stop must not wait for that answer (nor for the
    # sandbox's health watchdog, 30 s): the user gets the turn back at once.
    async with scripted_server.signed_in("alice") as client:
        task_id, session_id = await start_task(client, "open pause 120000")
        await wait_running(client, task_id)
        log = await session_log(client, task_id, session_id)
        while not [e for e in log if e["event"] == "agentUpdate"]:  # the tool call is recorded
            await asyncio.sleep(0.1)
            log = await session_log(client, task_id, session_id)
        pid = scripted_server.provider.process_id(task_id)
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(7)  # the turn has been silent for > 5 s: the question is pending
            stopped = time.monotonic()
            response = await client.post(base(task_id, session_id) + "/stop")
            assert response.status_code == 202, response.text
            log = await wait_turns(client, task_id, session_id, 1, timeout=30)
            elapsed = time.monotonic() - stopped
        finally:
            os.kill(pid, signal.SIGCONT)
        assert terminal(log) == ["turnCancelled"]
        assert elapsed <= 4.0, f"Stop took {elapsed:.2f}s"
        # At most the open-ended note that whatever the agent sent after Stop was skipped, in the turn.
        lost = [n for n, e in enumerate(log) if e["event"] == "eventsLost"]
        assert len(lost) <= 1
        assert all(n < [e["event"] for e in log].index("turnCancelled") for n in lost)
        kinds = [e["event"] for e in log]
        assert log[kinds.index("turnCancelled") - 1]["data"]["update"]["status"] == "cancelled"


async def test_tool_calls_an_earlier_turn_left_open_are_closed_when_a_later_one_fails(
    scripted_server: TaskServer,
):
    # The agent ends a turn with a tool call still open, then dies in the next: nothing will close
    # either call any more, and neither may spin on the page for good.
    async with scripted_server.signed_in("alice") as client:
        task_id, session_id = await start_task(client, "open")
        log = await wait_turns(client, task_id, session_id, 1)
        assert terminal(log) == ["turnEnded"]
        sent = await client.post(base(task_id, session_id) + "/messages", json={"text": "open crash"})
        assert sent.status_code == 202
        log = await wait_turns(client, task_id, session_id, 2)
    assert terminal(log) == ["turnEnded", "turnFailed"]
    ended_at = [e["event"] for e in log].index("turnFailed")
    closed = {
        e["data"]["update"]["toolCallId"]: e["data"]["update"]["status"]
        for e in log[:ended_at]
        if e["data"].get("origin") == "foundry"
    }
    assert closed == {"open-1": "failed", "open-2": "failed"}
