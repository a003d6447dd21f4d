"""Two Ray nodes on one machine, each holding the data of the host processes pinned to it; the worker
node is killed (raylet and all, SIGKILL) in the middle of a burst of commands, then comes back.

Run in a process of its own (it starts its own cluster): ``python -m tests.integration.two_nodes
WORKDIR [--commands N]``. Prints one JSON object; `test_two_nodes_ray` checks it, and
``bench/cluster.py`` reports it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

#: Data labels of the two nodes.
HEAD_LABEL = "node-a"
WORKER_LABEL = "node-b"
#: How fast the control store declares a silent node dead (Ray's default takes about 15 s).
FAST_NODE_DEATH = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}
#: How long after the kill the node is surely declared dead, and how long it stays away.
GONE_AFTER_S = 3.0
ABSENT_S = 6.0


async def run(workdir: Path, commands: int) -> dict[str, Any]:
    import ray
    from ray.cluster_utils import Cluster

    from foundry.errors import FoundryError
    from foundry.runtime.placement import DATA_LABEL
    from foundry.runtime.ray_backend import RayRuntime
    from tests.conftest import make_settings

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "labels": {DATA_LABEL: HEAD_LABEL},
            "num_cpus": 1,
            "include_dashboard": False,
            "_system_config": {"worker_niceness": 0, **FAST_NODE_DEATH},
        },
    )
    worker = cluster.add_node(labels={DATA_LABEL: WORKER_LABEL}, num_cpus=1)
    settings = make_settings(
        workdir / "data",
        runtime={
            "backend": "ray",
            "ray_address": cluster.address,
            "namespace": f"two-nodes-{uuid.uuid4().hex[:6]}",
            "placement": {"task": "tasks", "sandbox": "tasks", "counter": "counters"},
            "nodes": {"main": HEAD_LABEL, "tasks": HEAD_LABEL, "counters": WORKER_LABEL},
            "idle_seconds": 3600,
        },
    )
    rt = RayRuntime(settings)
    out: dict[str, Any] = {"nodes": 2, "commands": commands}
    try:
        await rt.start()
        out["placed"] = {
            "counter": (await rt.host_info("counter", 0))["node"]["dataLabel"],
            "organization": (await rt.host_info("organization", 0))["node"]["dataLabel"],
        }
        key = "burst"
        acked: list[str] = []
        errors: list[str] = []
        error_s: list[float] = []

        async def send(tag: str) -> None:
            began = time.monotonic()
            try:
                await rt.actor("counter", key).send("incr", {"tag": tag}, wait=True, timeout=60)
                acked.append(tag)
            except FoundryError as exc:
                errors.append(f"{type(exc).__name__}: {exc.detail}")
                error_s.append(time.monotonic() - began)

        killed_at = returned_at = None
        phases: list[tuple[int, float, int, int]] = []
        chunk = 25
        for start in range(0, commands, chunk):
            if start == (commands // 3) // chunk * chunk:
                cluster.remove_node(worker, allow_graceful=False)  # SIGKILL: raylet and its workers
                killed_at = time.monotonic()
                # The next third is sent while the node is known to be gone (a health check or two).
                await asyncio.sleep(GONE_AFTER_S)
            if start == (2 * commands // 3) // chunk * chunk:
                # Long enough away that the control store has declared the node dead.
                await asyncio.sleep(max(0.0, killed_at + ABSENT_S - time.monotonic()))  # type: ignore[operator]
                # The node's disk (this machine's) still holds the data; a new raylet with its label.
                worker = cluster.add_node(labels={DATA_LABEL: WORKER_LABEL}, num_cpus=1)
                returned_at = time.monotonic()
            began = time.monotonic()
            before = len(acked), len(errors)
            await asyncio.gather(*(send(f"t{i}") for i in range(start, min(commands, start + chunk))))
            phases.append(
                (start, round(time.monotonic() - began, 2), len(acked) - before[0], len(errors) - before[1])
            )
        assert returned_at is not None
        recovered = None
        while recovered is None and time.monotonic() - returned_at < 60:
            try:
                await asyncio.wait_for(rt.actor("counter", key).call("get"), 5)
                recovered = time.monotonic() - returned_at
            except (FoundryError, TimeoutError):
                await asyncio.sleep(0.2)
        tags = (await rt.actor("counter", key).call("get"))["tags"]
        out.update(
            commands_acked=len(acked),
            commands_failed=len(errors),
            commands_applied=len(set(tags)),
            acked_not_applied=len(set(acked) - set(tags)),
            applied_twice=len(tags) - len(set(tags)),
            error_samples=sorted(set(errors))[:5],
            error_s_max=round(max(error_s, default=0.0), 2),
            error_s_p50=round(statistics.median(error_s), 2) if error_s else 0.0,
            node_restart_recovery_s=None if recovered is None else round(recovered, 2),
            phases=phases,
            placed_after=(await rt.host_info("counter", 0))["node"]["dataLabel"],
        )
        return out
    finally:
        await rt.stop_hosts()
        await rt.close()
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--commands", type=int, default=500)
    args = parser.parse_args()
    # Host processes import the test role (tests.runtime.counter_role) from this checkout.
    root = str(Path(__file__).resolve().parents[2])
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, root)
    print(json.dumps(asyncio.run(run(args.workdir, args.commands))))


if __name__ == "__main__":
    main()
