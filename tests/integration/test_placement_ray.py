"""Hosts packed into few processes on real Ray, as ``runtime.placement`` says."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from foundry.errors import InvalidInput
from foundry.runtime.placement import DATA_LABEL, all_hosts
from foundry.runtime.ray_backend import RayRuntime
from tests.conftest import TEST_NODE_LABEL, make_settings

pytestmark = pytest.mark.ray


@pytest.fixture
async def packed(ray_cluster: None, tmp_path: Path) -> AsyncIterator[RayRuntime]:
    """The default placement plus the counter role's second shard in a process of its own."""
    settings = make_settings(
        tmp_path / "data",
        runtime={
            "backend": "ray",
            "namespace": f"placement-{uuid.uuid4().hex[:8]}",
            "shards": {"counter": 2},
            "placement": {"task": "tasks", "sandbox": "tasks", "counter.1": "counters"},
            "idle_seconds": 3600,
        },
    )
    rt = RayRuntime(settings)
    await rt.start()
    yield rt
    await rt.stop_hosts()
    await rt.close()


async def pids(rt: RayRuntime) -> dict[str, int]:
    return {
        f"{role}.{shard}": (await rt.host_info(role, shard))["pid"] for role, shard in all_hosts(rt.settings)
    }


@pytest.mark.timeout(300)
async def test_every_host_runs_in_the_process_its_placement_names_and_survives_a_kill_together(
    packed: RayRuntime,
) -> None:
    rt = packed
    where = await pids(rt)
    # Eight hosts (six roles, the counter's two shards) in exactly three processes.
    assert len(where) == 8
    assert len(set(where.values())) == 3, where
    assert where["task.0"] == where["sandbox.0"]
    assert where["counter.1"] not in (where["counter.0"], where["task.0"])
    assert (
        len({where[h] for h in ("organization.0", "user.0", "github-data.0", "audit-log.0", "counter.0")})
        == 1
    )

    # Hosts of one process reach each other, and hosts of other processes, alike (outbox sends).
    keys = {
        shard: next(f"k{i}" for i in range(100) if rt.shard_for("counter", f"k{i}") == shard)
        for shard in (0, 1)
    }
    for source, target in ((0, 1), (1, 0), (0, 0)):
        await rt.actor("counter", keys[source]).send("forward", {"to": keys[target], "by": 1}, wait=True)
    await until_value(rt, keys[1], 1)
    await until_value(rt, keys[0], 2)

    # A kill -9 of the shared process brings back every host in it, with its queued work.
    main_pid = where["organization.0"]
    for _ in range(50):
        await rt.actor("counter", keys[0]).send("incr", {"by": 1})
    os.kill(main_pid, signal.SIGKILL)
    await until_value(rt, keys[0], 52)
    after = await pids(rt)
    assert after["organization.0"] == after["counter.0"] != main_pid
    assert after["counter.1"] == where["counter.1"]  # another process: untouched
    # The restart shows in the metrics an operator scrapes.
    scraped = await rt.process_metrics(30)
    assert "foundry_host_process_restarts_total 1\n" in scraped["main"]
    assert "foundry_host_process_restarts_total 0\n" in scraped["counters"]


async def until_value(rt: RayRuntime, key: str, expected: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = (await rt.actor("counter", key).call("get"))["value"]
        if value == expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"counter {key} is {value}, expected {expected}")


async def test_a_placement_naming_an_unknown_role_or_shard_is_refused_at_start(
    ray_cluster: None, tmp_path: Path
) -> None:
    for placement, named in (({"tsk": "x"}, "'tsk'"), ({"counter.5": "x"}, "'counter.5'")):
        settings = make_settings(
            tmp_path / "data",
            runtime={"backend": "ray", "namespace": f"bad-{uuid.uuid4().hex[:8]}", "placement": placement},
        )
        with pytest.raises(InvalidInput, match=named):
            await RayRuntime(settings).start()


async def test_runtime_nodes_naming_a_label_no_node_has_or_an_unknown_process_is_refused_at_start(
    ray_cluster: None, tmp_path: Path
) -> None:
    for nodes, named in (
        ({"main": "elsewhere"}, "foundry-data=elsewhere"),
        ({"mian": TEST_NODE_LABEL}, "'mian'"),
    ):
        settings = make_settings(
            tmp_path / "data",
            runtime={"backend": "ray", "namespace": f"bad-{uuid.uuid4().hex[:8]}", "nodes": nodes},
        )
        with pytest.raises(InvalidInput, match=named):
            await RayRuntime(settings).start()


async def test_a_pinned_process_runs_on_the_node_with_its_data_label(
    ray_cluster: None, tmp_path: Path
) -> None:
    import ray

    settings = make_settings(
        tmp_path / "data",
        runtime={
            "backend": "ray",
            "namespace": f"pinned-{uuid.uuid4().hex[:8]}",
            "nodes": {"tasks": TEST_NODE_LABEL},
            "idle_seconds": 3600,
        },
    )
    rt = RayRuntime(settings)
    await rt.start()
    try:
        labelled = [
            n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Labels"].get(DATA_LABEL) == TEST_NODE_LABEL
        ]
        node = (await rt.host_info("task", 0))["node"]
        assert node["id"] in labelled
        assert node["dataLabel"] == TEST_NODE_LABEL
        await rt.actor("counter", "pinned").send("incr", {"by": 1}, wait=True)
        assert (await rt.actor("counter", "pinned").call("get"))["value"] == 1
    finally:
        await rt.stop_hosts()
        await rt.close()
