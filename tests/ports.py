"""Ports for the servers that tests start.

"Bind port 0, read the number, close, let the server bind it" races every other process that binds
any free port meanwhile: the kernel hands those out from its ephemeral range, the same range port 0
comes from, and a test run starts many (Ray's daemons and workers, sandbox relays, clients). Seen:
``foundry serve`` exiting with "address already in use" in a full-suite run. Ports here come from
below the ephemeral range and above Ray's worker ports (10002-19999), where nothing else binds.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

#: Below this: Ray's worker ports and the well-known ones.
LOWEST = 20_000
# Independent of the test run's seeded `random`: every xdist worker would draw the same ports.
_draw = random.SystemRandom()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port() -> int:
    """A port on 127.0.0.1 that is free now and that the kernel does not hand out by itself."""
    highest = _ephemeral_low()
    if highest - LOWEST < 1_000:  # an unusual ephemeral range: fall back to asking the kernel
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    for _ in range(200):
        port = _draw.randrange(LOWEST, highest)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port between {LOWEST} and {highest}")
