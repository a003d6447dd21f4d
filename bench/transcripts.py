"""Live transcripts at agent speed; prints one JSON object.

    .venv/bin/python bench/transcripts.py [--backend ray|inprocess] [--sessions 20] [--chunks 2000]
                                          [--stops 5]

Runs the real stack in mock mode (uvicorn, the actor runtime, the fake GitHub, one real sandbox-agent)
with the scripted test agent (``tests/transcripts/scripted_agent.py``) as ``mock``. One task opens
``--sessions`` sessions; each floods ``--chunks`` message chunks at once, all sessions together, so one
task host records them all. Then ``--stops`` floods of 10,000 chunks are stopped right after their first
chunk. Figures:

* ``events_per_s_one_host``: transcript rows recorded per second, first flood chunk to last turn end;
* ``lost`` / ``duplicated``: chunks missing from, or repeated in, the transcripts (events API) and the
  websocket streams (``lost_from_transcripts``: the part missing from the events API); the websockets
  reconnect and resume like the dashboard's (``websocket_reconnects``); ``stuck_turns``: turns without
  exactly one terminal event;
* ``agent_done_to_recorded_ms_p50``: the agent sent its last chunk → the turn's end was recorded
  (``agent_done_to_last_event_recorded_ms_p50``: → its last event was recorded);
* ``stop_to_ended_ms_p50``: ``POST …/stop`` → ``turnCancelled`` on the websocket;
* ``host_rss_mb``: RSS of the task host process at the end;
* ``cpu_s_by_process``: CPU seconds each kind of process the bench started spent during the flood,
  and ``cpu_us_per_event_all_processes``: their sum per recorded event (``cores`` divided by it
  bounds events/s on this machine).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.task_flow import _free_port, _host_pid, _kill_sandboxes_under, _pct, _rss_kb, _sign_in
from foundry.config import Settings
from foundry.http.app import create_app
from foundry.mock import start_fake_github
from foundry.runtime.gc_policy import settle_long_lived
from foundry.wiring import build_runtime

AGENT = Path(__file__).resolve().parents[1] / "tests" / "transcripts" / "scripted_agent.py"
CHUNK = re.compile(r"^#(\d+) $")
TERMINAL = ("turnEnded", "turnFailed", "turnCancelled")
ROCKET = "910001"


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_by_kind(host_pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds of every live process this bench started (its descendants), with their kind."""
    parents: dict[int, int] = {}
    found: dict[int, tuple[str, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            name, rest = (entry / "stat").read_text().split(" (", 1)[1].rsplit(")", 1)
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # exited meanwhile
        fields = rest.split()
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        if pid == os.getpid():
            kind = "api_and_bench"
        elif pid == host_pid:
            kind = "task_host"
        elif b"scripted_agent" in cmdline:
            kind = "agents"
        elif name.startswith("sandbox-agent"):
            kind = "sandbox_agent"
        elif name.startswith("ray::HostProces"):
            kind = "other_hosts"
        else:
            kind = "ray_daemons_and_other"
        found[pid] = (kind, (int(fields[11]) + int(fields[12])) / tick)

    def descends(pid: int) -> bool:
        for _ in range(64):
            if pid == os.getpid():
                return True
            pid = parents.get(pid, 0)
            if pid <= 1:
                return False
        return False

    return {pid: v for pid, v in found.items() if descends(pid)}


def _cpu_spent(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    spent: dict[str, float] = {}
    for pid, (kind, cpu) in after.items():
        spent[kind] = spent.get(kind, 0.0) + cpu - before.get(pid, (kind, 0.0))[1]
    return {kind: round(cpu, 2) for kind, cpu in sorted(spent.items(), key=lambda kv: -kv[1])}


def _chunks(events: list[dict[str, Any]]) -> list[int]:
    out = []
    for e in events:
        if e["event"] == "agentUpdate" and e["data"]["kind"] == "agent_message_chunk":
            match = CHUNK.match(e["data"]["update"]["content"]["text"])
            if match:
                out.append(int(match.group(1)))
    return out


def _lost_and_duplicated(numbers: list[int], expected: int) -> tuple[int, int]:
    return len(set(range(1, expected + 1)) - set(numbers)), len(numbers) - len(set(numbers))


async def _log(client: httpx.AsyncClient, task_id: str, session_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    since = 0
    while True:
        page = (
            await client.get(
                f"/v1/organizations/acme/tasks/{task_id}/sessions/{session_id}/events",
                params={"since": since, "limit": 5000},
            )
        ).json()
        out.extend(page["events"])
        if not page["more"]:
            return out
        since = page["nextSince"]


async def _wait_detail(
    client: httpx.AsyncClient, task_id: str, predicate: Any, timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        detail = (await client.get(f"/v1/organizations/acme/tasks/{task_id}")).json()
        if predicate(detail) or time.monotonic() > deadline:
            return dict(detail)
        await asyncio.sleep(0.2)


class Socket:
    """One websocket reading a few session topics in the background, as the dashboard does: when the
    gateway closes it (a slow consumer gets code 1013), it reconnects and resubscribes after the last
    seq it holds, so what it missed is replayed."""

    def __init__(self, url: str, cookie: str) -> None:
        self.url, self.cookie = url, cookie
        self.frames: dict[str, list[dict[str, Any]]] = {}
        self.arrived: dict[tuple[str, str], float] = {}
        self.reconnects = 0
        self._resumed_after: dict[str, int] = {}
        self._stack = contextlib.AsyncExitStack()
        self._task: asyncio.Task[None] | None = None

    async def open(self, topics: list[str]) -> None:
        for topic in topics:
            self.frames[topic] = []
        await self._connect()
        self._task = asyncio.create_task(self._read())

    async def _connect(self) -> None:
        self.ws = await self._stack.enter_async_context(
            connect(self.url, additional_headers={"Cookie": self.cookie}, max_queue=None)
        )
        for topic, frames in self.frames.items():
            since = {"since": frames[-1]["seq"]} if frames else {}
            self._resumed_after[topic] = frames[-1]["seq"] if frames else -1
            await self.ws.send(json.dumps({"op": "subscribe", "topic": topic, **since}))

    async def _read(self) -> None:
        while True:
            try:
                async for raw in self.ws:
                    frame = json.loads(raw)
                    topic = frame.get("topic")
                    if "seq" in frame and topic in self.frames:
                        if frame["seq"] <= self._resumed_after.get(topic, -1):
                            continue  # a resubscription's snapshot or replay of what it already holds
                        self.frames[topic].append(frame)
                        if frame["event"] in TERMINAL:
                            self.arrived.setdefault((topic, frame["event"]), time.monotonic())
            except ConnectionClosed:
                pass
            self.reconnects += 1
            await self._stack.aclose()
            await self._connect()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._stack.aclose()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="foundry-transcripts-bench-"))
    port = _free_port()
    base = Settings(
        data_dir=data_dir,
        mode="mock",
        port=port,
        log_level="WARNING",
        runtime={"backend": args.backend, "namespace": f"bench-{uuid.uuid4().hex[:6]}", "idle_seconds": 3600},  # type: ignore[arg-type]
        sandbox={"agent_commands": {"mock": f"{sys.executable} -I {AGENT}"}},  # type: ignore[arg-type]
    )
    fake, settings = start_fake_github(base)
    runtime = build_runtime(settings)
    await runtime.start()
    app = create_app(settings, runtime=runtime, fake_github=fake)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="websockets-sansio")
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    # As `foundry serve` does once started (the app applies it only to a runtime it built itself):
    # without it this process, the API's, spends a sixth of the flood in the cyclic collector.
    settle_long_lived()
    out: dict[str, Any] = {
        "backend": args.backend,
        "sessions": args.sessions,
        "chunks_per_session": args.chunks,
    }
    sockets: list[Socket] = []
    try:
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            await _sign_in(client, runtime, "alice")
            created = (
                await client.post(
                    "/v1/organizations/acme/tasks", json={"repoId": ROCKET, "prompt": "flood 1"}
                )
            ).json()
            task_id = created["taskId"]
            sessions = [created["sessionId"]]
            await _wait_detail(client, task_id, lambda d: d["sessions"][0]["status"] == "idle", 120)
            # Agents start a few at a time (each is a process that sandbox-agent spawns).
            while len(sessions) < args.sessions:
                batch = min(4, args.sessions - len(sessions))
                answers = await asyncio.gather(
                    *(
                        client.post(f"/v1/organizations/acme/tasks/{task_id}/sessions", json={})
                        for _ in range(batch)
                    )
                )
                sessions += [a.json()["sessionId"] for a in answers]
                count = len(sessions)
                await _wait_detail(
                    client,
                    task_id,
                    lambda d, count=count: sum(s["status"] == "idle" for s in d["sessions"]) >= count,
                    120,
                )
            cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
            ws_url = url.replace("http://", "ws://") + "/v1/realtime"
            topics = [f"session:acme:{task_id}:{s}" for s in sessions]
            for i in range(0, len(topics), 5):
                sock = Socket(ws_url, cookie)
                await sock.open(topics[i : i + 5])
                sockets.append(sock)
            # 1. Every session floods at once (each after a short pause, so all are queued first).
            host_pid = await _host_pid(runtime, "task")
            cpu_before = _cpu_s(host_pid)
            all_before = _cpu_by_kind(host_pid)
            for session_id in sessions:
                sent = await client.post(
                    f"/v1/organizations/acme/tasks/{task_id}/sessions/{session_id}/messages",
                    json={"text": f"pause 1500 flood {args.chunks}"},
                )
                assert sent.status_code == 202, sent.text
            await _wait_detail(
                client,
                task_id,
                lambda d: all(s["status"] != "running" and s["queuedMessages"] == 0 for s in d["sessions"]),
                600,
            )
            host_cpu = _cpu_s(host_pid) - cpu_before
            cpu_by_kind = _cpu_spent(all_before, _cpu_by_kind(host_pid))
            lost = lost_recorded = duplicated = stuck = recorded = 0
            first_chunk_ms, last_end_ms, done_to_recorded, done_to_last_chunk = [], [], [], []
            for i, session_id in enumerate(sessions):
                log = await _log(client, task_id, session_id)
                turn = log[max(i for i, e in enumerate(log) if e["event"] == "turnStarted") :]
                ends = [e for e in turn if e["event"] in TERMINAL]
                stuck += 0 if len(ends) == 1 and ends[0]["event"] == "turnEnded" else 1
                numbers = _chunks(turn)
                missing, repeated = _lost_and_duplicated(numbers, args.chunks)
                live = [f for f in sockets[i // 5].frames[topics[i]] if f["seq"] >= turn[0]["seq"]]
                live_missing, live_repeated = _lost_and_duplicated(_chunks(live), args.chunks)
                lost += missing + live_missing
                lost_recorded += missing
                duplicated += repeated + live_repeated + (len(live) - len({f["seq"] for f in live}))
                recorded += len(turn)
                chunk_rows = [e for e in turn if e["event"] == "agentUpdate"]
                if chunk_rows and ends:
                    first_chunk_ms.append(chunk_rows[0]["createdAt"])
                    last_end_ms.append(ends[0]["createdAt"])
                    done = [
                        e["data"]["update"].get("rawOutput", {}).get("doneAtMs")
                        for e in chunk_rows
                        if e["data"]["kind"] == "tool_call_update"
                    ]
                    if done and done[-1]:
                        done_to_recorded.append(ends[0]["createdAt"] - done[-1])
                        done_to_last_chunk.append(chunk_rows[-1]["createdAt"] - done[-1])
            window_s = max(0.001, (max(last_end_ms) - min(first_chunk_ms)) / 1000) if last_end_ms else 0
            out["events_per_s_one_host"] = round(recorded / window_s) if window_s else 0
            # The same host's capacity, independent of how busy the machine is: events per CPU second
            # it spent reading the streams, recording, publishing (and answering the bench's polls).
            out["events_per_host_cpu_s"] = round(recorded / host_cpu) if host_cpu else None
            out["host_cpu_s"] = round(host_cpu, 2)
            # Where the machine's CPU went during the flood: every process on the events' path
            # (agents → sandbox-agent → task host → API → the bench's websocket readers) shares the
            # cores, so events/s can be no higher than cores / (CPU seconds of all of them per event).
            out["cpu_s_by_process"] = cpu_by_kind
            out["cpu_us_per_event_all_processes"] = (
                round(sum(cpu_by_kind.values()) / recorded * 1e6) if recorded else None
            )
            out["cores"] = os.cpu_count()
            out["load_average_1m"] = os.getloadavg()[0]
            out["lost"] = lost
            out["lost_from_transcripts"] = lost_recorded  # the rest: missing on the websockets
            out["duplicated"] = duplicated
            out["stuck_turns"] = stuck
            out["websocket_reconnects"] = sum(sock.reconnects for sock in sockets)
            out["agent_done_to_recorded_ms_p50"] = _pct(done_to_recorded, 0.5) if done_to_recorded else None
            # Of which: the agent's last event recorded (the rest is ending the turn).
            out["agent_done_to_last_event_recorded_ms_p50"] = (
                _pct(done_to_last_chunk, 0.5) if done_to_last_chunk else None
            )
            out["agent_done_to_recorded_ms"] = sorted(done_to_recorded)
            # 2. Stop during a flood of 10,000 chunks, right after the first chunk is on the websocket.
            stop_ms: list[float] = []
            for n in range(args.stops):
                session_id, topic, sock = sessions[n % len(sessions)], topics[n % len(sessions)], sockets[0]
                if topic not in sock.frames:
                    sock = sockets[(n % len(sessions)) // 5]
                seen = len(sock.frames[topic])
                await client.post(
                    f"/v1/organizations/acme/tasks/{task_id}/sessions/{session_id}/messages",
                    json={"text": "flood 10000"},
                )
                while not _chunks(sock.frames[topic][seen:]):
                    await asyncio.sleep(0.005)
                sock.arrived.pop((topic, "turnCancelled"), None)
                stopped = time.monotonic()
                await client.post(f"/v1/organizations/acme/tasks/{task_id}/sessions/{session_id}/stop")
                deadline = stopped + 30
                while (topic, "turnCancelled") not in sock.arrived and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)
                if (topic, "turnCancelled") in sock.arrived:
                    stop_ms.append((sock.arrived[(topic, "turnCancelled")] - stopped) * 1000)
                await _wait_detail(
                    client,
                    task_id,
                    lambda d, s=session_id: all(x["status"] != "running" for x in d["sessions"]),
                    60,
                )
            out["stop_to_ended_ms_p50"] = _pct(stop_ms, 0.5) if stop_ms else None
            out["stops_ended"] = len(stop_ms)
            out["host_rss_mb"] = round(_rss_kb(await _host_pid(runtime, "task")) / 1024, 1)
    finally:
        for sock in sockets:
            await sock.close()
        server.should_exit = True
        await serving
        services = getattr(runtime, "services", None)
        if services is not None:
            with contextlib.suppress(Exception):
                await services.driver("sandbox").aclose()
        await runtime.close()
        _kill_sandboxes_under(settings.sandbox_root)
        fake.stop()
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["ray", "inprocess"], default="ray")
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--stops", type=int, default=5)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
