"""Task flow figures with the local sandbox provider; prints one JSON object.

    .venv/bin/python bench/task_flow.py [--backend ray|inprocess] [--concurrent 20] [--idle 200]

Runs the real stack in mock mode: uvicorn + the actor runtime (Ray by default), the fake GitHub with
local bare remotes, one real sandbox-agent per task running the demo agent. Measures:

* ``create_task_ms_p50`` / ``_p99``: ``POST /v1/organizations/{org}/tasks`` (provisioning continues
  after the response), over every task the bench creates;
* ``first_event_s_p50``: task created → first agent event on the websocket, one task at a time;
* ``concurrent_tasks``: tasks whose sessions were live at once and all finished a turn started
  together (``--concurrent`` are attempted), with that turn's wall time;
* ``idle_task_rss_kb``: the task host's RSS growth per idle materialized task instance, over
  ``--idle`` pull-request tasks (synced as virtual rows, then opened once each: the task actor
  materializes and stays awake idle, without a sandbox).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foundry.config import Settings
from foundry.http.app import create_app
from foundry.mock import start_fake_github
from foundry.runtime.client import Runtime
from foundry.wiring import build_runtime

ROCKET = "910001"


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * p))], 3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _kill_sandboxes_under(root: Path) -> None:
    """Sandbox servers lead their own process groups; make sure none outlives the bench."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cwd = Path(os.readlink(entry / "cwd"))
            if root == cwd or root in cwd.parents:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(int(entry.name), signal.SIGKILL)


async def _sign_in(client: httpx.AsyncClient, runtime: Runtime, login: str) -> None:
    assert (await client.post("/v1/auth/mock/sign-in", json={"login": login})).status_code == 200
    for _ in range(1000):
        app = (await client.get("/v1/app")).json()
        if app["organizationSync"]["status"] == "synced":
            break
        await asyncio.sleep(0.02)
    for _ in range(1000):
        status = await runtime.call("organization", "acme", "github_status")
        if status.get("syncStatus") in ("synced", "error"):
            return
        await asyncio.sleep(0.02)


async def _create(client: httpx.AsyncClient, prompt: str, timings: list[float]) -> dict[str, Any]:
    started = time.perf_counter()
    response = await client.post("/v1/organizations/acme/tasks", json={"repoId": ROCKET, "prompt": prompt})
    timings.append((time.perf_counter() - started) * 1000)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def _wait_idle(client: httpx.AsyncClient, task_id: str, min_turns: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = await client.get(f"/v1/organizations/acme/tasks/{task_id}")
        if response.status_code != 200:
            print(f"task {task_id}: {response.status_code} {response.text}", file=sys.stderr)
            await asyncio.sleep(0.5)
            continue
        detail = response.json()
        session = detail["sessions"][0]
        if detail["status"] == "error":
            return False
        if detail["status"] == "idle" and session["status"] == "idle" and session["queuedMessages"] == 0:
            page = (
                await client.get(
                    f"/v1/organizations/acme/tasks/{task_id}/sessions/{session['sessionId']}/events",
                    params={"limit": 5000},
                )
            ).json()
            if sum(1 for e in page["events"] if e["event"] == "turnEnded") >= min_turns:
                return True
        await asyncio.sleep(0.2)
    return False


async def _host_pid(runtime: Runtime, role: str) -> int:
    if hasattr(runtime, "host_info"):
        return int((await runtime.host_info(role, 0))["pid"])
    return os.getpid()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="foundry-task-bench-"))
    port = _free_port()
    base = Settings(
        data_dir=data_dir,
        mode="mock",
        port=port,
        log_level="WARNING",
        runtime={"backend": args.backend, "namespace": f"bench-{uuid.uuid4().hex[:6]}", "idle_seconds": 3600},  # type: ignore[arg-type]
        sandbox={"agent_env": {"FOUNDRY_DEMO_AGENT_DELAY": "0.02"}},  # type: ignore[arg-type]
    )
    fake, settings = start_fake_github(base)
    for i in range(args.idle):
        fake.add_pull("acme/anvil", None, f"Bench PR {i}", f"bench/pr-{i}", author="alice")
    runtime = build_runtime(settings)
    await runtime.start()
    app = create_app(settings, runtime=runtime, fake_github=fake)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    out: dict[str, Any] = {"backend": args.backend, "provider": settings.sandbox.provider}
    create_ms: list[float] = []
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            await _sign_in(client, runtime, "alice")

            # 1. RSS per idle materialized task instance: open pull requests become virtual tasks in
            #    the sync; opening each one materializes its task actor (no sandbox until a session).
            org = (await client.get("/v1/organizations/acme")).json()
            virtual = [t["taskId"] for t in org["taskSummaries"] if t["isVirtual"]][: args.idle]
            pid = await _host_pid(runtime, "task")
            await asyncio.sleep(0.5)
            before = _rss_kb(pid)
            for task_id in virtual:
                response = await client.get(f"/v1/organizations/acme/tasks/{task_id}")
                assert response.status_code == 200, response.text
            await asyncio.sleep(1.0)
            awake = sum(
                1 for keys in (await runtime.awake()).values() for k in keys if k.startswith("acme:pr-")
            )
            out["idle_task_rss_kb"] = round((_rss_kb(pid) - before) / max(1, len(virtual)), 1)
            out["idle_tasks_measured"] = len(virtual)
            out["idle_tasks_awake"] = awake

            # 2. First agent event on the websocket, one task at a time.
            cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
            ws_url = f"ws://127.0.0.1:{port}/v1/realtime"
            first_event_s: list[float] = []
            async with connect(ws_url, additional_headers={"Cookie": cookie}, max_queue=None) as ws:
                for i in range(args.sequential):
                    started = time.perf_counter()
                    created = await _create(client, f"Sequential note {i}", create_ms)
                    topic = f"session:acme:{created['taskId']}:{created['sessionId']}"
                    await ws.send(json.dumps({"op": "subscribe", "topic": topic}))
                    while True:
                        frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
                        if frame.get("topic") == topic and frame.get("event") == "agentUpdate":
                            first_event_s.append(time.perf_counter() - started)
                            break
                    await ws.send(json.dumps({"op": "unsubscribe", "topic": topic}))
                    assert await _wait_idle(client, created["taskId"], 1, 60)
            if create_ms:
                out["create_task_ms_p50_sequential"] = _pct(create_ms, 0.5)
            out["first_event_s_p50"] = _pct(first_event_s, 0.5)
            out["first_event_s_max"] = round(max(first_event_s), 3)

            # 3. Concurrent tasks: create them back to back, then one turn in all of them at once.
            tasks = [await _create(client, f"Concurrent note {i}", create_ms) for i in range(args.concurrent)]
            started = time.perf_counter()
            ready = await asyncio.gather(*(_wait_idle(client, t["taskId"], 1, 240) for t in tasks))
            out["concurrent_provision_s"] = round(time.perf_counter() - started, 2)
            started = time.perf_counter()
            await asyncio.gather(
                *(
                    client.post(
                        f"/v1/organizations/acme/tasks/{t['taskId']}/sessions/{t['sessionId']}/messages",
                        json={"text": "Everyone at once"},
                    )
                    for t, ok in zip(tasks, ready, strict=True)
                    if ok
                )
            )
            done = await asyncio.gather(
                *(_wait_idle(client, t["taskId"], 2, 240) for t, ok in zip(tasks, ready, strict=True) if ok)
            )
            out["concurrent_tasks"] = sum(1 for ok in done if ok)
            out["concurrent_attempted"] = args.concurrent
            out["concurrent_turn_s"] = round(time.perf_counter() - started, 2)
            out["create_task_ms_p50"] = _pct(create_ms, 0.5)
            out["create_task_ms_p99"] = _pct(create_ms, 0.99)
            out["tasks_created"] = len(create_ms)
    finally:
        server.should_exit = True
        await serving
        provider = getattr(runtime, "services", None)
        if provider is not None:
            with contextlib.suppress(Exception):
                await provider.driver("sandbox").aclose()
        await runtime.close()
        _kill_sandboxes_under(settings.sandbox_root)
        fake.stop()
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["ray", "inprocess"], default="ray")
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--sequential", type=int, default=5)
    parser.add_argument("--idle", type=int, default=200)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
