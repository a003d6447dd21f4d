"""Batchable commands run many per transaction (group commit) with the guarantees of one-by-one:
queue order, each applied once, a failure rolled back alone and reported to its own sender, and
nothing lost or repeated when the host restarts in the middle of a burst."""

from __future__ import annotations

import asyncio

import pytest

from foundry.errors import CommandFailed, Conflict
from foundry.runtime import command_batch
from foundry.runtime.inprocess import InProcessRuntime


async def test_a_burst_mixing_batched_failing_and_plain_commands_applies_in_order_once_each(
    runtime: InProcessRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    real = command_batch.execute_batch

    async def counted(instance, items, step_timeout):  # type: ignore[no-untyped-def]
        sizes.append(len(items))
        return await real(instance, items, step_timeout)

    monkeypatch.setattr("foundry.runtime.instance.execute_batch", counted)
    ref = runtime.actor("counter", "batched")
    expected_tags, waits = [], []
    for i in range(300):
        if i % 37 == 5:
            waits.append(
                (i, asyncio.ensure_future(ref.send("fail_batched", {"message": f"bad {i}"}, wait=True)))
            )
        elif i % 50 == 7:
            expected_tags.append(f"t{i}")
            await ref.send("incr", {"tag": f"t{i}"})  # not batchable: runs on its own, in its place
        else:
            expected_tags.append(f"t{i}")
            await ref.send("incr_batched", {"tag": f"t{i}"})
    assert (await ref.send("incr", {"by": 0}, wait=True))["value"] == len(expected_tags)
    state = await ref.call("get")
    assert state["tags"] == expected_tags
    for i, fut in waits:
        with pytest.raises(CommandFailed, match=f"bad {i}"):
            await fut
    assert max(sizes) > 1, sizes  # they did share transactions
    # A failed command's writes were rolled back with its savepoint (it inserts counter row 2).
    assert (await ref.send("incr_batched", {"by": 0}, wait=True)) == {"value": len(expected_tags)}


async def test_each_sender_gets_its_own_outcome_and_a_duplicate_gets_the_stored_one(
    runtime: InProcessRuntime,
) -> None:
    ref = runtime.actor("counter", "outcomes")
    sends = [ref.send("incr_batched", {"by": 1}, wait=True, command_id=f"c{i}") for i in range(40)]
    refused = ref.send("fail_batched", {"message": "taken", "conflict": True}, wait=True, command_id="f")
    results = await asyncio.gather(*sends, refused, return_exceptions=True)
    values = sorted(r["value"] for r in results[:40])  # type: ignore[index]
    assert values == list(range(1, 41))
    assert isinstance(results[40], Conflict)
    # Sent again with the same ids: nothing runs twice, each gets what it got the first time.
    again = await ref.send("incr_batched", {"by": 1}, wait=True, command_id="c7")
    assert again == results[7]
    with pytest.raises(Conflict, match="taken"):
        await ref.send("fail_batched", {"message": "taken", "conflict": True}, wait=True, command_id="f")
    assert (await ref.call("get"))["value"] == 40


async def test_a_host_restart_in_the_middle_of_a_burst_loses_and_repeats_nothing(
    runtime: InProcessRuntime,
) -> None:
    ref = runtime.actor("counter", "restart")
    for i in range(1000):
        await ref.send("incr_batched", {"tag": f"t{i}"})
    await asyncio.sleep(0.05)  # some batches have committed, others are queued or running
    await runtime.restart_host("counter", 0)
    done = await runtime.actor("counter", "restart").send("incr", {"by": 0}, wait=True, timeout=60)
    assert done["value"] == 1000
    tags = (await runtime.actor("counter", "restart").call("get"))["tags"]
    assert tags == [f"t{i}" for i in range(1000)]
