"""Foundry: a self-hosted backend that orchestrates coding agents for teams."""

__version__ = "0.1.0"
