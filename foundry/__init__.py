"""Foundry: a self-hosted backend that orchestrates coding agents for teams."""

from __future__ import annotations

import functools


@functools.cache
def _installed_version() -> str:
    from importlib.metadata import version

    return version("foundry")


def __getattr__(name: str) -> str:
    # ``__version__`` is looked up on first use: reading the installed metadata costs 70-150 ms,
    # which every process importing anything of ``foundry`` would pay (each jailed sandbox's launcher,
    # each restarted host process) although few of them ever print the version.
    if name == "__version__":
        return _installed_version()
    raise AttributeError(f"module 'foundry' has no attribute {name!r}")
