"""Logging: stdlib, key=value messages, one format for every process (hosts included)."""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(level: str = "INFO") -> None:
    """Set up the root logger once per process."""
    root = logging.getLogger()
    if getattr(root, "_foundry_configured", False):
        root.setLevel(level.upper())
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper())
    root._foundry_configured = True  # type: ignore[attr-defined]
