"""Resource limits of a sandbox, hit from inside it by an agent (a test agent that runs each prompt as
a shell command): the host keeps answering, the task shows an error naming the limit, and other
tasks keep working."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from foundry.demo_agent.launcher import launcher_script
from foundry.drivers.sandbox.binary import find_binary
from foundry.drivers.sandbox.client import SandboxAgentClient
from foundry.drivers.sandbox.limits import SandboxLimits
from foundry.drivers.sandbox.local import LocalSandboxProvider
from foundry.drivers.sandbox.spawn import descendants
from foundry.drivers.sandbox.watchdog import disk_usage
from tests.tasks.conftest import TaskServer, create_task, events, idle_session, running_server, wait_task

pytestmark = pytest.mark.security

SHELL_AGENT = f"{sys.executable} -I {Path(__file__).with_name('shell_agent.py')}"
LIMITS = {"max_processes": 64, "disk_mb": 64, "max_files": 5000, "memory_mb": 256, "limits_interval_s": 0.3}
MB = 1024 * 1024


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[TaskServer]:
    async with running_server(tmp_path, agent_commands={"mock": SHELL_AGENT}, **LIMITS) as server:
        yield server


class HealthProbe:
    """Polls ``/healthz`` in the background; the slowest answer is what the test asserts on."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.slowest = 0.0
        self.failures: list[str] = []
        self._task: asyncio.Task[None] | None = None

    async def _poll(self) -> None:
        async with httpx.AsyncClient(timeout=5.0) as http:
            while True:
                started = time.monotonic()
                try:
                    response = await http.get(f"{self.url}/healthz")
                    if response.status_code != 200:
                        self.failures.append(f"HTTP {response.status_code}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self.slowest = max(self.slowest, time.monotonic() - started)
                await asyncio.sleep(0.2)

    async def __aenter__(self) -> HealthProbe:
        self._task = asyncio.create_task(self._poll())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def agent_output(client: httpx.AsyncClient, task_id: str, session_id: str) -> str:
    log = await events(client, task_id, session_id)
    return "".join(
        e["data"]["update"]["content"]["text"]
        for e in log
        if e["event"] == "agentUpdate" and e["data"]["kind"] == "agent_message_chunk"
    )


async def hit_limit(server: TaskServer, command: str, limit: str) -> str:
    """Run ``command`` as the first message of a new task while another task works beside it; return
    the task's sandbox error once it names ``limit``, after checking the host and the neighbour."""
    async with server.signed_in("alice") as client, HealthProbe(server.url) as probe:
        neighbour = await create_task(client, prompt="echo neighbour-ready")
        await wait_task(client, neighbour["taskId"], idle_session)
        created = await create_task(client, prompt=command)
        task_id = created["taskId"]
        detail = await wait_task(client, task_id, lambda d: bool(d["sandboxError"]), timeout=60)
        assert limit in detail["sandboxError"], detail["sandboxError"]
        # The session says so too: its turn failed, or (the command had already ended) the sandbox's
        # exit is in its transcript with the reason.
        for _ in range(100):
            log = await events(client, task_id, created["sessionId"])
            said = [e for e in log if e["event"] in ("turnFailed", "sandboxExited")]
            if said:
                break
            await asyncio.sleep(0.1)
        assert said, [e["event"] for e in log]
        assert any(e["event"] == "turnFailed" or limit in e["data"]["reason"] for e in said)
        # The neighbour still works.
        url = f"/v1/organizations/acme/tasks/{neighbour['taskId']}/sessions/{neighbour['sessionId']}/messages"
        assert (await client.post(url, json={"text": "echo still-$((40 + 2))"})).status_code == 202
        await wait_task(client, neighbour["taskId"], idle_session)
        for _ in range(100):
            if "still-42" in await agent_output(client, neighbour["taskId"], neighbour["sessionId"]):
                break
            await asyncio.sleep(0.1)
        assert "still-42" in await agent_output(client, neighbour["taskId"], neighbour["sessionId"])
    assert probe.failures == []
    # The suite shares two cores between its workers, so a busy moment elsewhere can delay an answer
    # by a second; a host that a sandbox starves stops answering for far longer (or at all).
    assert probe.slowest < 2.5, f"/healthz took {probe.slowest:.2f} s"
    return str(detail["sandboxError"])


async def test_a_fork_bomb_stops_at_the_process_limit(server: TaskServer):
    error = await hit_limit(server, "bomb() { bomb | bomb & }; bomb; sleep 60", "sandbox.max_processes = 64")
    assert "process limit" in error


async def test_writing_10_gb_stops_at_the_disk_limit(server: TaskServer):
    # 10 GB in files of 32 MB each: each is under the file size limit, the directory is not.
    command = "for i in $(seq 320); do head -c 33554432 /dev/zero > f$i || exit 1; done; sleep 60"
    error = await hit_limit(server, command, "sandbox.disk_mb = 64")
    assert "disk limit" in error
    directories = [p for p in server.provider.root_dir.iterdir() if p.is_dir()]
    assert all(disk_usage(p) < 1024 * MB for p in directories)


async def test_a_flood_of_empty_files_stops_at_the_file_limit(server: TaskServer):
    """Empty files take no disk space, so the disk limit never saw them; each takes an inode, which
    the whole machine (Foundry's databases included) shares."""
    command = "mkdir many && cd many && seq 200000 | xargs touch; sleep 60"
    error = await hit_limit(server, command, "sandbox.max_files = 5000")
    assert "file limit" in error


async def test_one_10_gb_file_stops_at_the_file_size_limit(server: TaskServer):
    command = "dd if=/dev/zero of=big bs=1M count=10240; sleep 60"
    error = await hit_limit(server, command, "sandbox.disk_mb = 64")
    assert "disk limit" in error
    big = [p for p in server.provider.root_dir.rglob("big") if p.is_file()]
    assert big
    assert all(p.stat().st_size <= 64 * MB for p in big)


async def test_running_out_of_memory_names_the_memory_limit(server: TaskServer):
    if "memory" not in _cgroup_controllers(server):
        pytest.skip("no memory cgroup can be created here: memory is limited per process")
    command = f"{sys.executable} -I -c 'x = bytearray(1 << 30)'; sleep 60"
    error = await hit_limit(server, command, "sandbox.memory_mb = 256")
    assert "out of memory" in error


def _cgroup_controllers(server: TaskServer) -> set[str]:
    from foundry.drivers.sandbox.limits import Cgroups, SandboxLimits

    probe = Cgroups("foundry-probe", f"probe-{time.monotonic_ns()}", SandboxLimits())
    found = set(probe.dirs)
    probe.remove()
    return found


async def test_a_turn_past_its_wall_clock_cap_fails_naming_it(tmp_path: Path):
    async with (
        running_server(tmp_path, agent_commands={"mock": SHELL_AGENT}, turn_minutes=0.03) as server,
        server.signed_in("alice") as client,
    ):
        created = await create_task(client, prompt="sleep 120")
        task_id, session_id = created["taskId"], created["sessionId"]
        started = time.monotonic()
        await wait_task(client, task_id, lambda d: d["sessions"][0]["status"] == "error", timeout=30)
        assert time.monotonic() - started < 20
        log = await events(client, task_id, session_id)
        failed = [e for e in log if e["event"] == "turnFailed"]
        assert failed
        assert "sandbox.turn_minutes = 0.03" in failed[0]["data"]["error"]
        # The sandbox itself is fine: the next message runs.
        url = f"/v1/organizations/acme/tasks/{task_id}/sessions/{session_id}/messages"
        assert (await client.post(url, json={"text": "echo after-cap"})).status_code == 202
        await wait_task(client, task_id, idle_session)
        assert "after-cap" in await agent_output(client, task_id, session_id)


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[LocalSandboxProvider]:
    limits = SandboxLimits(memory_mb=300, max_processes=77, cpu_seconds=555, disk_mb=66)
    provider = LocalSandboxProvider(
        tmp_path / "sandboxes", find_binary(), {"mock": launcher_script()}, limits=limits
    )
    yield provider
    await provider.aclose()


async def test_every_process_of_the_sandbox_carries_its_limits(limited: LocalSandboxProvider):
    # /readyz says how limits are enforced on this machine.
    assert "limits: " in (await limited.isolation()).detail
    endpoint = await limited.create("limited")
    async with SandboxAgentClient(endpoint) as client:
        result = await client.run_process("sh", ["-c", "ulimit -t; ulimit -f; cat /proc/self/limits"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "555"  # CPU seconds
    assert int(lines[1]) * 512 == 66 * MB  # sh counts file size in 512-byte blocks
    processes = next(line for line in lines if line.startswith("Max processes"))
    assert processes.split()[2:4] == ["77", "77"]  # soft = hard: nothing inside can raise it
    sandbox = limited._sandboxes["limited"]
    assert sandbox.cgroups is not None
    groups = dict(sandbox.cgroups.dirs)
    if "pids" in groups:
        # Every process of the jail is in its pids cgroup, bubblewrap included.
        members = set((groups["pids"] / "cgroup.procs").read_text().split())
        jail = [str(sandbox.process.pid), *map(str, descendants(sandbox.process.pid))]
        assert set(jail) <= members
        assert (groups["pids"] / "pids.max").read_text().strip() == "77"
    if "memory" in groups:
        assert int((groups["memory"] / "memory.limit_in_bytes").read_text()) == 300 * MB
    await limited.destroy("limited")
    assert [path for path in groups.values() if path.exists()] == []
