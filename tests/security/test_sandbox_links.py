"""An agent plants links where Foundry reads and writes its own files in the sandbox directory.

The sandbox directory is the jail's writable mount, but Foundry itself works in it from the host: it
reads the server's log when the server dies, and at every start it rewrites the agent launchers and
reopens the log. An agent that replaced those files (or a directory on their path) with links to
files of the host must get nothing out of it: no host file read into a task's error, none written,
none made executable. Each attempt runs inside the jail through sandbox-agent's process API, as an
agent's tool call would.
"""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from tests.security.test_jail_escapes import Scene, jailed  # noqa: F401  (the fixture)

pytestmark = pytest.mark.security

VICTIM_TEXT = "ORIGINAL-CONTENT-OF-A-HOST-FILE"


async def _server_exit_detail(scene: Scene, sandbox_id: str) -> str:
    """Kill the sandbox's server from inside the jail and return what Foundry reported for it."""
    # In the background: the server answering this very command is what dies.
    await scene.run("setsid sh -c 'sleep 0.5; kill -9 $(pgrep -x sandbox-agent)' >/dev/null 2>&1 &")
    provider = scene.server.provider
    for _ in range(200):
        status = await provider.status(sandbox_id)
        if status.state.value == "exited":
            return status.detail or ""
        await asyncio.sleep(0.05)
    raise AssertionError(f"sandbox {sandbox_id} did not exit: {status}")


async def test_links_planted_in_the_sandbox_never_reach_the_host(jailed: Scene, tmp_path: Path):  # noqa: F811
    sandbox = Path(jailed.a.workdir).parent
    secret_key = jailed.data_dir / "secret_key"
    key_before = secret_key.read_bytes()
    victim = tmp_path / "victim.txt"  # a host file the jail does not show
    victim.write_text(VICTIM_TEXT)
    victim.chmod(0o600)
    launchers = sandbox / ".local" / "share" / "sandbox-agent" / "bin" / "agent_processes"
    launcher_names = sorted(p.name for p in launchers.iterdir() if p.name.endswith("-acp"))
    assert launcher_names, "the sandbox has no agent launcher to replace"

    # The log becomes a link to the secret key; each launcher a link to the victim; the server dies.
    planted = "; ".join(
        [f"ln -sf {secret_key} {sandbox / 'sandbox-agent.log'}"]
        + [f"rm -f {launchers / name}; ln -s {victim} {launchers / name}" for name in launcher_names]
    )
    result = await jailed.run(planted + "; ls -l " + str(sandbox / "sandbox-agent.log"))
    assert result.exit_code == 0, result.stderr
    detail = await _server_exit_detail(jailed, "escape-a")
    assert key_before.decode().strip() not in detail
    assert "not read" in detail  # says why there is no log to show

    # Started again: Foundry writes its launchers and opens its log, never through the links.
    await jailed.server.provider.create("escape-a", owner="acme:escape-a")
    assert secret_key.read_bytes() == key_before
    assert victim.read_text() == VICTIM_TEXT
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert (sandbox / "sandbox-agent.log").is_file()
    assert not (sandbox / "sandbox-agent.log").is_symlink()
    assert all(not (launchers / name).is_symlink() for name in launcher_names)


async def test_a_directory_of_the_launchers_replaced_by_a_link_is_not_followed(
    jailed: Scene,  # noqa: F811
    tmp_path: Path,
):
    sandbox = Path(jailed.a.workdir).parent
    outside = tmp_path / "outside"
    outside.mkdir()
    bin_dir = sandbox / ".local" / "share" / "sandbox-agent" / "bin"
    result = await jailed.run(f"rm -rf {bin_dir} && ln -s {outside} {bin_dir}")
    assert result.exit_code == 0, result.stderr
    await _server_exit_detail(jailed, "escape-a")
    await jailed.server.provider.create("escape-a", owner="acme:escape-a")
    assert list(outside.iterdir()) == []  # nothing written where the link pointed
    assert bin_dir.is_dir()
    assert not bin_dir.is_symlink()
