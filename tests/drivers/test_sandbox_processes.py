"""The local provider owns its processes: the token stays off command lines, leftovers of a dead
backend are reaped by pid *and* start time, and nothing unrelated is ever touched."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from foundry.demo_agent.launcher import launcher_script
from foundry.drivers.sandbox.binary import find_binary
from foundry.drivers.sandbox.client import SandboxAgentClient
from foundry.drivers.sandbox.local import LocalSandboxProvider
from foundry.drivers.sandbox.procs import start_ticks
from foundry.drivers.sandbox.spawn import descendants


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def sandbox_processes(leader: int) -> list[int]:
    """The live processes of the sandbox led by ``leader``: the leader (bubblewrap, or the launcher
    when unjailed) and every descendant (the jail's init, launcher, server and agents)."""
    return [pid for pid in [leader, *descendants(leader)] if alive(pid)]


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def make_provider(root: Path) -> LocalSandboxProvider:
    return LocalSandboxProvider(root, find_binary(), {"mock": launcher_script()})


@pytest.fixture
async def provider(tmp_path: Path) -> AsyncIterator[LocalSandboxProvider]:
    provider = make_provider(tmp_path / "sandboxes")
    yield provider
    await provider.aclose()


async def test_the_token_is_on_no_command_line_and_still_guards_the_server(provider: LocalSandboxProvider):
    endpoint = await provider.create("task-1", env={"FOUNDRY_DEMO_AGENT_DELAY": "0"})
    assert endpoint.token
    async with SandboxAgentClient(endpoint) as client:
        await client.acp("probe", "mock").initialize()  # an agent runs too
    token = endpoint.token.encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            assert token not in cmdline, f"pid {entry.name} shows the token: {cmdline!r}"
    server = provider.process_id("task-1")
    assert server is not None
    assert b"sandbox-agent" in Path(f"/proc/{server}/cmdline").read_bytes()
    # Scrubbed from the server's environment once it was healthy, so agents do not inherit it.
    await wait_until(lambda: token not in Path(f"/proc/{server}/environ").read_bytes())
    async with httpx.AsyncClient(base_url=endpoint.base_url) as http:
        assert (await http.get("/v1/health")).status_code == 401
        ok = await http.get("/v1/health", headers={"Authorization": f"Bearer {endpoint.token}"})
        assert ok.status_code == 200


async def test_an_agent_runs_below_its_server_so_event_forwarding_keeps_the_cpu(
    provider: LocalSandboxProvider,
):
    # sandbox-agent drops events for a subscriber it cannot forward to fast enough: an agent that
    # takes the CPU (a flood of output, a build) must not starve the server that forwards its events.
    await provider.create("niced", env={"FOUNDRY_DEMO_AGENT_DELAY": "0"})
    server = provider.process_id("niced")
    assert server is not None
    async with SandboxAgentClient(await provider.create("niced")) as client:
        await client.acp("probe", "mock").initialize()
        agents = [
            pid
            for pid in descendants(server)
            if alive(pid) and b"demo_agent" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert agents, "the agent process was not found under its server"
        assert os.getpriority(os.PRIO_PROCESS, server) < 19
        for pid in agents:
            assert os.getpriority(os.PRIO_PROCESS, pid) == 19  # the lowest priority there is


async def test_a_restarted_backend_reaps_the_servers_a_dead_one_left(tmp_path: Path):
    root = tmp_path / "sandboxes"
    dead = make_provider(root)  # stands for a backend process that was killed: never closed
    endpoint = await dead.create("task-1", env={"FOUNDRY_DEMO_AGENT_DELAY": "0"})
    async with SandboxAgentClient(endpoint) as client:
        await client.acp("probe", "mock").initialize()
    leader = dead._sandboxes["task-1"].process.pid
    leftovers = sandbox_processes(leader)
    assert len(leftovers) >= 3, leftovers  # launcher, server, agent (and bubblewrap's two)
    fresh = make_provider(root)
    try:
        assert await fresh.reap_leftovers(lambda owner: False) == []  # another host's: untouched
        assert all(alive(pid) for pid in leftovers)
        assert await fresh.reap_leftovers() == ["task-1"]
        await wait_until(lambda: not any(alive(pid) for pid in leftovers))
        assert fresh.registry.records() == []
        assert (root / "task-1" / "repo").is_dir()  # the checkout is kept
    finally:
        await dead.aclose()
        await fresh.aclose()


async def test_reaping_never_touches_a_process_that_reused_a_recorded_pid(tmp_path: Path):
    root = tmp_path / "sandboxes"
    provider = make_provider(root)
    endpoint = await provider.create("task-1")
    assert endpoint.base_url
    [record] = provider.registry.records()
    await provider.aclose()
    assert provider.registry.records() == []  # a clean stop forgets what it stopped
    bystander = subprocess.Popen(["sleep", "30"], cwd=root / "task-1" / "repo")  # no sandbox HOME
    try:
        ticks = start_ticks(bystander.pid)
        assert ticks is not None
        # A stale record naming the bystander's pid with another start time: a reused pid.
        reused = {**record.__dict__, "pid": bystander.pid, "start_ticks": ticks - 1}
        provider.registry.directory.mkdir(parents=True, exist_ok=True)
        (provider.registry.directory / "task-1.json").write_text(json.dumps(reused))
        assert await make_provider(root).reap_leftovers() == []
        time.sleep(0.2)
        assert alive(bystander.pid), "an unrelated process was killed"
        assert provider.registry.records() == []  # the stale record is gone
    finally:
        os.kill(bystander.pid, signal.SIGKILL)
        bystander.wait()
