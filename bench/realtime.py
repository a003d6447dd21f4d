"""Realtime fan-out latency on real Ray + real uvicorn; prints one JSON row per subscriber count.

    .venv/bin/python bench/realtime.py [--subscribers 1,10,100] [--events 200] [--rate 50]

This process is the server: a local Ray (as the integration tests start it), the actor runtime, the
`RealtimeGateway` and uvicorn (websockets-sansio) on a free port. For each subscriber count N a
*separate* client process opens N websockets on one topic (so the clients' loop never shares the
server's), waits for every snapshot and then asks the server to run the mutations: ``--events``
durable ``bump`` commands at ``--rate`` per second, each publishing one event that carries the time
the command was sent. Latency = receipt at the client minus command sent (``p50_ms``/``p99_ms``)
and minus handler commit (``from_commit_p50_ms``). ``delivered`` counts events received in order.

Row: ``{"subscribers","p50_ms","p99_ms","delivered","expected",...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.realtime import snapshot_role  # noqa: E402

ROLE = snapshot_role.ROLE_NAME


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * p))], 2)


# ------------------------------------------------------------------------------------------ clients


async def run_clients(args: argparse.Namespace) -> dict[str, Any]:
    """N websockets on one topic; returns latency figures (runs in the client process)."""
    import httpx
    from websockets.asyncio.client import connect

    topic = f"board:{args.key}"
    url = f"ws://127.0.0.1:{args.port}/v1/realtime?user=bench"
    compression = None if args.no_compression else "deflate"
    conns = [await connect(url, compression=compression, max_size=2**20) for _ in range(args.n)]
    from_sent: list[float] = []
    from_commit: list[float] = []
    delivered = [0] * args.n
    out_of_order = 0
    ready = asyncio.Event()
    snapshots = 0

    async def follow(i: int) -> None:
        nonlocal out_of_order, snapshots
        conn = conns[i]
        await conn.send(json.dumps({"op": "subscribe", "topic": topic}))
        last = -1
        while delivered[i] < args.events:
            raw = await conn.recv()
            now = time.time()
            frame = json.loads(raw)
            if "op" in frame:  # subscribed / error
                if frame["op"] == "error":
                    raise RuntimeError(f"the server refused: {frame}")
                continue
            if frame["event"] == "snapshot":
                snapshots += 1
                last = frame["seq"]
                if snapshots == args.n:
                    ready.set()
                continue
            data = frame["data"]
            if frame["seq"] != last + 1:
                out_of_order += 1
            last = frame["seq"]
            delivered[i] += 1
            from_sent.append((now - data["sentAt"]) * 1000)
            from_commit.append((now - data["committedAt"]) * 1000)

    tasks = [asyncio.create_task(follow(i)) for i in range(args.n)]
    await asyncio.wait_for(ready.wait(), 60)
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"http://127.0.0.1:{args.port}/bench/mutate",
            json={"key": args.key, "events": args.events, "rate": args.rate},
            timeout=30,
        )
        response.raise_for_status()
    done, pending = await asyncio.wait(tasks, timeout=args.events / args.rate + 30)
    for task in pending:
        task.cancel()
    for task in done:
        task.result()  # a refused subscription or a broken socket fails the run loudly
    for conn in conns:
        await conn.close()
    return {
        "subscribers": args.n,
        "p50_ms": _pct(from_sent, 0.5),
        "p99_ms": _pct(from_sent, 0.99),
        "delivered": sum(delivered),
        "expected": args.n * args.events,
        "out_of_order": out_of_order,
        "from_commit_p50_ms": _pct(from_commit, 0.5),
        "from_commit_p99_ms": _pct(from_commit, 0.99),
        "max_ms": round(max(from_sent), 2) if from_sent else None,
    }


# ------------------------------------------------------------------------------------------ server


async def run_server(args: argparse.Namespace) -> list[dict[str, Any]]:
    import ray
    import uvicorn
    from fastapi import FastAPI, WebSocket

    from foundry.config import Settings
    from foundry.realtime import RealtimeGateway, TopicRegistry, TopicSpec, make_websocket_route
    from foundry.runtime.ray_backend import RayRuntime

    # Host processes import the test role by module name.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    namespace = f"bench-rt-{uuid.uuid4().hex[:6]}"
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        namespace=namespace,
        object_store_memory=128 * 1024 * 1024,
    )
    settings = Settings(
        data_dir=Path(tempfile.mkdtemp(prefix="foundry-bench-rt-")),
        log_level="WARNING",
        runtime={
            "backend": "ray",
            "namespace": namespace,
            "idle_seconds": 3600,
            "extra_roles": {ROLE: snapshot_role.MODULE},
        },  # type: ignore[arg-type]
    )
    runtime = RayRuntime(settings)
    await runtime.start()
    gateway = RealtimeGateway(runtime, TopicRegistry([TopicSpec("board", ROLE)]))
    await gateway.start()

    async def authenticate(websocket: WebSocket) -> str | None:
        return websocket.query_params.get("user")

    async def authorize(user_id: str, topic: str) -> bool:
        return True

    app = FastAPI()
    app.add_api_websocket_route("/v1/realtime", make_websocket_route(gateway, authenticate, authorize))
    mutators: set[asyncio.Task[None]] = set()

    async def mutate(key: str, events: int, rate: float) -> None:
        ref = runtime.actor(ROLE, key)
        started = time.perf_counter()
        for i in range(events):
            await ref.send("bump", {"sent_at": time.time()})
            await asyncio.sleep(max(0.0, started + (i + 1) / rate - time.perf_counter()))

    @app.post("/bench/mutate")
    async def start_mutations(body: dict[str, Any]) -> dict[str, bool]:
        task = asyncio.create_task(mutate(body["key"], int(body["events"]), float(body["rate"])))
        mutators.add(task)
        task.add_done_callback(mutators.discard)
        return {"started": True}

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app, ws="websockets-sansio", ws_per_message_deflate=False, lifespan="off", log_level="warning"
        )
    )
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)

    rows = []
    try:
        for n in args.subscribers:
            key = f"bench-{n}-{uuid.uuid4().hex[:6]}"
            await runtime.actor(ROLE, key).send("bump", {"by": 0}, wait=True)  # wake it before timing
            command = [sys.executable, __file__, "client", "--port", str(port), "--n", str(n), "--key", key]
            command += ["--events", str(args.events), "--rate", str(args.rate)]
            if args.no_compression:
                command.append("--no-compression")
            proc = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
            stdout, _ = await proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"client process for {n} subscribers failed ({proc.returncode})")
            row = json.loads(stdout.decode().strip().splitlines()[-1])
            row["gateway_streams_opened"] = gateway.stats()["streams_opened"]
            # Everything shares 2 cores here; the load says how much else was running.
            row["loadavg_1m"] = round(os.getloadavg()[0], 2)
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        await gateway.close()
        server.should_exit = True
        await serving
        await runtime.close()
        ray.shutdown()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="mode")
    client = sub.add_parser("client", help="internal: the websocket clients of one run")
    client.add_argument("--port", type=int, required=True)
    client.add_argument("--n", type=int, required=True)
    client.add_argument("--key", required=True)
    client.add_argument("--events", type=int, required=True)
    client.add_argument("--rate", type=float, required=True)
    client.add_argument("--no-compression", action="store_true")
    parser.add_argument("--subscribers", default="1,10,100", help="comma-separated subscriber counts")
    parser.add_argument("--events", type=int, default=200, help="mutations per run")
    parser.add_argument("--rate", type=float, default=50.0, help="mutations per second")
    parser.add_argument("--no-compression", action="store_true", help="clients refuse permessage-deflate")
    args = parser.parse_args()
    if args.mode == "client":
        print(json.dumps(asyncio.run(run_clients(args))))
        return
    args.subscribers = [int(n) for n in args.subscribers.split(",")]
    asyncio.run(run_server(args))


if __name__ == "__main__":
    main()
