"""The jail's life: every process of it ends with the sandbox (destroy, archive), a crash inside it is
reported with its cause, and a machine where it cannot start says so (``/readyz``, the task)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from foundry.demo_agent.launcher import launcher_script
from foundry.drivers.sandbox import SandboxIsolationUnavailable
from foundry.drivers.sandbox.binary import find_binary
from foundry.drivers.sandbox.client import SandboxAgentClient
from foundry.drivers.sandbox.jail import JailPolicy
from foundry.drivers.sandbox.local import LocalSandboxProvider
from foundry.drivers.sandbox.spawn import descendants
from tests.procs import alive as running
from tests.tasks.conftest import create_task, idle_session, running_server, wait_task

pytestmark = pytest.mark.security


def jail_of(provider: LocalSandboxProvider, sandbox_id: str) -> list[int]:
    """Every process of a running sandbox: bubblewrap, the jail's init, launcher, server, agents."""
    leader = provider._sandboxes[sandbox_id].process.pid
    return [leader, *descendants(leader)]


@pytest.fixture
async def provider(tmp_path: Path) -> AsyncIterator[LocalSandboxProvider]:
    exits: asyncio.Queue[tuple[str, int | None, str]] = asyncio.Queue()
    provider = LocalSandboxProvider(
        tmp_path / "sandboxes",
        find_binary(),
        {"mock": launcher_script()},
        on_exit=lambda *args: exits.put_nowait(args),
    )
    provider.exits = exits  # type: ignore[attr-defined]
    yield provider
    await provider.aclose()


async def start_agent(provider: LocalSandboxProvider, sandbox_id: str) -> None:
    endpoint = await provider.create(sandbox_id)
    async with SandboxAgentClient(endpoint) as client:
        info = await client.acp("probe", "mock").initialize()
    assert info["agentInfo"]["name"] == "foundry-demo-agent"


async def test_destroy_ends_every_process_of_the_jail(provider: LocalSandboxProvider):
    await start_agent(provider, "doomed")
    processes = jail_of(provider, "doomed")
    names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in processes}
    assert {"bwrap", "sandbox-agent"} <= names, names
    assert len(processes) >= 5, names  # bwrap, its init, the launcher, the server, the agent
    await provider.destroy("doomed")
    assert running(processes) == []  # checked by pid, right when destroy returns
    assert not provider.sandbox_dir("doomed").exists()
    assert provider.registry.records() == []


async def test_a_crash_inside_the_jail_names_its_cause_and_takes_the_jail_down(
    provider: LocalSandboxProvider,
):
    await start_agent(provider, "crashy")
    processes = jail_of(provider, "crashy")
    server = provider.process_id("crashy")
    assert server is not None
    assert server in processes
    assert Path(f"/proc/{server}/comm").read_text().strip() == "sandbox-agent"
    os.kill(server, signal.SIGKILL)
    sandbox_id, returncode, reason = await asyncio.wait_for(provider.exits.get(), 10)  # type: ignore[attr-defined]
    assert (sandbox_id, returncode) == ("crashy", -signal.SIGKILL)
    assert "was killed by SIGKILL unexpectedly" in reason
    assert "last log lines" in reason
    for _ in range(100):
        if not running(processes):
            break
        await asyncio.sleep(0.05)
    assert running(processes) == []
    # And the next create starts a fresh jail over the same directory.
    await start_agent(provider, "crashy")


async def test_archive_tears_the_jail_down(tmp_path: Path):
    async with running_server(tmp_path) as server, server.signed_in("alice") as client:
        created = await create_task(client, prompt="Short-lived work")
        task_id = created["taskId"]
        await wait_task(client, task_id, idle_session)
        processes = jail_of(server.provider, task_id)
        assert len(processes) >= 5
        archived = await client.post(f"/v1/organizations/acme/tasks/{task_id}/archive", json={"force": True})
        assert archived.status_code == 200, archived.text
        assert running(processes) == []
        assert server.provider.process_id(task_id) is None


async def test_a_missing_bwrap_is_named_by_readyz_and_fails_sandbox_creation(tmp_path: Path):
    missing = str(tmp_path / "no-such-bwrap")
    async with running_server(tmp_path, bwrap=missing) as server, server.signed_in("alice") as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        check = ready.json()["checks"]["isolation"]
        assert check["ok"] is False
        assert check["isolation"] == "bwrap"
        assert missing in check["detail"]
        assert "apt-get install bubblewrap" in check["detail"]

        created = await create_task(client, prompt="Never runs")
        detail = await wait_task(client, created["taskId"], lambda d: d["status"] == "error")
        assert "apt-get install bubblewrap" in detail["error"]
        assert "FOUNDRY_SANDBOX__ISOLATION=none" in detail["error"]

    direct = LocalSandboxProvider(tmp_path / "direct", find_binary(), jail=JailPolicy(bwrap=missing))
    with pytest.raises(SandboxIsolationUnavailable, match="bubblewrap"):
        await direct.create("never")
    assert not direct.sandbox_dir("never").exists()  # refused before anything was laid out


async def test_running_unjailed_is_an_explicit_choice_that_is_logged_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="foundry.drivers.sandbox.local")
    async with running_server(tmp_path, isolation="none") as server, server.signed_in("alice") as client:
        assert any("NOT jailed" in record.getMessage() for record in caplog.records)
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        check = ready.json()["checks"]["isolation"]
        assert check["ok"] is True
        assert check["isolation"] == "none"
        assert "NOT jailed" in check["detail"]


async def test_readyz_says_which_jail_is_active(tmp_path: Path):
    async with running_server(tmp_path) as server, server.signed_in("alice") as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        check = ready.json()["checks"]["isolation"]
        assert check == {"ok": True, "isolation": "bwrap", "network": "none", "detail": check["detail"]}
        assert "bubblewrap" in check["detail"]
        assert "own network namespace" in check["detail"]


async def test_the_files_an_agent_launcher_names_are_visible_read_only(tmp_path: Path):
    agent = tmp_path / "elsewhere" / "agent.py"
    agent.parent.mkdir()
    agent.write_text("print('agent')\n")
    (tmp_path / "elsewhere" / "beside.txt").write_text("not named by any launcher\n")
    launcher = f'#!/bin/sh\nexec {os.path.realpath(sys.executable)} -I {agent} "$@"\n'
    provider = LocalSandboxProvider(tmp_path / "sandboxes", find_binary(), {"custom": launcher})
    try:
        endpoint = await provider.create("named")
        async with SandboxAgentClient(endpoint) as client:
            ran = await client.run_process("sh", ["-c", f"{launcher.split()[2]} -I {agent}"])
            assert (ran.exit_code, ran.stdout) == (0, "agent\n"), ran.stderr
            changed = await client.run_process("sh", ["-c", f"echo x >> {agent}"])
            assert changed.exit_code != 0
            beside = await client.run_process("cat", [str(agent.parent / "beside.txt")])
            assert beside.exit_code != 0  # only the named file, not its directory
    finally:
        await provider.aclose()
    assert agent.read_text() == "print('agent')\n"


async def test_a_jail_on_the_host_network_reaches_local_ports_but_still_not_the_files(tmp_path: Path):
    secret = tmp_path / "secret_key"
    secret.write_text("host secret\n")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    jail = JailPolicy(network="host")
    provider = LocalSandboxProvider(tmp_path / "sandboxes", find_binary(), jail=jail)
    try:
        endpoint = await provider.create("on-host")
        async with SandboxAgentClient(endpoint) as client:
            code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3)"
            connected = await client.run_process(sys.executable, ["-I", "-c", code])
            assert connected.exit_code == 0, connected.stderr  # the host's loopback: network = host
            read = await client.run_process("cat", [str(secret)])
            assert read.exit_code != 0
            assert "host secret" not in read.stdout
        assert (await provider.isolation()).network == "host"
    finally:
        listener.close()
        await provider.aclose()
