"""Stop Foundry when the local Ray cluster it started loses its raylet or its GCS.

Ray does not restart those daemons, and without them no host answers: the server stayed up, with
``/readyz`` failing and every request timing out, for as long as nobody noticed. Exiting non-zero
instead lets the service manager (systemd, compose, …) start Foundry again, which starts a fresh
cluster whose hosts resume every instance's work from its files.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable

import ray

log = logging.getLogger(__name__)

#: The daemons without which the local cluster cannot run anything.
ESSENTIAL = ("raylet", "gcs_server")
CHECK_INTERVAL_S = 2.0

#: Set by ``foundry serve`` only: a test or a script that starts a runtime must not be stopped.
enabled = False

#: How to stop this server in order (``foundry serve`` sets it); SIGTERM when unset.
on_lost: Callable[[], None] | None = None

#: Why this process is stopping, once the watch found the cluster gone (read by ``foundry serve``
#: to exit non-zero).
lost: str | None = None


def dead_daemons() -> list[str]:
    """The essential daemons of the cluster this process started that have exited."""
    # Ray keeps the daemons' process handles on the node object of the driver that started them;
    # no public API says whether they still run (``ray.nodes()`` needs the very GCS that may be gone).
    node = getattr(ray._private.worker, "_global_node", None)
    if node is None:
        return []
    dead = []
    for kind in ESSENTIAL:
        for info in node.all_processes.get(kind, []):
            if info.process.poll() is not None:
                dead.append(f"{kind} (pid {info.process.pid}, exit status {info.process.returncode})")
    return dead


async def watch_local_cluster() -> None:
    """Poll the daemons; when one is gone, log why and stop this server with SIGTERM."""
    global lost
    while True:
        await asyncio.sleep(CHECK_INTERVAL_S)
        dead = dead_daemons()
        if dead:
            lost = f"the local Ray cluster lost its {', '.join(dead)}"
            log.error("%s; stopping so that Foundry can be started again", lost)
            if on_lost is not None:
                on_lost()
            else:
                os.kill(os.getpid(), signal.SIGTERM)
            return
