"""The durable mailbox and workflow loop, on the in-process backend."""

from __future__ import annotations

import asyncio

import pytest

from foundry.errors import (
    ActorUnavailable,
    CommandFailed,
    CommandTimeout,
    Conflict,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
)
from foundry.runtime.inprocess import InProcessRuntime


async def test_commands_to_one_instance_apply_in_send_order(runtime: InProcessRuntime) -> None:
    ref = runtime.actor("counter", "order")
    for i in range(50):
        await ref.send("incr", {"tag": f"t{i}"})
    await ref.send("incr", {"by": 0}, wait=True)
    state = await ref.call("get")
    assert state["tags"] == [f"t{i}" for i in range(50)]
    assert state["value"] == 50


async def test_concurrent_sends_are_each_applied_once(runtime: InProcessRuntime) -> None:
    ref = runtime.actor("counter", "burst")
    acks = await asyncio.gather(*(ref.send("incr", {"by": 1}) for _ in range(200)))
    assert all(a["status"] == "pending" for a in acks)
    assert (await ref.send("incr", {"by": 0}, wait=True))["value"] == 200


async def test_wait_returns_the_handler_result(runtime: InProcessRuntime) -> None:
    assert await runtime.actor("counter", "w").send("incr", {"by": 5}, wait=True) == {"value": 5}


async def test_duplicate_command_id_never_reruns_the_handler(runtime: InProcessRuntime) -> None:
    ref = runtime.actor("counter", "dup")
    first = await ref.send("incr", {"by": 7}, wait=True, command_id="same")
    again = await ref.send("incr", {"by": 7}, wait=True, command_id="same")
    ack = await ref.send("incr", {"by": 7}, command_id="same")
    assert first == again == {"value": 7}
    assert ack["duplicate"] is True
    assert (await ref.call("get"))["value"] == 7


async def test_duplicate_of_a_pending_command_waits_for_the_same_outcome(runtime: InProcessRuntime) -> None:
    ref = runtime.actor("counter", "dup-pending")
    await ref.send("slow", {"seconds": 0.2})
    results = await asyncio.gather(
        *(ref.send("incr", {"by": 1}, wait=True, command_id="x") for _ in range(5))
    )
    assert results == [{"value": 1}] * 5


async def test_wait_timeout_raises_a_clear_error_and_the_command_still_runs(
    runtime: InProcessRuntime,
) -> None:
    ref = runtime.actor("counter", "timeout")
    with pytest.raises(CommandTimeout, match=r"did not finish within 0.1s; it stays queued"):
        await ref.send("slow", {"seconds": 0.5}, wait=True, timeout=0.1, command_id="slow-1")
    assert await ref.send("slow", {"seconds": 0.5}, wait=True, timeout=5, command_id="slow-1") == {
        "slept": 0.5
    }


async def test_handler_error_reaches_the_caller_with_its_message_and_rolls_back(
    runtime: InProcessRuntime,
) -> None:
    ref = runtime.actor("counter", "err")
    with pytest.raises(CommandFailed, match="ValueError: disk on fire"):
        await ref.send("fail", {"message": "disk on fire"}, wait=True)
    with pytest.raises(Conflict, match="branch taken"):
        await ref.send("fail", {"message": "branch taken", "conflict": True}, wait=True, command_id="c1")
    # A failed command is not retried, and its duplicate returns the same error.
    with pytest.raises(Conflict, match="branch taken"):
        await ref.send("fail", {"message": "branch taken", "conflict": True}, wait=True, command_id="c1")
    # The loop goes on after a failure.
    assert await ref.send("incr", {}, wait=True) == {"value": 1}


async def test_an_action_answers_while_a_slow_command_runs(runtime: InProcessRuntime) -> None:
    ref = runtime.actor("counter", "busy")
    await ref.send("incr", {"by": 3}, wait=True)
    slow = asyncio.create_task(ref.send("slow", {"seconds": 1.0}, wait=True))
    await asyncio.sleep(0.05)
    started = asyncio.get_running_loop().time()
    assert (await ref.call("get"))["value"] == 3
    assert asyncio.get_running_loop().time() - started < 0.5
    assert not slow.done()
    await slow


@pytest.mark.parametrize(
    ("name", "body", "error", "text"),
    [
        ("nope", {}, NotFound, "no command 'nope'"),
        ("incr", {"by": "many"}, InvalidInput, "by"),
        ("incr", {"bogus": 1}, InvalidInput, "bogus"),
        ("incr", [1, 2], InvalidInput, "body must be an object"),
        ("slow", {"seconds": 9999}, InvalidInput, "seconds"),
    ],
)
async def test_bad_commands_are_refused_before_anything_is_queued(
    runtime: InProcessRuntime, name: str, body: object, error: type[Exception], text: str
) -> None:
    ref = runtime.actor("counter", "bad")
    with pytest.raises(error, match=text):
        await ref.send(name, body)
    assert (await ref.call("get"))["value"] == 0


async def test_invalid_input_names_the_fields(runtime: InProcessRuntime) -> None:
    with pytest.raises(InvalidInput) as info:
        await runtime.actor("counter", "fields").send("incr", {"by": "x", "extra": 1})
    assert set(info.value.fields) == {"by", "extra"}


async def test_unknown_action_and_oversized_body(runtime: InProcessRuntime) -> None:
    ref = runtime.actor("counter", "big")
    with pytest.raises(NotFound, match="no action 'missing'"):
        await ref.call("missing")
    with pytest.raises(PayloadTooLarge, match="limit is 1048576"):
        await ref.send("incr", {"tag": "x" * (1024 * 1024 + 1)})


@pytest.mark.parametrize("key", ["../escape", "a/b", "a\x00b", "..", "", ".hidden", "x" * 300])
async def test_keys_with_path_characters_are_refused_before_any_file_exists(
    runtime: InProcessRuntime, key: str
) -> None:
    with pytest.raises(InvalidInput, match="actor key"):
        await runtime.actor("counter", key).send("incr", {})
    assert not list(runtime.data_dir.rglob("*.sqlite3"))


async def test_sleep_then_wake_keeps_state(runtime: InProcessRuntime) -> None:
    ref = runtime.actor("counter", "sleepy")
    await ref.send("incr", {"by": 4, "tag": "a"}, wait=True)
    host = runtime.host("counter", 0)
    assert "sleepy" in host.awake_keys()
    assert await host.sleep_idle(older_than=0) >= 1
    assert "sleepy" not in host.awake_keys()
    assert await ref.call("get") == {"value": 4, "tags": ["a"]}
    assert "sleepy" in host.awake_keys()


async def test_instance_does_not_sleep_while_it_has_work(runtime: InProcessRuntime) -> None:
    ref = runtime.actor("counter", "working")
    await ref.send("slow", {"seconds": 0.3})
    await asyncio.sleep(0.05)
    host = runtime.host("counter", 0)
    assert await host.sleep_idle(older_than=0) == 0
    assert "working" in host.awake_keys()


async def test_pending_commands_resume_after_a_host_restart(runtime: InProcessRuntime) -> None:
    ref = runtime.actor("counter", "crashy")
    await ref.send("slow", {"seconds": 0.5})
    for i in range(20):
        await ref.send("incr", {"tag": f"r{i}"})
    # Losing the host mid-command: the slow command's transaction never committed.
    host = await runtime.restart_host("counter", 0)
    assert await host.recovered() == 1
    assert "crashy" in host.awake_keys()
    for _ in range(200):
        state = await ref.call("get")
        if state["value"] == 20:
            break
        await asyncio.sleep(0.05)
    assert state["tags"] == [f"r{i}" for i in range(20)]


async def test_outbox_delivers_to_another_actor_exactly_once(runtime: InProcessRuntime) -> None:
    await runtime.actor("counter", "sender").send(
        "forward", {"to": "receiver", "by": 3}, wait=True, command_id="f1"
    )
    await runtime.actor("counter", "sender").send(
        "forward", {"to": "receiver", "by": 3}, wait=True, command_id="f1"
    )
    for _ in range(100):
        if (await runtime.actor("counter", "receiver").call("get"))["value"] == 3:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    assert (await runtime.actor("counter", "receiver").call("get"))["value"] == 3


async def test_background_job_keeps_the_loop_free(runtime: InProcessRuntime) -> None:
    ref = runtime.actor("counter", "jobs")
    assert await ref.send("start_job", {"seconds": 0.3}, wait=True) == {"started": True}
    assert await ref.send("start_job", {"seconds": 0.3}, wait=True) == {"started": False}
    assert await ref.send("incr", {"by": 1}, wait=True) == {"value": 1}
    for _ in range(100):
        if (await ref.call("get"))["value"] == 101:
            break
        await asyncio.sleep(0.02)
    assert (await ref.call("get"))["value"] == 101


async def test_a_job_asked_to_start_while_it_runs_runs_once_more_after(runtime: InProcessRuntime) -> None:
    """A loop that drains work and ends must not miss work committed while it was ending: starts
    requested meanwhile coalesce into exactly one more run."""
    ref = runtime.actor("counter", "jobs-again")
    assert await ref.send("start_job", {"seconds": 0.3, "again": True}, wait=True) == {"started": True}
    for _ in range(3):
        assert await ref.send("start_job", {"seconds": 0.3, "again": True}, wait=True) == {"started": False}
    for _ in range(200):
        if (await ref.call("get"))["value"] == 200:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)
    assert (await ref.call("get"))["value"] == 200


async def test_recovery_index_marks_only_instances_with_pending_work(runtime: InProcessRuntime) -> None:
    host = runtime.host("counter", 0)
    busy, done = runtime.actor("counter", "busy-idx"), runtime.actor("counter", "done-idx")
    await done.send("incr", {}, wait=True)
    await busy.send("slow", {"seconds": 0.5})
    await busy.send("incr", {})
    assert host.pending_marker("busy-idx").exists()
    assert not host.pending_marker("done-idx").exists()
    await busy.send("incr", {}, wait=True, timeout=5)
    assert not host.pending_marker("busy-idx").exists()


async def test_requests_that_reach_a_closing_host_are_served_by_its_replacement(
    runtime: InProcessRuntime,
) -> None:
    """A host that closes while requests wake instances on it must not keep those instances: nobody
    would close them, and their open connections would lock the files against the new host."""
    keys = [f"closing-{i}" for i in range(30)]
    old = runtime.host("counter", 0)
    reads = [asyncio.create_task(runtime.actor("counter", k).call("get")) for k in keys]
    await asyncio.sleep(0.005)  # some of them are in the middle of their first wake
    new = await runtime.restart_host("counter", 0)
    states = await asyncio.gather(*reads)
    assert [s["value"] for s in states] == [0] * len(keys)
    assert old.awake_keys() == []
    # Every instance takes writes on the new host at once (no file left locked).
    results = await asyncio.wait_for(
        asyncio.gather(*(runtime.actor("counter", k).send("incr", {"by": 1}, wait=True) for k in keys)), 10
    )
    assert results == [{"value": 1}] * len(keys)
    assert set(new.awake_keys()) >= set(keys)


async def test_a_host_closed_while_a_job_writes_leaves_the_file_writable(runtime: InProcessRuntime) -> None:
    """Closing stops the jobs. One that was inside a write transaction must not leave the file
    locked against the host that opens it next, nor half of that transaction in it."""
    ref = runtime.actor("counter", "busy-writer")
    await ref.send("incr", {}, wait=True)
    for attempt in range(40):
        await ref.send("start_busy_writer", {"seconds": 30}, wait=True)
        await asyncio.sleep(0.01 * (attempt % 7 + 1))  # the job is somewhere in its transactions
        await runtime.restart_host("counter", 0)
        bumped = await asyncio.wait_for(ref.call("bump", {"by": 1}), 10)
        assert bumped == {"value": 2 + attempt}
    host = runtime.host("counter", 0)
    async with host._instances["busy-writer"].read_engine.connect() as conn:
        second = (await conn.exec_driver_sql("SELECT value FROM counters WHERE id = 2")).scalar()
    assert second % 1000 == 0  # whole transactions only


async def test_a_closed_runtime_never_starts_a_host_again(runtime: InProcessRuntime) -> None:
    """A late call or a reconnecting stream after close must not bring a host back: it would run
    recovery and jobs beside whatever opens the same databases next (a restarted runtime)."""
    ref = runtime.actor("counter", "closed")
    await ref.send("incr", {}, wait=True)
    await runtime.close()
    with pytest.raises(ActorUnavailable, match="closed"):
        await ref.call("get")
    with pytest.raises(ActorUnavailable, match="closed"):
        await anext(runtime.subscribe("counter", 0))
    assert await runtime.awake() == {}


async def test_the_statements_of_one_read_see_one_state(runtime: InProcessRuntime) -> None:
    """A read of several statements never mixes states from before and after a write (a task detail
    built from before a turn started and after it did once read "idle, nothing queued")."""
    ref = runtime.actor("counter", "torn")
    await ref.send("incr", {"tag": "first"}, wait=True)
    reading = asyncio.create_task(ref.call("read_slowly", {"seconds": 0.3}))
    await asyncio.sleep(0.1)  # the read has taken the value
    await ref.send("incr", {"tag": "second"}, wait=True)  # value and tag change in one transaction
    assert await reading in ({"value": 1, "tags": 1}, {"value": 2, "tags": 2})
