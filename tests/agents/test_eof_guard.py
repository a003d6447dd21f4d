"""Agents that ignore the end of their stdin (Claude Code's and Codex's adapters) are stopped when
sandbox-agent closes it, with everything they started; a closed session leaves no agent behind."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from foundry.drivers.sandbox.client import SandboxAgentClient
from foundry.drivers.sandbox.eof_guard import GRACE_S
from foundry.drivers.sandbox.local import LocalSandboxProvider
from tests.procs import alive as running_pids

#: Echoes its first line, starts a grandchild, then ignores the end of its stdin.
STUBBORN = """
import subprocess, sys, time
grandchild = subprocess.Popen(["sleep", "300"])
line = sys.stdin.readline()
print(f"{grandchild.pid} {line.strip()}", flush=True)
sys.stdin.read()
time.sleep(300)
"""


def alive(pid: int) -> bool:
    return bool(running_pids([pid]))


def guarded(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-I", "-m", "foundry.drivers.sandbox.eof_guard", *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_an_agent_that_ignores_the_end_of_stdin_is_stopped_with_its_children():
    guard = guarded(sys.executable, "-c", STUBBORN)
    assert guard.stdin is not None
    assert guard.stdout is not None
    guard.stdin.write("hello agent\n")
    guard.stdin.flush()
    grandchild, echoed = guard.stdout.readline().split(" ", 1)
    assert echoed.strip() == "hello agent"  # stdin reaches the agent, its stdout is the guard's
    assert alive(int(grandchild))
    started = time.monotonic()
    guard.stdin.close()
    returncode = guard.wait(timeout=GRACE_S + 10)
    assert time.monotonic() - started >= GRACE_S - 0.5  # it had its chance to exit by itself
    assert returncode == 128 + 15  # stopped by SIGTERM, reported like a shell would
    deadline = time.monotonic() + 5
    while alive(int(grandchild)):
        assert time.monotonic() < deadline, "the agent's child outlived it"
        time.sleep(0.05)


def test_an_agent_that_exits_by_itself_passes_its_exit_code_and_leaves_nothing():
    script = 'import subprocess; p = subprocess.Popen(["sleep", "300"]); print(p.pid, flush=True); '
    script += "raise SystemExit(3)"
    guard = guarded(sys.executable, "-c", script)
    assert guard.stdout is not None
    grandchild = int(guard.stdout.readline())
    assert guard.wait(timeout=10) == 3
    deadline = time.monotonic() + 5
    while alive(grandchild):
        assert time.monotonic() < deadline, "the agent's child outlived it"
        time.sleep(0.05)


def claude_processes(agents_dir: Path) -> list[int]:
    """Processes running a program of the installed Claude Code (not jails naming its directory)."""
    needle = str((agents_dir / "claude").resolve()).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            any(arg.startswith(needle) for arg in argv[:3])
            and b"bwrap" not in argv[0]
            and alive(int(entry.name))
        ):
            found.append(int(entry.name))
    return found


async def test_closing_a_claude_code_session_leaves_no_process_in_the_sandbox(
    tmp_path: Path, agents_dir: Path
):
    provider = LocalSandboxProvider(tmp_path / "sandboxes", agents_dir=agents_dir)
    try:
        endpoint = await provider.create("closing", env={"ANTHROPIC_API_KEY": "sk-ant-unused-0000"})
        async with SandboxAgentClient(endpoint) as client:
            acp = client.acp("closing-1", "claude")
            await acp.initialize()
            await acp.new_session(endpoint.workdir)
            running = claude_processes(agents_dir)
            assert running, "Claude Code's adapter is not running"
            await acp.close(gone_timeout=5.0)
            deadline = time.monotonic() + GRACE_S + 15
            while left := [pid for pid in running if alive(pid)]:
                assert time.monotonic() < deadline, f"still running after the session closed: {left}"
                await asyncio.sleep(0.1)
            assert os.path.isdir(endpoint.workdir)  # the sandbox itself keeps running
            assert provider.running_ids() == ["closing"]
    finally:
        await provider.aclose()
