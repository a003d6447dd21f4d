"""Events: per-topic seq stamped after commit, ordered streams per host."""

from __future__ import annotations

import asyncio

import pytest

from foundry.errors import CommandFailed
from foundry.runtime.events import Event, EventHub
from foundry.runtime.inprocess import InProcessRuntime


async def _collect(runtime: InProcessRuntime, n: int, out: list[Event]) -> None:
    async for batch in runtime.subscribe("counter", 0):
        out.extend(e for e in batch if e.topic.startswith("counter:"))
        if len(out) >= n:
            return


async def test_events_arrive_in_order_with_monotonic_seq(runtime: InProcessRuntime) -> None:
    received: list[Event] = []
    runtime.host("counter", 0)
    collector = asyncio.create_task(_collect(runtime, 30, received))
    await asyncio.sleep(0)
    ref = runtime.actor("counter", "ev")
    for _ in range(20):
        await ref.send("incr", {"publish": True})
    for _ in range(10):
        await ref.call("bump", {"by": 1})
    await asyncio.wait_for(collector, 5)
    assert [e.seq for e in received] == list(range(1, 31))
    assert [e.data["value"] for e in received] == list(range(1, 31))
    assert {e.event for e in received} == {"counterUpdated"}


async def test_seq_survives_sleep_and_failed_commands_publish_nothing(runtime: InProcessRuntime) -> None:
    received: list[Event] = []
    collector = asyncio.create_task(_collect(runtime, 2, received))
    await asyncio.sleep(0)
    ref = runtime.actor("counter", "ev2")
    await ref.send("incr", {"publish": True}, wait=True)
    await runtime.host("counter", 0).sleep_idle(older_than=0)
    await ref.send("incr", {"publish": True}, wait=True)
    await asyncio.wait_for(collector, 5)
    assert [e.seq for e in received] == [1, 2]


async def test_a_failed_write_publishes_nothing_and_leaves_no_gap(runtime: InProcessRuntime) -> None:
    received: list[Event] = []
    collector = asyncio.create_task(_collect(runtime, 2, received))
    await asyncio.sleep(0)
    ref = runtime.actor("counter", "ev3")
    await ref.call("bump", {"by": 1})
    with pytest.raises(CommandFailed, match="boom"):
        await ref.call("bump_then_fail", {})
    await ref.call("bump", {"by": 1})
    await asyncio.wait_for(collector, 5)
    assert [(e.seq, e.data["value"]) for e in received] == [(1, 1), (2, 2)]


async def test_an_idle_stream_with_heartbeats_yields_empty_batches_between_events() -> None:
    hub = EventHub()
    stream = hub.subscribe(heartbeat_s=0.05)
    assert await asyncio.wait_for(anext(stream), 2) == []  # idle: a heartbeat
    hub.publish([Event("t", "e", 1, None)])
    assert await asyncio.wait_for(anext(stream), 2) == [Event("t", "e", 1, None)]
    quiet = hub.subscribe()  # without heartbeats an idle stream yields nothing
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(quiet), 0.2)
    await stream.aclose()
    await quiet.aclose()
