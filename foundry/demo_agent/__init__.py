"""Foundry's demo agent (`foundry.demo_agent.agent`) and its launcher (`foundry.demo_agent.launcher`).

The agent's names are re-exported lazily: the agent is built on the ACP SDK, whose schema takes about a
second to import, and the processes that only write launchers (every host process, through the sandbox
provider) must not pay for it at start-up, when a restarted host is waited for.
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(importlib.import_module("foundry.demo_agent.agent"), name)
