"""Install the demo agent as a ``sandbox-agent`` agent launcher.

``sandbox-agent`` 0.4.2 looks for ``$XDG_DATA_HOME/sandbox-agent/bin/agent_processes/<agent>-acp`` and
starts it with no arguments, the server's cwd and the server's environment. A custom
``mock-acp`` launcher makes ``?agent=mock`` run our own agent without any native stub binary.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

__all__ = ["launcher_path", "launcher_script", "write_launcher"]


def launcher_path(xdg_data_home: str | os.PathLike[str], agent_id: str = "mock") -> Path:
    """Where ``sandbox-agent`` expects the launcher of ``agent_id``."""
    return Path(xdg_data_home) / "sandbox-agent" / "bin" / "agent_processes" / f"{agent_id}-acp"


def launcher_script(python: str = sys.executable) -> str:
    """The text of a POSIX shell launcher that execs the demo agent with ``python``.

    ``-I`` (isolated mode) keeps the launcher's cwd — the sandbox's repository, which may contain its own
    ``foundry`` package — and ``PYTHON*`` variables from shadowing the installed demo agent.
    """
    return f'#!/bin/sh\nexec {shlex.quote(python)} -I -m foundry.demo_agent "$@"\n'


def write_launcher(
    xdg_data_home: str | os.PathLike[str], agent_id: str = "mock", python: str = sys.executable
) -> Path:
    """Write (or overwrite) the executable launcher for ``agent_id`` and return its path. Idempotent.

    This does blocking file I/O; call it through ``asyncio.to_thread`` from async code.
    """
    path = launcher_path(xdg_data_home, agent_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(launcher_script(python), encoding="utf-8")
    path.chmod(0o755)
    return path


def demo_agent_launchers(python: str = sys.executable) -> dict[str, str]:
    """Agent launchers every sandbox gets in mock mode: the demo agent answers as ``mock``."""
    return {"mock": launcher_script(python)}
