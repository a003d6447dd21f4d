"""The on-disk layout of a local sandbox and small helpers around its server process.

``<root_dir>/<sandbox_id>/``::

    repo/                     the workdir (the task's checkout); the server's cwd
    .local/share/             XDG_DATA_HOME: sandbox-agent/bin/agent_processes/<agent>-acp launchers
                              and sandbox-agent/bin/<agent>, the programs of claude, codex, opencode
    tmp/                      TMPDIR
    sandbox-agent.log         the server's log (stdout + stderr, appended across restarts)
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from foundry.drivers.sandbox.host_files import (
    append_handle,
    ensure_dirs,
    list_entries,
    read_tail,
    remove_entries,
    replace_file,
)

LOG_FILE = "sandbox-agent.log"
WORKDIR = "repo"
_LOG_TAIL_LINES = 20
#: sandbox-agent's agents that need a program of their own besides the launcher (written by Foundry).
NATIVE_AGENT_IDS = ("claude", "codex", "opencode")
_LOG_TAIL_BYTES = 16_384


def free_port(host: str) -> int:
    # Another process may take the port between this probe and the server's bind; `create` retries
    # on "address in use".
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def read_log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of the server's log; never follows a link the agent put in its place
    (`host_files.read_tail`)."""
    data = read_tail(path.parent, path.name, _LOG_TAIL_BYTES)
    if isinstance(data, str):
        return data
    text = data.decode("utf-8", errors="replace").rstrip()
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def brief(tail: str, lines: int = 3, width: int = 200) -> str:
    """The last ``lines`` lines of a log tail, each cut to ``width`` characters: for a person."""
    return "\n".join(
        line if len(line) <= width else line[: width - 1] + "…" for line in tail.splitlines()[-lines:]
    )


def describe_returncode(returncode: int | None) -> str:
    if returncode is None:
        return "is still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with code {returncode}"


#: Agents run at the lowest CPU priority there is, below their sandbox-agent server. sandbox-agent
#: keeps only 512 unsent events per subscriber and drops the rest for it: when agents (their output,
#: or the builds they run) take the CPU that the server needs to forward events, events are lost.
#: Favouring the server inside the sandbox slows an agent that outruns the forwarding instead
#: (measured with 20 agents flooding at once: about +30 % events recorded per second; read by
#: plain ``curl`` clients, ids skipped in 2 of 11 runs with the agents at the server's priority and
#: in none of 8 with them below it).
AGENT_NICENESS = 19
#: The agent's own launcher, beside the ``<id>-acp`` wrapper that lowers its priority.
LAUNCHER_SUFFIX = ".launch"


def _niced(agent_id: str) -> str:
    return (
        "#!/bin/sh\n"
        f"# Runs {agent_id}-acp{LAUNCHER_SUFFIX} below sandbox-agent's priority (Foundry writes this file).\n"
        f'exec nice -n {AGENT_NICENESS} "$0{LAUNCHER_SUFFIX}" "$@"\n'
    )


def prepare_directory(
    directory: Path, launchers: Mapping[str, str], natives: Mapping[str, str] | None = None
) -> IO[bytes]:
    """Create the sandbox layout, (re)write the agent launchers and programs, and open the log for
    appending.

    ``launchers`` become ``agent_processes/<id>-acp.launch``, started through a ``<id>-acp`` that
    lowers the agent's priority (`AGENT_NICENESS`); ``natives`` become ``<id>`` beside that
    directory, the agent's own program that sandbox-agent also requires for some agents. Launchers
    and programs of agents no longer registered are removed: sandbox-agent would otherwise report
    an agent as installed whose files the jail no longer shows.
    """
    natives = natives or {}
    # The directory is the jail's writable mount: every path below is walked and written without
    # following what the agent may have put there (`host_files`).
    bin_parts = (".local", "share", "sandbox-agent", "bin")
    processes = (*bin_parts, "agent_processes")
    directory.mkdir(parents=True, exist_ok=True)  # Foundry's own path (the jail mounts it, below)
    ensure_dirs(directory, (WORKDIR,), ("tmp",), processes)
    stale = [
        name
        for name, regular in list_entries(directory, processes)
        if regular
        and name.endswith(("-acp", f"-acp{LAUNCHER_SUFFIX}"))
        and name.removesuffix(LAUNCHER_SUFFIX).removesuffix("-acp") not in launchers
    ]
    remove_entries(directory, processes, stale)
    programs = [name for name, regular in list_entries(directory, bin_parts) if regular]
    unused = [name for name in programs if name in NATIVE_AGENT_IDS and name not in natives]
    remove_entries(directory, bin_parts, unused)
    for agent_id, script in launchers.items():
        replace_file(directory, processes, f"{agent_id}-acp", _niced(agent_id))
        replace_file(directory, processes, f"{agent_id}-acp{LAUNCHER_SUFFIX}", script)
    for agent_id, script in natives.items():
        replace_file(directory, bin_parts, agent_id, script)
    handle = append_handle(directory, LOG_FILE)
    handle.write(f"--- foundry: starting sandbox-agent at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode())
    handle.flush()
    return handle


def remove_tree(directory: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(directory)
