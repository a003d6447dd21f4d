"""The signed-in request path over real HTTP; prints one JSON object.

    .venv/bin/python bench/signed_in.py [--backend inprocess|ray] [--requests 2000]

Serves the app with uvicorn (mock mode, fake GitHub), signs in as alice (a member of acme) and
sends ``GET /v1/organizations/acme/audit-log?limit=1`` over one keep-alive connection: session,
membership and the read itself. Figures:

* ``signed_in_get_ms_p50`` / ``_p90`` / ``_p99``: latency of that GET;
* ``actor_calls_per_request``: every actor call it made, on average; ``auth_calls_per_request``:
  those that were session or membership checks (``get_session``, ``app_snapshot``, ``member_role``),
  which the API process's session and membership cache answers once warm;
* ``signed_in_snapshot_get_ms_p50``: ``GET /v1/app`` (session + the app snapshot) on the same
  connection, answered from the API process's snapshot cache once warm
  (``snapshot_actor_calls_per_request`` says how often it still asked an actor);
* ``signed_in_write_ms_p50``: ``POST /v1/app/active-organization`` (a user action that commits and
  publishes), up to 500 of them;
* ``unauthenticated_get_ms_p50``: ``GET /healthz`` on the same connection, the floor of the stack;
* ``signed_in_snapshot_get_ms_p50_raw`` / ``unauthenticated_get_ms_p50_raw``: the same two GETs from a
  bare keep-alive HTTP/1.1 client (a socket, the request bytes and the cookie), which runs in this
  process's event loop beside the server like httpx does but costs it a fraction of httpx's
  client-side work per request: what remains is closer to the server's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foundry.config import Settings
from foundry.http.app import create_app
from foundry.mock import start_fake_github
from foundry.runtime.client import Runtime
from foundry.wiring import build_runtime

PATH = "/v1/organizations/acme/audit-log?limit=1"
AUTH_ACTIONS = {"get_session", "app_snapshot", "member_role"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * p))], 3)


async def _raw_gets(port: int, path: str, cookie: str, n: int) -> list[float]:
    """``n`` GETs of ``path`` over one keep-alive connection speaking just enough HTTP/1.1."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n\r\n".encode()
    out: list[float] = []
    try:
        for _ in range(n):
            start = time.perf_counter()
            writer.write(request)
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            out.append((time.perf_counter() - start) * 1000)
            assert status.split()[1] == b"200", status
            assert not cookie or b'"alice"' in body, body[:200]  # answered as the signed-in user
    finally:
        writer.close()
    return out


def _count_calls(runtime: Runtime, actions: list[str]) -> None:
    real = runtime._call

    async def counted(role: str, key: str, action: str, body: Any) -> tuple[str, Any]:
        actions.append(action)
        return await real(role, key, action, body)

    runtime._call = counted  # type: ignore[method-assign]


async def _timed(client: httpx.AsyncClient, path: str, n: int) -> list[float]:
    out: list[float] = []
    for _ in range(n):
        start = time.perf_counter()
        response = await client.get(path)
        out.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, response.text
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    port = _free_port()
    base = Settings(
        data_dir=Path(tempfile.mkdtemp(prefix="foundry-signed-in-bench-")),
        mode="mock",
        port=port,
        log_level="WARNING",
        runtime={"backend": args.backend, "namespace": f"bench-{uuid.uuid4().hex[:6]}", "idle_seconds": 3600},  # type: ignore[arg-type]
    )
    fake, settings = start_fake_github(base)
    runtime = build_runtime(settings)
    await runtime.start()
    app = create_app(settings, runtime=runtime, fake_github=fake)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    actions: list[str] = []
    _count_calls(runtime, actions)
    out: dict[str, Any] = {"backend": args.backend, "requests": args.requests}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            assert (await client.post("/v1/auth/mock/sign-in", json={"login": "alice"})).status_code == 200
            for _ in range(1000):
                if (await client.get("/v1/app")).json()["organizationSync"]["status"] == "synced":
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(1.0)  # the host streams are live (the cache trusts them)
            await _timed(client, PATH, 200)  # warm-up: connections, caches, actors awake
            actions.clear()
            latencies = await _timed(client, PATH, args.requests)
            out["signed_in_get_ms_p50"] = _pct(latencies, 0.5)
            out["signed_in_get_ms_p90"] = _pct(latencies, 0.9)
            out["signed_in_get_ms_p99"] = _pct(latencies, 0.99)
            out["actor_calls_per_request"] = round(len(actions) / args.requests, 3)
            out["auth_calls_per_request"] = round(
                sum(1 for a in actions if a in AUTH_ACTIONS) / args.requests, 3
            )
            # A snapshot read: session + the app snapshot, answered from the snapshot cache once warm.
            await _timed(client, "/v1/app", 200)
            actions.clear()
            snapshot = await _timed(client, "/v1/app", args.requests)
            out["signed_in_snapshot_get_ms_p50"] = _pct(snapshot, 0.5)
            out["snapshot_actor_calls_per_request"] = round(len(actions) / args.requests, 3)
            # A write: one user action that commits and publishes (the seq lands in the cookie).
            writes = []
            for _ in range(min(args.requests, 500)):
                began = time.perf_counter()
                response = await client.post("/v1/app/active-organization", json={"organizationId": "acme"})
                writes.append((time.perf_counter() - began) * 1000)
                assert response.status_code == 200, response.text
            out["signed_in_write_ms_p50"] = _pct(writes, 0.5)
            out["unauthenticated_get_ms_p50"] = _pct(await _timed(client, "/healthz", args.requests), 0.5)
            cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
            raw = await _raw_gets(port, "/v1/app", cookie, args.requests)
            out["signed_in_snapshot_get_ms_p50_raw"] = _pct(raw, 0.5)
            raw_floor = await _raw_gets(port, "/healthz", "", args.requests)
            out["unauthenticated_get_ms_p50_raw"] = _pct(raw_floor, 0.5)
    finally:
        server.should_exit = True
        await serving
        await runtime.close()
        fake.stop()
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["inprocess", "ray"], default="inprocess")
    parser.add_argument("--requests", type=int, default=2000)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
