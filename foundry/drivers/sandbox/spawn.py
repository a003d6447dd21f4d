"""How a local sandbox's server process is started: its command line, environment and port, jailed
(`foundry.drivers.sandbox.jail`) or not, and how its processes are found afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from foundry.drivers.sandbox.egress import egress_command
from foundry.drivers.sandbox.jail import JailPolicy, bwrap_command, find_pasta
from foundry.drivers.sandbox.launch import TOKEN_FLAG
from foundry.drivers.sandbox.layout import WORKDIR, free_port
from foundry.drivers.sandbox.limits import RLIMITS_ENV, Cgroups
from foundry.drivers.sandbox.procs import start_ticks
from foundry.drivers.sandbox.relay import RELAY_FD_ENV, RELAY_PORT_ENV

__all__ = [
    "HOST",
    "ServerSpawn",
    "descendants",
    "effective_returncode",
    "jail_processes",
    "plan_spawn",
    "server_pid",
    "wait_gone",
]

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
SERVER_NAME = "sandbox-agent"
# The server's environment is built from scratch; only these are copied from the backend's own.
_PASSTHROUGH = ("PATH", "LANG", "LC_ALL", "TZ")
_RESERVED = frozenset({"HOME", "XDG_DATA_HOME", "TMPDIR"})
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class ServerSpawn:
    """One start of a sandbox's server: what to run and where Foundry will reach it."""

    argv: list[str]
    env: dict[str, str]
    #: The port Foundry connects to on the host's 127.0.0.1.
    port: int
    #: A listening socket the jail inherits (own network namespace), closed here once spawned.
    listener: socket.socket | None = field(default=None, repr=False)

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return (self.listener.fileno(),) if self.listener is not None else ()

    def spawned(self) -> None:
        """The child holds its own copy of the listening socket now; Foundry's is not needed."""
        if self.listener is not None:
            self.listener.close()


def environment(directory: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """The server's environment: an allowlist, the caller's extras, and the sandbox's own paths."""
    env = {key: os.environ[key] for key in _PASSTHROUGH if os.environ.get(key)}
    env.setdefault("PATH", _DEFAULT_PATH)
    env.setdefault("LANG", "C.UTF-8")
    # Logs to stdout (our log file) instead of $XDG_DATA_HOME/sandbox-agent/logs; never download
    # agents at runtime: a sandbox only runs the launchers we installed (or what the image has).
    env["SANDBOX_AGENT_LOG_STDOUT"] = "1"
    env["SANDBOX_AGENT_REQUIRE_PREINSTALL"] = "1"
    # The server fails ACP requests after 120 s by default; a real agent turn (session/prompt) can
    # legitimately run much longer, and Stop is an explicit session/cancel anyway.
    env["SANDBOX_AGENT_ACP_REQUEST_TIMEOUT_MS"] = str(60 * 60 * 1000)
    for key, value in extra.items():
        if key in _RESERVED or key in (RELAY_FD_ENV, RELAY_PORT_ENV, RLIMITS_ENV):
            log.warning("ignoring reserved sandbox env key=%s", key)
            continue
        env[key] = value
    env["HOME"] = str(directory)
    env["XDG_DATA_HOME"] = str(directory / ".local" / "share")
    env["TMPDIR"] = str(directory / "tmp")
    return env


def plan_spawn(
    policy: JailPolicy,
    bwrap: str | None,
    *,
    binary: Path,
    directory: Path,
    extra_env: Mapping[str, str],
    token_length: int,
    launchers: Iterable[str] = (),
    rlimits: str = "",
    cgroups: Cgroups | None = None,
) -> ServerSpawn:
    """The command that starts the server of the sandbox at ``directory`` under ``policy``.

    The token launcher (`foundry.drivers.sandbox.launch`) runs the server in every case (inside the
    jail when jailed), so the bearer token never appears on a command line. With its own network
    namespace the jail gets a listening socket opened here, so the port is Foundry's from the start;
    with ``egress`` the jail is started by `foundry.drivers.sandbox.egress_helper`, which connects it.
    Blocking with ``egress`` (it reads the machine's addresses): call it in a thread.
    The launcher sets ``rlimits`` (`foundry.drivers.sandbox.limits.encode_rlimits`) on itself before
    it starts the server; ``cgroups`` are entered before anything else runs.
    """
    env = environment(directory, extra_env)
    if rlimits:
        env[RLIMITS_ENV] = rlimits
    listener: socket.socket | None = None
    if policy.own_network:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((HOST, 0))
        listener.listen(128)
        port = int(listener.getsockname()[1])
        env[RELAY_FD_ENV] = str(listener.fileno())
        # The jail's loopback is its own: the server can use the same port number there.
        env[RELAY_PORT_ENV] = str(port)
    else:
        port = free_port(HOST)
    # `--token=<t>` in one argument: a token starting with "-" would otherwise parse as a flag.
    placeholder = f"{TOKEN_FLAG}{'*' * token_length}"
    server_args = ["server", f"--host={HOST}", f"--port={port}", placeholder, "--no-telemetry"]
    command = [sys.executable, "-I", "-m", "foundry.drivers.sandbox.launch", str(binary), *server_args]
    if policy.jailed:
        assert bwrap is not None
        command = bwrap_command(
            bwrap,
            policy,
            directory=directory,
            binary=binary,
            cwd=directory / WORKDIR,
            command=command,
            launchers=launchers,
        )
        if policy.network == "egress":
            # Checked by the provider's isolation status before any start; "pasta" names it if gone.
            pasta = find_pasta(policy.pasta) or policy.pasta or "pasta"
            keep = () if listener is None else (listener.fileno(),)
            command = egress_command(pasta, policy.egress_allow, command, keep_fds=keep)
    if cgroups is not None:
        command = cgroups.wrap(command)
    return ServerSpawn(command, env, port, listener)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        tree.setdefault(parent, []).append(int(entry))
    return tree


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (a jail's processes sit in sessions of their own, so their
    process group is not the leader's)."""
    tree = _children()
    found: list[int] = []
    todo = list(tree.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(tree.get(child, []))
    return found


def server_pid(leader: int) -> int | None:
    """The ``sandbox-agent`` server among ``leader``'s descendants (under its launcher, and under
    bubblewrap's two processes when jailed)."""
    for pid in sorted(descendants(leader)):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == SERVER_NAME:
                return pid
    return None


def jail_processes(leader: int) -> list[tuple[int, int]]:
    """``(pid, start time)`` of each live descendant of ``leader``, to wait for exactly those
    processes to be gone. Blocking (reads ``/proc``): run it in a thread."""
    return [(pid, ticks) for pid in descendants(leader) if (ticks := start_ticks(pid)) is not None]


def _running(pid: int, ticks: int) -> bool:
    # A zombie is gone for this purpose: it only waits for whoever inherited it to reap it.
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != "Z" and len(fields) > 19 and int(fields[19]) == ticks


async def wait_gone(sandbox_id: str, processes: list[tuple[int, int]], timeout: float = 5.0) -> None:
    """Wait until each ``(pid, start time)`` has exited; SIGKILL what is left after ``timeout``."""
    deadline = time.monotonic() + timeout
    while alive := [(pid, ticks) for pid, ticks in processes if _running(pid, ticks)]:
        if time.monotonic() >= deadline:
            log.warning(
                "jailed processes outlived their jail, killing sandbox_id=%s pids=%s", sandbox_id, alive
            )
            for pid, _ in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return
        await asyncio.sleep(0.02)


def effective_returncode(returncode: int, jailed: bool) -> int:
    """The server's return code as if it ran unjailed: bubblewrap exits with 128 + N when the
    command was killed by signal N, which is reported as ``-N`` like any killed child."""
    if jailed and returncode > 128:
        with contextlib.suppress(ValueError):
            return -int(signal.Signals(returncode - 128))
    return returncode
