"""A burst of task creations against a real `foundry serve`; prints one JSON object.

    .venv/bin/python bench/burst.py [--tasks 200] [--timeout 900]

Starts `foundry serve` (mock mode, a local Ray, real sandbox-agent servers with the demo agent) on a
temporary data directory, signs in as alice and creates ``--tasks`` tasks at once (each with a first
prompt, 20 requests in flight). The sandbox caps (`sandbox.max_starting`, `sandbox.max_running`) queue
what does not fit; every task must still finish its first turn. Figures:

* ``created`` / ``create_errors``: creations answered 201 / anything else;
* ``completed``: tasks whose first turn ended (idle, no queued message); ``stuck``: the rest at the end;
* ``duration_s``: first creation → last task completed;
* ``peak_rss_mb``: the largest total RSS of every process of the server (Ray's included) plus its
  sandboxes, sampled every second; ``peak_sandbox_servers``: most `sandbox-agent` servers seen at once;
* ``healthz_max_ms`` / ``healthz_p99_ms``: latency of ``GET /healthz``, probed every 200 ms throughout
  (target: every answer within 1 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.faults.procs import ServerProcess

ROCKET = "910001"
ORG = "acme"


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _probe_health(url: str, stop: asyncio.Event, latencies: list[float]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while not stop.is_set():
            began = time.monotonic()
            try:
                await client.get("/healthz")
                latencies.append((time.monotonic() - began) * 1000)
            except httpx.HTTPError:
                latencies.append(10_000.0)
            await asyncio.sleep(0.2)


async def _sample(server: ServerProcess, stop: asyncio.Event, out: dict[str, float]) -> None:
    while not stop.is_set():
        procs = await asyncio.to_thread(server.owned)
        out["peak_rss_mb"] = max(out.get("peak_rss_mb", 0.0), _rss_mb([p.pid for p in procs]))
        servers = sum(1 for p in procs if "sandbox-agent" in p.cmdline.split(" ")[0])
        out["peak_sandbox_servers"] = max(out.get("peak_sandbox_servers", 0), servers)
        await asyncio.sleep(1.0)


async def _signed_in(url: str) -> httpx.AsyncClient:
    client = httpx.AsyncClient(base_url=url, timeout=60)
    response = await client.post("/v1/auth/mock/sign-in", json={"login": "alice"})
    response.raise_for_status()
    for _ in range(300):
        if (await client.get(f"/v1/organizations/{ORG}")).status_code == 200:
            return client
        await asyncio.sleep(0.2)
    raise RuntimeError("the organization never appeared")


async def _create_all(client: httpx.AsyncClient, n: int) -> tuple[list[str], int]:
    gate = asyncio.Semaphore(20)
    created: list[str] = []
    errors = 0

    async def one(i: int) -> None:
        nonlocal errors
        async with gate:
            for _ in range(100):  # 404 until the repositories are synced
                response = await client.post(
                    f"/v1/organizations/{ORG}/tasks", json={"repoId": ROCKET, "prompt": f"Burst note {i}"}
                )
                if response.status_code != 404:
                    break
                await asyncio.sleep(0.3)
            if response.status_code == 201:
                created.append(response.json()["taskId"])
            else:
                errors += 1
                print(f"create {i}: {response.status_code} {response.text[:200]}", file=sys.stderr)

    await asyncio.gather(*(one(i) for i in range(n)))
    return created, errors


async def _completed(client: httpx.AsyncClient, task_ids: list[str]) -> set[str]:
    done: set[str] = set()
    for task_id in task_ids:
        response = await client.get(f"/v1/organizations/{ORG}/tasks/{task_id}")
        if response.status_code != 200:
            continue
        detail = response.json()
        sessions = detail.get("sessions") or []
        if (
            detail["status"] == "idle"
            and sessions
            and all(s["status"] == "idle" and s["queuedMessages"] == 0 for s in sessions)
        ):
            done.add(task_id)
    return done


async def run(tasks: int, timeout: float) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="foundry-burst-"))
    server = ServerProcess(workdir, agent_delay="0.005")
    server.start()
    boot_s = await asyncio.to_thread(server.wait_ready)
    stop = asyncio.Event()
    latencies: list[float] = []
    sampled: dict[str, float] = {}
    background = [
        asyncio.create_task(_probe_health(server.url, stop, latencies)),
        asyncio.create_task(_sample(server, stop, sampled)),
    ]
    out: dict[str, Any] = {"tasks": tasks, "boot_s": round(boot_s, 1)}
    try:
        client = await _signed_in(server.url)
        began = time.monotonic()
        created, errors = await _create_all(client, tasks)
        out.update(created=len(created), create_errors=errors)
        pending = set(created)
        deadline = began + timeout
        while pending and time.monotonic() < deadline:
            pending -= await _completed(client, sorted(pending))
            if pending:
                await asyncio.sleep(2.0)
        out.update(
            completed=len(created) - len(pending),
            stuck=len(pending),
            duration_s=round(time.monotonic() - began, 1),
        )
        await client.aclose()
    finally:
        stop.set()
        await asyncio.gather(*background, return_exceptions=True)
        code, _took = await asyncio.to_thread(server.stop)
        out["clean_stop_exit"] = code
        leftovers = server.leftovers()
        out["leftover_processes"] = len(leftovers)
        if leftovers:
            out["leftovers"] = leftovers
        server.reap()
    out.update(
        peak_rss_mb=round(sampled.get("peak_rss_mb", 0.0)),
        peak_sandbox_servers=int(sampled.get("peak_sandbox_servers", 0)),
        healthz_max_ms=round(max(latencies, default=0.0), 1),
        healthz_p99_ms=round(_pct(latencies, 0.99), 1),
    )
    if out["stuck"] == 0 and out["leftover_processes"] == 0:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        out["workdir"] = str(workdir)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.tasks, args.timeout))))


if __name__ == "__main__":
    main()
