"""Real agents tier: the real Claude Code (through its real ACP adapter, installed from npm by
``foundry agents install``) in real jailed sandboxes, talking to a fake model API."""

from __future__ import annotations

from pathlib import Path

import pytest

from foundry.agents_install import AgentInstallError, install_agent
from foundry.drivers.sandbox.agents import default_agents_dir


@pytest.fixture(scope="session")
def agents_dir() -> Path:
    """The checkout's agents directory with Claude Code installed (scripts/bootstrap.sh installs it;
    this is a no-op then). Skipped, saying why, only when npm cannot install it here."""
    directory = default_agents_dir()
    try:
        install_agent("claude", directory)
    except AgentInstallError as exc:
        pytest.skip(f"Claude Code is not installed and could not be installed from npm: {exc}")
    return directory
