"""Jails start whenever they can: however late they are scheduled, and after a failed start.

Egress jails, many at once on busy cores, or one slowed down: bubblewrap says a jail's pid before
the jail has set up its own loopback, and pasta, which connects the jail to the network, raises that
loopback too. When pasta came first (the jail being scheduled late, as on a machine starting many
sandboxes or running a loaded test suite), the jail died at once with ``bwrap: loopback: Failed
RTM_NEWADDR: No child processes`` and the user saw a sandbox fail to start for no reason of theirs.
Each jail here runs the exact command a sandbox gets (`bwrap_command` wrapped by `egress_command`)
and must start with a working loopback, over which Foundry's relay reaches the sandbox's server.

Whether jails can start here is learned by starting one (the isolation probe). A start that fails
once for a passing reason must not become the answer for the life of the process: not a refusal of
every later sandbox, and not a silent fall back from ``egress`` to the host's network.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import pytest

from foundry.drivers.sandbox.binary import find_binary
from foundry.drivers.sandbox.egress import egress_command
from foundry.drivers.sandbox.jail import JailPolicy, Network, bwrap_command, find_bwrap, find_pasta
from foundry.drivers.sandbox.local import LocalSandboxProvider

pytestmark = [
    pytest.mark.security,
    pytest.mark.skipif(find_bwrap() is None, reason="bubblewrap is not installed"),
]
needs_pasta = pytest.mark.skipif(find_pasta() is None, reason="pasta (Debian package passt) is not installed")

# Run inside each jail: a connection over the jail's own loopback.
LOOPBACK_CHECK = """
import socket
with socket.create_server(("127.0.0.1", 0)) as server:
    with socket.create_connection(server.getsockname(), timeout=5) as client:
        conn, _ = server.accept()
        conn.sendall(b"loopback works")
        print(client.recv(100).decode())
"""
STARTED = (0, "loopback works")


def jail_command(bwrap: str, directory: Path) -> list[str]:
    """What `plan_spawn` runs for an egress sandbox at ``directory``, with the loopback check as
    the jailed command."""
    pasta = find_pasta()
    assert pasta is not None
    directory.mkdir()
    jail = bwrap_command(
        bwrap,
        JailPolicy(network="egress"),
        directory=directory,
        binary=find_binary(),
        cwd=directory,
        command=[sys.executable, "-I", "-S", "-c", LOOPBACK_CHECK],
    )
    return egress_command(pasta, (), jail)


async def start_jail(command: list[str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace").strip()


@needs_pasta
async def test_egress_jails_started_at_once_all_start(tmp_path: Path) -> None:
    # Sixteen at once keep the scheduler busy enough to start some jails late; the strace test below
    # makes one late on purpose, every time.
    bwrap = find_bwrap()
    assert bwrap is not None
    commands = [jail_command(bwrap, tmp_path / f"jail-{number}") for number in range(16)]
    results = await asyncio.gather(*(start_jail(command) for command in commands))
    failed = [result for result in results if result != STARTED]
    assert failed == [], f"{len(failed)} of {len(results)} jails did not start: {failed[:3]}"


@needs_pasta
async def test_a_jail_slow_to_set_up_its_loopback_still_starts(tmp_path: Path):
    """The late jail made certain: every process of the jail waits 1 s in its first ``socket()``
    call, which for bubblewrap's jail process is the loopback set-up."""
    strace, bwrap = shutil.which("strace"), find_bwrap()
    if strace is None:
        pytest.skip("strace is needed to slow the jail down")
    slow_bwrap = tmp_path / "slow-bwrap"
    slow_bwrap.write_text(
        f"#!/bin/sh\nexec {strace} -f -qq -o /dev/null -e trace=socket "
        f'-e inject=socket:delay_enter=1000000:when=1 {bwrap} "$@"\n'
    )
    slow_bwrap.chmod(0o755)
    assert await start_jail(jail_command(str(slow_bwrap), tmp_path / "jail")) == STARTED


def flaky_bwrap(tmp_path: Path, failures: int) -> str:
    """bubblewrap failing its first ``failures`` runs the way a jail scheduled late failed, then
    the real one."""
    real = find_bwrap()
    runs, script = tmp_path / "bwrap-runs", tmp_path / "flaky-bwrap"
    script.write_text(
        f"""#!/bin/sh
runs=$(cat {runs} 2>/dev/null || echo 0)
echo $((runs + 1)) > {runs}
if [ "$runs" -lt {failures} ]; then
    echo "bwrap: loopback: Failed RTM_NEWADDR: No child processes" >&2
    exit 1
fi
exec {real} "$@"
"""
    )
    script.chmod(0o755)
    return str(script)


@needs_pasta
async def test_one_failed_jail_start_does_not_move_sandboxes_off_egress(tmp_path: Path):
    provider = LocalSandboxProvider(
        tmp_path / "sandboxes",
        find_binary(),
        jail=JailPolicy(network="egress", network_fallback="host", bwrap=flaky_bwrap(tmp_path, 1)),
    )
    try:
        status = await provider.isolation()
        assert (status.ok, status.network) == (True, "egress"), status.detail
        await provider.create("fenced")
        assert provider.jail.network == "egress"
    finally:
        await provider.aclose()


@pytest.mark.parametrize("network", ["none", pytest.param("egress", marks=needs_pasta)])
async def test_jails_that_could_not_start_are_tried_again_at_the_next_sandbox(
    tmp_path: Path, network: Network
):
    provider = LocalSandboxProvider(
        tmp_path / "sandboxes",
        find_binary(),
        jail=JailPolicy(network=network, bwrap=flaky_bwrap(tmp_path, 2)),
    )
    try:
        status = await provider.isolation()
        assert not status.ok
        # The reason is shown while it lasts, blaming bubblewrap (not pasta) with its own words.
        assert "bubblewrap at" in status.detail
        assert "bwrap: loopback: Failed RTM_NEWADDR" in status.detail
        await provider.create("later")  # the next start tries again, and the jail starts now
        assert (await provider.isolation()).ok
    finally:
        await provider.aclose()
