"""Escape attempts from inside a running sandbox, through the process API an agent uses.

Each attempt is a shell command run inside sandbox A by sandbox-agent (``POST /v1/processes/run``),
exactly as an agent's tool call would run it, against a real Foundry (HTTP server, in-process
runtime, actor databases in its data directory, the secret key) with a second sandbox B beside it.
With the jail (the default) every attempt fails; the control run with ``isolation = "none"`` shows
that each attempt does succeed without the jail, so none of them can pass by accident.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from foundry.drivers.sandbox import SandboxEndpoint
from foundry.drivers.sandbox.client import ProcessResult, SandboxAgentClient
from tests.tasks.conftest import TaskServer, running_server

pytestmark = pytest.mark.security

B_SECRET = "sandbox-b-private-notes"


@dataclass
class Scene:
    """A running Foundry with two sandboxes, A (the attacker's) and B (the victim)."""

    server: TaskServer
    a: SandboxEndpoint
    b: SandboxEndpoint
    b_pid: int

    @property
    def data_dir(self) -> Path:
        return self.server.settings.data_dir

    def sqlite_file(self) -> Path:
        found = sorted(self.data_dir.rglob("*.sqlite3"))
        assert found, "the running Foundry has no actor database yet"
        return found[0]

    async def run(self, script: str) -> ProcessResult:
        async with SandboxAgentClient(self.a) as client:
            return await client.run_process("sh", ["-c", script], timeout_ms=20_000)


async def scene(tmp_path: Path, isolation: str) -> AsyncIterator[Scene]:
    async with running_server(tmp_path, isolation=isolation) as server, server.signed_in("alice"):
        provider = server.provider
        # A task's sandbox of acme, the attacker's, and one of globex, the victim.
        a = await provider.create("escape-a", owner="acme:escape-a")
        b = await provider.create("escape-b", owner="globex:escape-b")
        (Path(b.workdir) / "private.txt").write_text(B_SECRET)
        b_pid = provider.process_id("escape-b")
        assert b_pid is not None
        yield Scene(server, a, b, b_pid)


@pytest.fixture
async def jailed(tmp_path: Path) -> AsyncIterator[Scene]:
    async for value in scene(tmp_path, "bwrap"):
        yield value


@pytest.fixture
async def unjailed(tmp_path: Path) -> AsyncIterator[Scene]:
    async for value in scene(tmp_path, "none"):
        yield value


def foundry_marker() -> str:
    """An entry of this (Foundry's) process's environment that no sandbox gets: sandboxes start from
    an allowlist (`PATH`, `LANG`, ...) plus their own paths. ``/proc/<pid>/environ`` shows the
    environment the process started with, so the marker comes from there."""
    given = ("PATH=", "LANG=", "LC_ALL=", "TZ=", "HOME=", "XDG_DATA_HOME=", "TMPDIR=", "SANDBOX_AGENT_")
    entries = Path(f"/proc/{os.getpid()}/environ").read_bytes().decode(errors="replace").split("\0")
    usable = [e for e in entries if "=" in e and "'" not in e and not e.startswith(given) and len(e) > 8]
    assert usable, "this process has no environment entry of its own to look for"
    return usable[0]


def py(code: str) -> str:
    """A shell command running ``code`` with Foundry's interpreter (mounted read-only in the jail)."""
    quoted = code.replace("'", "'\\''")
    return f"{sys.executable} -I -c '{quoted}'"


def connect(url: str) -> str:
    host, port = url.removeprefix("http://").split(":")
    return py(
        f"import socket; socket.create_connection(({host!r}, {int(port)}), timeout=3); print('connected')"
    )


# Each escape: a name and a function building the script from the scene. Exit code 0 = it worked.
ESCAPES = {
    "read the secret key": lambda s: f"cat {s.data_dir / 'secret_key'}",
    "read an actor database": lambda s: f"head -c 15 {s.sqlite_file()} | grep -q 'SQLite format'",
    "read another sandbox's files": lambda s: f"cat {Path(s.b.workdir) / 'private.txt'}",
    # Inside the jail the data directory is only the path to its own sandbox and the mock remotes.
    "list the data directory": lambda s: f"ls {s.data_dir} | grep -v -x -e sandboxes -e mock-remotes",
    "read Foundry's environment": lambda s: f"grep -a -q -F '{foundry_marker()}' /proc/{os.getpid()}/environ",
    "signal Foundry": lambda s: f"kill -0 {os.getpid()}",
    "see another sandbox's processes": lambda s: (
        f"grep -l -a -s 'HOME={Path(s.b.workdir).parent}' /proc/*/environ | grep -q ."
    ),
    "signal another sandbox's server": lambda s: f"kill -0 {s.b_pid}",
    "connect to Foundry's HTTP port": lambda s: connect(s.server.url),
    "connect to another sandbox's server": lambda s: connect(s.b.base_url),
}
# Writes outside its own directory: the escape works when the file appears on the host. (Inside the
# jail a path under /tmp may be writable: it is then the jail's private /tmp, never the host's.)
WRITES = {
    "write into the data directory": lambda s: s.data_dir / "written-from-a-sandbox",
    "write beside its own directory": lambda s: Path(s.a.workdir).parent.parent / "written-from-a-sandbox",
    "write into another sandbox": lambda s: Path(s.b.workdir) / "written-from-a-sandbox",
    # Mock mode's stand-in for GitHub: Foundry's own pushes reach it, no sandbox does.
    "write into another organization's repositories": lambda s: (
        s.data_dir / "mock-remotes" / "globex" / "written-from-a-sandbox"
    ),
}
HOME_ESCAPES = {
    "read Ray's token in the home directory": lambda s: (
        f"cat {Path.home() / '.ray' / 'auth_token'} >/dev/null"
    ),
    "list the home directory": lambda s: f"ls -a {Path.home()} | grep -v -x -e . -e .. -e .pyenv | grep -q .",
}


def written(scene: Scene) -> list[Path]:
    """Files the write attempts created on the host."""
    return [path for path in (target(scene) for target in WRITES.values()) if path.exists()]


async def attempt_all(scene: Scene) -> dict[str, bool]:
    """Run every attempt inside sandbox A; name → whether it got through."""
    got_through: dict[str, bool] = {}
    for name, script in {**ESCAPES, **HOME_ESCAPES}.items():
        result = await scene.run(script(scene))
        got_through[name] = result.exit_code == 0
        assert foundry_marker() not in result.stdout or got_through[name]
    for name, target in WRITES.items():
        path = target(scene)
        await scene.run(f"mkdir -p {path.parent}; echo x > {path}")
        got_through[name] = path.exists()
    return got_through


async def test_the_jail_stops_every_escape(jailed: Scene):
    got_through = await attempt_all(jailed)
    assert [name for name, through in got_through.items() if through] == []
    assert written(jailed) == []


async def test_without_the_jail_every_escape_works(unjailed: Scene):
    """The control: each attempt is real, it gets through when ``sandbox.isolation = "none"``."""
    got_through = await attempt_all(unjailed)
    if not (Path.home() / ".ray" / "auth_token").exists():
        got_through.pop("read Ray's token in the home directory")  # nothing there to read
    assert [name for name, through in got_through.items() if not through] == []


async def test_the_jail_runs_as_an_unprivileged_user_on_a_read_only_system(jailed: Scene):
    result = await jailed.run(
        "id -u; grep CapEff /proc/self/status; ls /proc | grep -c '^[0-9]'; "
        "touch /usr/x /etc/x /x 2>/dev/null || echo read-only; "
        "cat /etc/shadow >/dev/null 2>&1 || echo masked; "
        "echo ok > $HOME/repo/written && cat $HOME/repo/written; echo tmp > /tmp/t && cat /tmp/t; "
        f"echo own > {jailed.data_dir / 'mock-remotes' / 'acme' / 'written'} 2>/dev/null || echo no-remotes"
    )
    lines = result.stdout.split()
    assert result.exit_code == 0, result.stderr
    assert lines[0] == "1000"
    assert lines[1:3] == ["CapEff:", "0000000000000000"]
    assert int(lines[3]) < 20  # only the jail's own few processes
    # Not even its own organization's mock remotes: Foundry pushes there itself (`remote_git`).
    assert lines[4:] == ["read-only", "masked", "ok", "tmp", "no-remotes"]
    assert (Path(jailed.a.workdir) / "written").read_text() == "ok\n"  # its own directory is writable
