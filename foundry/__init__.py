"""Foundry: a self-hosted backend that orchestrates coding agents for teams."""

from importlib.metadata import version

#: The installed package's version (one source of truth: ``pyproject.toml``).
__version__ = version("foundry")
