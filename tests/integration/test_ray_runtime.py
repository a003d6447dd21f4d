"""The runtime on real Ray: routing, crash recovery with exactly-once effects, ordered event streams."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from typing import Any

import pytest

from foundry.config import Settings
from foundry.errors import ActorUnavailable, InvalidInput, NotFound
from foundry.runtime.holder_liveness import holder_gone_check
from foundry.runtime.host_lock import Deployment
from foundry.runtime.keys import shard_of
from foundry.runtime.placement import process_name, process_of
from foundry.runtime.ray_backend import RayRuntime

pytestmark = pytest.mark.ray


async def _settled(runtime: RayRuntime, key: str, value: int) -> dict[str, Any]:
    """Counter ``key``'s state once its value reaches ``value`` (or after 15 s, for the assert)."""
    for _ in range(300):
        state: dict[str, Any] = await runtime.actor("counter", key).call("get")
        if state["value"] == value:
            break
        await asyncio.sleep(0.05)
    return state


async def test_commands_are_routed_to_the_shard_that_owns_the_key(ray_runtime: RayRuntime) -> None:
    prefix = uuid.uuid4().hex[:6]
    keys = [f"{prefix}-{i}" for i in range(40)]
    results = await asyncio.gather(
        *(ray_runtime.actor("counter", k).send("incr", {"by": 2}, wait=True) for k in keys)
    )
    assert results == [{"value": 2}] * 40
    awake = {shard: set(await ray_runtime.host_call("counter", shard, "awake")) for shard in (0, 1)}
    for key in keys:
        assert key in awake[shard_of(key, 2)]
        assert key not in awake[1 - shard_of(key, 2)]
    assert {shard_of(k, 2) for k in keys} == {0, 1}


async def test_kill_9_with_1000_queued_commands_applies_each_exactly_once(ray_runtime: RayRuntime) -> None:
    prefix = uuid.uuid4().hex[:6]
    # Every key on shard 0, so one kill hits them all.
    keys = [k for k in (f"{prefix}-{i}" for i in range(200)) if shard_of(k, 2) == 0][:10]
    for key in keys:  # block each loop so the queue is still full when the host dies
        await ray_runtime.actor("counter", key).send("slow", {"seconds": 1.0})
    sends = [
        ray_runtime.actor("counter", key).send("incr", {"tag": f"{key}:{i}"})
        for key in keys
        for i in range(100)
    ]
    acks = await asyncio.gather(*sends)
    assert len(acks) == 1000
    waiter = asyncio.create_task(
        ray_runtime.actor("counter", keys[0]).send(
            "incr", {"by": 0, "tag": "waiter"}, wait=True, timeout=30, command_id=f"{prefix}-waiter"
        )
    )
    pid = (await ray_runtime.host_info("counter", 0))["pid"]
    os.kill(pid, signal.SIGKILL)

    # The caller in flight retries with its command id and gets its result exactly once.
    assert (await asyncio.wait_for(waiter, 60))["value"] == 100
    for key in keys:
        state = await _settled(ray_runtime, key, 100)
        assert state["value"] == 100, key
        tags = [t for t in state["tags"] if t != "waiter"]
        assert sorted(tags) == sorted(f"{key}:{i}" for i in range(100))
    assert (await ray_runtime.host_info("counter", 0))["pid"] != pid


async def test_event_stream_is_ordered(ray_runtime: RayRuntime) -> None:
    key = f"ev-{uuid.uuid4().hex[:6]}"
    shard = shard_of(key, 2)
    received: list[int] = []
    ready = asyncio.Event()

    async def consume() -> None:
        stream = ray_runtime.subscribe("counter", shard)
        ready.set()
        async for batch in stream:
            received.extend(e.data["value"] for e in batch if e.topic == f"counter:{key}")
            if len(received) >= 200:
                return

    task = asyncio.create_task(consume())
    await ready.wait()
    await asyncio.sleep(0.5)  # let the generator attach on the host
    ref = ray_runtime.actor("counter", key)
    await asyncio.gather(*(ref.send("incr", {"publish": True}) for _ in range(200)))
    await asyncio.wait_for(task, 30)
    assert received == list(range(1, 201))


async def test_a_burst_of_sends_goes_in_few_calls_and_a_kill_9_mid_burst_applies_each_acked_once(
    ray_runtime: RayRuntime,
) -> None:
    prefix = uuid.uuid4().hex[:6]
    keys = [k for k in (f"{prefix}-{i}" for i in range(200)) if shard_of(k, 2) == 0][:10]
    for key in keys:  # awake, so the burst measures acknowledgements only
        await ray_runtime.actor("counter", key).send("incr", {"by": 0}, wait=True)
    pid = (await ray_runtime.host_info("counter", 0))["pid"]
    ids = [(key, f"{key}:{i}") for i in range(200) for key in keys]
    # A redelivery of every 50th command in the same burst: acknowledged as a duplicate, run once.
    plan = ids + ids[::50]

    async def send(key: str, command_id: str) -> dict[str, object]:
        return await ray_runtime.actor("counter", key).send(  # type: ignore[no-any-return]
            "incr", {"tag": command_id}, command_id=command_id, timeout=60
        )

    burst = [asyncio.ensure_future(send(key, command_id)) for key, command_id in plan]
    await asyncio.sleep(0.05)
    os.kill(pid, signal.SIGKILL)  # mid-burst: some sends acknowledged, others in flight or waiting
    answers = await asyncio.gather(*burst, return_exceptions=True)

    failed = [a for a in answers if isinstance(a, BaseException)]
    assert not failed, failed[:3]  # the restart is ridden out: every sender gets its answer
    # Each sender got the answer for its own command, not a neighbour's in the same batch.
    assert [a["commandId"] for a in answers] == [c for _, c in plan]  # type: ignore[index]
    # They went together: far fewer Ray calls than sends.
    calls = sum(b.calls for b in ray_runtime._batchers.values())
    sends = sum(b.sends for b in ray_runtime._batchers.values())
    assert sends >= len(plan)
    assert calls < sends / 5, (calls, sends)
    for key in keys:
        state = await _settled(ray_runtime, key, 200)
        assert sorted(state["tags"]) == sorted(c for k, c in ids if k == key), key
    assert (await ray_runtime.host_info("counter", 0))["pid"] != pid


async def test_a_bad_send_in_a_coalesced_burst_fails_alone_with_its_own_error(
    ray_runtime: RayRuntime,
) -> None:
    ref = ray_runtime.actor("counter", f"mixed-{uuid.uuid4().hex[:6]}")
    await ref.send("incr", {"by": 0}, wait=True)
    good = [ref.send("incr", {"by": 1}) for _ in range(100)]
    unknown = [ref.send("no_such_command", {}) for _ in range(3)]
    invalid = [ref.send("incr", {"by": "many"}) for _ in range(3)]
    answers = await asyncio.gather(*good, *unknown, *invalid, return_exceptions=True)
    assert not [a for a in answers[:100] if isinstance(a, BaseException)]
    assert all(isinstance(a, NotFound) and "no_such_command" in str(a) for a in answers[100:103])
    assert all(isinstance(a, InvalidInput) and a.fields == ["by"] for a in answers[103:])
    assert (await _settled(ray_runtime, ref.key, 100))["value"] == 100


async def test_a_host_process_never_starts_another_one_that_is_not_running(ray_settings: Settings) -> None:
    # While Foundry stops, a host still closing calls one that was just ended: it must fail at once,
    # not start a fresh copy of it (which then ran turns, and held the stop for half a minute).
    import ray

    namespace = f"ended-{uuid.uuid4().hex[:8]}"
    settings = ray_settings.model_copy(
        update={"runtime": ray_settings.runtime.model_copy(update={"namespace": namespace})}
    )
    inside_a_host = RayRuntime(settings)
    inside_a_host.creates_hosts = False
    started = time.monotonic()
    with pytest.raises(ActorUnavailable, match="is not running"):
        await inside_a_host.host_info("counter", 0)
    assert time.monotonic() - started < 5
    with pytest.raises(ValueError, match="Failed to look up actor"):
        ray.get_actor(process_name(process_of(settings, "counter", 0)), namespace=namespace)


async def test_a_deployment_is_gone_from_its_cluster_only_once_it_has_no_host_process(
    ray_runtime: RayRuntime,
) -> None:
    # A data directory's holder in this cluster whose lock is free: its hosts are restarting (Ray
    # still lists them) or ended for good (not listed); only the latter lets another deployment in.
    ours = ray_runtime.deployment()
    await ray_runtime.host_info("counter", 0)  # its hosts run
    gone = holder_gone_check(Deployment("another", ours.cluster))
    assert not gone(ours)
    assert gone(Deployment("no-hosts-here", ours.cluster))
