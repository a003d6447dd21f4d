"""Stop Foundry when the Ray cluster it runs on is gone: the local cluster it started lost its
raylet or its GCS, or the head of the cluster it joined stopped answering.

Ray does not restart those daemons, and without them no host answers: the server stayed up, with
``/readyz`` failing and every request timing out, for as long as nobody noticed. A process that
joined a cluster even said it was ready for the minute until Ray itself ended it, with no line of
Foundry's. Exiting non-zero instead, with the reason, lets the service manager (systemd, compose, …)
start Foundry again, which starts a fresh cluster (or joins the head once it is back) whose hosts
resume every instance's work from its files.
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
#: A joined cluster's head (its GCS) not answering for this long: not ready (``problem``).
UNREADY_AFTER_S = 4.0
#: ... and for this long: stop, before Ray's own end of the process (60 s without its GCS).
LOST_AFTER_S = 20.0
#: While the joined cluster's head does not answer, why (``/readyz`` shows it); None otherwise.
problem: str | None = None

#: Set by ``foundry serve`` only: a test or a script that starts a runtime must not be stopped.
enabled = False

#: How to stop this server in order (``foundry serve`` sets it); SIGTERM when unset.
on_lost: Callable[[], None] | None = None

#: Why this process is stopping, once the watch found the cluster gone (read by ``foundry serve``
#: to exit non-zero).
lost: str | None = None


def gcs_pid() -> int | None:
    """The pid of the head (GCS) process of the local cluster this process started, if it did."""
    node = getattr(ray._private.worker, "_global_node", None)
    processes = node.all_processes.get("gcs_server", []) if node is not None else []
    return processes[0].process.pid if processes else None


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


def _stop(reason: str, when: str) -> None:
    """Record why this server stops (``lost``, read for its exit status), say so, and stop it."""
    global lost
    lost = reason
    log.error("%s; stopping so that Foundry can be started again%s", reason, when)
    if on_lost is not None:
        on_lost()
    else:
        os.kill(os.getpid(), signal.SIGTERM)


async def watch_local_cluster() -> None:
    """Poll the daemons; when one is gone, log why and stop this server with SIGTERM."""
    while True:
        await asyncio.sleep(CHECK_INTERVAL_S)
        dead = dead_daemons()
        if dead:
            _stop(f"the local Ray cluster lost its {', '.join(dead)}", "")
            return


def _probe_gcs() -> None:
    """One round trip to the cluster's control store (raises when it does not answer in 3 s)."""
    client = ray._private.worker.global_worker.gcs_client  # type: ignore[attr-defined]
    client.internal_kv_get(b"foundry-liveness-probe", b"foundry", timeout=3)


async def watch_joined_cluster(address: str, probe: Callable[[], None] = _probe_gcs) -> None:
    """Ask the joined cluster's head every few seconds; while it does not answer, say so (``problem``,
    one log line); after `LOST_AFTER_S`, stop this server as `watch_local_cluster` does."""
    global problem
    last_ok = asyncio.get_running_loop().time()
    while True:
        await asyncio.sleep(CHECK_INTERVAL_S)
        try:
            await asyncio.wait_for(asyncio.to_thread(probe), 5.0)
        except Exception as exc:
            down = asyncio.get_running_loop().time() - last_ok
            if down < UNREADY_AFTER_S:
                continue
            if problem is None:
                log.error("the Ray cluster at %s is not answering (its head, the GCS): %s", address, exc)
            problem = f"the Ray cluster at {address} has not answered for {down:.0f} s (its head, the GCS)"
            if down >= LOST_AFTER_S:
                _stop(problem, " once it is back")
                return
            continue
        if problem is not None:
            log.warning("the Ray cluster at %s answers again", address)
        problem = None
        last_ok = asyncio.get_running_loop().time()
