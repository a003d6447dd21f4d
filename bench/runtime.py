"""Runtime figures on real Ray; prints one JSON object.

    .venv/bin/python bench/runtime.py [--instances 1000] [--role audit-log] [--shards 2]

Measures: RSS of the host processes with N awake instances, durable send ack / send-and-wait /
action latency, sustained commands per second into one instance, and a kill -9 of a host with
1,000 queued commands (every command applied exactly once, and how long recovery took).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foundry.config import Settings
from foundry.runtime.keys import shard_of
from foundry.runtime.ray_backend import RayRuntime


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * p))], 3)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _timed(coro: Any) -> float:
    started = time.perf_counter()
    await coro
    return (time.perf_counter() - started) * 1000


async def main(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="foundry-bench-"))
    settings = Settings(
        data_dir=data_dir,
        runtime={
            "backend": "ray",
            "namespace": f"bench-{uuid.uuid4().hex[:6]}",
            "shards": {args.role: args.shards},
            "idle_seconds": 3600,
        },  # type: ignore[arg-type]
    )
    rt = RayRuntime(settings)
    await rt.start()
    role = args.role
    body = {"kind": "bench.event", "payload": {"n": 0}}
    out: dict[str, Any] = {"role": role, "shards": args.shards}

    # 1. N awake instances and the memory they cost.
    keys = [f"inst-{i}" for i in range(args.instances)]
    started = time.perf_counter()
    for i in range(0, len(keys), 50):
        await asyncio.gather(*(rt.actor(role, k).call("list", {"limit": 1}) for k in keys[i : i + 50]))
    out["instances"] = sum(len(v) for v in (await rt.awake()).values() if v)
    out["wake_s"] = round(time.perf_counter() - started, 2)
    pids = [(await rt.host_info(role, s))["pid"] for s in range(args.shards)]
    out["hosts_rss_mb"] = round(sum(_rss_mb(p) for p in set(pids)), 1)

    # 2. Latencies against one awake instance, sequential.
    ref = rt.actor(role, keys[0])
    acks = [await _timed(ref.send("append", body)) for _ in range(400)]
    waits = [await _timed(ref.send("append", body, wait=True)) for _ in range(400)]
    actions = [await _timed(ref.call("list", {"limit": 1})) for _ in range(400)]
    out |= {
        "send_ack_ms_p50": _pct(acks, 0.5),
        "send_ack_ms_p99": _pct(acks, 0.99),
        "send_wait_ms_p50": _pct(waits, 0.5),
        "send_wait_ms_p99": _pct(waits, 0.99),
        "action_ms_p50": _pct(actions, 0.5),
        "action_ms_p99": _pct(actions, 0.99),
    }

    # 3. Throughput into one instance: a burst of sends, until the last one has run.
    ref = rt.actor(role, "throughput")
    await ref.send("append", body, wait=True)
    n = 3000
    started = time.perf_counter()
    for i in range(0, n, 500):
        await asyncio.gather(*(ref.send("append", body) for _ in range(min(500, n - i))))
    await ref.send("append", body, wait=True, timeout=60)
    out["cmds_per_s_one_instance"] = round((n + 1) / (time.perf_counter() - started))

    # 4. Crash: kill -9 a host while 1,000 commands are queued.
    crash_keys = [k for k in (f"crash-{i}" for i in range(400)) if shard_of(k, args.shards) == 0][:10]
    sends = [
        rt.actor(role, k).send("append", {"kind": "bench.crash", "payload": {"n": i}})
        for k in crash_keys
        for i in range(100)
    ]
    await asyncio.gather(*sends)
    pid = (await rt.host_info(role, 0))["pid"]
    killed_at = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    applied = applied_twice = 0
    deadline = time.perf_counter() + 60
    while time.perf_counter() < deadline:
        counts = []
        for k in crash_keys:
            rows = await rt.actor(role, k).call("list", {"kind": "bench.crash", "limit": 1000})
            counts.append([r["payload"]["n"] for r in rows])
        applied = sum(len(set(c)) for c in counts)
        applied_twice = sum(len(c) - len(set(c)) for c in counts)
        if applied >= len(sends):
            break
        await asyncio.sleep(0.05)
    out["crash"] = {
        "sent": len(sends),
        "applied": applied,
        "applied_twice": applied_twice,
        "recovery_s": round(time.perf_counter() - killed_at, 2),
    }
    await rt.close()
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--role", default="audit-log")
    parser.add_argument("--shards", type=int, default=2)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
