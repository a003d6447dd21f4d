"""Scale-out figures on real Ray; prints one JSON object.

    .venv/bin/python bench/cluster.py [--commands 500] [--renames 100] [--reads 1000]

1. Footprint: one ``foundry serve`` (its own local Ray; GitHub is a fake this script runs, given to
   it as a configured App), idle after start-up: RSS and PSS summed over every process it started
   (``idle_rss_mb``, ``idle_pss_mb``), Ray's daemons included.
2. Two API processes: a second ``foundry serve`` joins the first one's Ray
   (``FOUNDRY_RUNTIME__RAY_ADDRESS``) with the same data directory and secret key. alice signs in
   through A and reads through B; a websocket on B sees the renames made through A
   (``cross_process_event_ms_p50``: from sending the rename to the frame; ``rename_answered_ms_p50``:
   to the rename's answer; back to back, and ``…_spaced`` 100 ms apart); GET of a task and the
   signed-in ``GET …/audit-log?limit=1`` over keep-alive HTTP on A (``get_task_ms_p50_actor``,
   ``signed_in_get_ms_p50``); ``get_task_ms_p50_cached`` is that GET answered from A's snapshot cache,
   ``get_task_ms_p50_actor`` the same GET with a read-your-writes cookie beyond every cached seq (so
   the task, the organization and the user actor are each asked, as before the cache).
3. Two nodes (``tests/integration/two_nodes.py``): hosts pinned to their data nodes by label, the
   worker node killed mid-burst and brought back: ``commands_acked``, ``commands_applied``,
   ``applied_twice``, ``node_restart_recovery_s``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import wait_until  # noqa: E402
from foundry.drivers.github.fake import FakeGitHub, seed_mock  # noqa: E402
from foundry.mock import github_app_env, seed_mock_remotes  # noqa: E402

ACME_ROCKET = "910001"
FOUNDRY = str(ROOT / ".venv" / "bin" / "foundry")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _p50(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _memory_mb(root: int) -> dict[str, float]:
    """RSS and PSS summed over ``root`` and every process below it."""
    rss = pss = 0
    for pid in _tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
    return {"rss": round(rss / 1024, 1), "pss": round(pss / 1024, 1)}


class Serve:
    """One ``foundry serve`` process in a session of its own."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc = subprocess.Popen(
            [FOUNDRY, "serve"],
            env={**env, "FOUNDRY_PORT": str(port)},
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    async def ready(self, timeout: float = 120) -> None:
        async def probe() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"foundry serve exited: {self.log.read_text()[-2000:]}")
            try:
                async with httpx.AsyncClient(timeout=2) as client:
                    return (await client.get(f"{self.url}/readyz")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_until(probe, timeout, f"{self.url}/readyz")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@contextlib.contextmanager
def fake_github(data_dir: Path) -> Iterator[dict[str, str]]:
    """The seeded fake GitHub, and the environment that configures it as Foundry's GitHub App."""
    fake = seed_mock(FakeGitHub()).start()
    seed_mock_remotes(fake, data_dir / "mock-remotes")
    try:
        yield github_app_env(fake, secrets.token_hex(20))
    finally:
        fake.stop()


async def _sign_in(client: httpx.AsyncClient, login: str) -> None:
    """GitHub sign-in through the fake's OAuth pages, as a browser follows them."""
    start = await client.get("/v1/auth/sign-in/github")
    assert start.status_code in (302, 303, 307), start.text
    authorize = httpx.URL(start.headers["location"])
    async with httpx.AsyncClient(timeout=30) as github:
        approved = await github.get(authorize.copy_add_param("login", login))
    assert approved.status_code == 302, approved.text
    callback = await client.get(approved.headers["location"])
    assert callback.status_code in (200, 302, 303, 307), callback.text
    assert (await client.get("/v1/auth/session")).status_code == 200


async def _timed_gets(client: httpx.AsyncClient, path: str, count: int) -> list[float]:
    out = []
    for _ in range(count):
        began = time.perf_counter()
        response = await client.get(path)
        out.append((time.perf_counter() - began) * 1000)
        assert response.status_code == 200, response.text
    return out


async def _renames(
    client: httpx.AsyncClient, ws: Any, path: str, count: int, spacing: float
) -> tuple[list[float], list[float]]:
    """Rename through A ``count`` times, ``spacing`` seconds apart: (rename → frame on B's websocket,
    rename → its answer) in milliseconds."""
    latencies: list[float] = []
    answered: list[float] = []
    for n in range(count):
        await asyncio.sleep(spacing)
        title = f"Renamed {n} {uuid.uuid4().hex[:6]}"
        began = time.perf_counter()
        response = await client.patch(path, json={"title": title})
        assert response.status_code == 200, response.text
        answered.append((time.perf_counter() - began) * 1000)
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if title in json.dumps(frame.get("data")):
                latencies.append((time.perf_counter() - began) * 1000)
                break
    return latencies, answered


async def api_processes(workdir: Path, renames: int, reads: int) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    data = workdir / "data"
    out: dict[str, Any] = {"api_processes": 2}
    with fake_github(data) as github_env:
        env = {
            **os.environ,
            **github_env,
            "FOUNDRY_DATA_DIR": str(data),
            "FOUNDRY_SECRET_KEY": secrets.token_urlsafe(48),
            "FOUNDRY_LOG_LEVEL": "WARNING",
        }
        a = Serve(env, _free_port(), workdir / "a.log")
        b: Serve | None = None
        try:
            await a.ready()
            await asyncio.sleep(5)  # the first sync and warm-up settle
            memory = _memory_mb(a.proc.pid)
            out["idle_rss_mb"], out["idle_pss_mb"] = memory["rss"], memory["pss"]
            address = json.loads((data / "ray-address").read_text())["address"]
            b = Serve({**env, "FOUNDRY_RUNTIME__RAY_ADDRESS": address}, _free_port(), workdir / "b.log")
            await b.ready()
            async with (
                httpx.AsyncClient(base_url=a.url, timeout=30) as via_a,
                httpx.AsyncClient(base_url=b.url, timeout=30) as via_b,
            ):
                await _sign_in(via_a, "alice")
                via_b.cookies = via_a.cookies  # one sign-in, valid on every API process

                async def synced() -> bool:
                    app = (await via_b.get("/v1/app")).json()
                    return bool(app.get("organizationSync", {}).get("status") == "synced")

                await wait_until(synced, 60, "alice's organizations")
                created = await via_a.post(
                    "/v1/organizations/acme/tasks", json={"repoId": ACME_ROCKET, "prompt": "A note"}
                )
                assert created.status_code == 201, created.text
                task_id = created.json()["taskId"]
                path = f"/v1/organizations/acme/tasks/{task_id}"

                async def readable_on_b() -> bool:
                    return (await via_b.get(path)).status_code == 200

                await wait_until(readable_on_b, 60, "the task through B")
                cookie = "; ".join(f"{k}={v}" for k, v in via_a.cookies.items())
                ws_url = b.url.replace("http://", "ws://") + "/v1/realtime"
                async with connect(ws_url, additional_headers={"Cookie": cookie}, max_queue=None) as ws:
                    await ws.send(json.dumps({"op": "subscribe", "topic": f"task:acme:{task_id}"}))
                    # Back to back (each rename also queues its follow-up work: the organization's
                    # summary, the audit entry), then 100 ms apart, as a person's writes come.
                    for key, spacing in (("", 0.0), ("_spaced", 0.1)):
                        latencies, answered = await _renames(via_a, ws, path, renames, spacing)
                        out[f"cross_process_event_ms_p50{key}"] = _p50(latencies)
                        out[f"rename_answered_ms_p50{key}"] = _p50(answered)
                # Cached: summary, detail and the caller's own state from A's snapshot cache. Actor:
                # the same GET with a read-your-writes cookie beyond every cached seq, so each of the
                # three is asked of its actor (as every GET was before the cache).
                out["get_task_ms_p50_cached"] = _p50(await _timed_gets(via_a, path, reads))
                user_id = (await via_a.get("/v1/app")).json()["user"]["id"]
                beyond = "|".join(
                    f"{topic}!999999999999"
                    for topic in (f"task:acme:{task_id}", "organization:acme", f"viewer-state:{user_id}")
                )
                async with httpx.AsyncClient(base_url=a.url, timeout=30) as uncached:
                    uncached.cookies = via_a.cookies
                    uncached.cookies.set("foundry_seen", beyond)
                    out["get_task_ms_p50_actor"] = _p50(await _timed_gets(uncached, path, reads))
                out["signed_in_get_ms_p50"] = _p50(
                    await _timed_gets(via_a, "/v1/organizations/acme/audit-log?limit=1", reads)
                )
        finally:
            if b is not None:
                b.stop()
            a.stop()
    return out


def two_nodes(workdir: Path, commands: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.two_nodes", str(workdir), "--commands", str(commands)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"two-node run failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    keys = ("nodes", "commands_acked", "commands_failed", "commands_applied", "applied_twice")
    return {k: result[k] for k in keys} | {
        "acked_not_applied": result["acked_not_applied"],
        "node_down_error_s_max": result["error_s_max"],
        "node_restart_recovery_s": result["node_restart_recovery_s"],
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--commands", type=int, default=500)
    parser.add_argument("--renames", type=int, default=100)
    parser.add_argument("--reads", type=int, default=1000)
    parser.add_argument("--no-nodes", action="store_true", help="skip the two-node run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="foundry-cluster-") as tmp:
        workdir = Path(tmp)
        out = await api_processes(workdir / "api", args.renames, args.reads)
        if not args.no_nodes:
            out |= await asyncio.to_thread(two_nodes, workdir / "nodes", args.commands)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
