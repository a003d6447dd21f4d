"""The sandbox host's process-level duties: crash routing, start-up reaping, shutdown.

The provider is one object per host process (built by `foundry.services`); its ``on_exit`` callback
is a single function. `ExitRouter` is that function: it remembers which actor owns each provider
sandbox id and turns a crash into a durable ``exited`` command for that actor.

Every process Foundry starts is owned: `on_host_start` kills the servers (and agents) that a killed
or crashed earlier host process left running, identified by pid *and* start time from the provider's
registry, and wakes the tasks that were queued for a sandbox; `on_host_stop` stops every server this
process runs when the host closes (a clean ``foundry serve`` stop closes every host first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Any

from actors.sandbox.admission import admission_for
from foundry.config import Settings
from foundry.drivers.sandbox.procs import Registry, reap_leftovers
from foundry.errors import FoundryError
from foundry.runtime.client import Runtime
from foundry.runtime.keys import shard_of

log = logging.getLogger(__name__)

ROLE_NAME = "sandbox"
TASK_ROLE = "task"


class ExitRouter:
    """The provider's ``on_exit``: routes a crashed sandbox to its actor's ``exited`` command."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.keys: dict[str, tuple[str, int | None]] = {}

    def track(self, sandbox_id: str, actor_key: str, pid: int | None = None) -> None:
        """Route exits of ``sandbox_id`` to ``actor_key``; ``pid`` is its current server's pid."""
        self.keys[sandbox_id] = (actor_key, pid)

    async def __call__(self, sandbox_id: str, returncode: int | None, reason: str) -> None:
        tracked = self.keys.get(sandbox_id)
        if tracked is None:
            log.warning("sandbox exited but no actor tracks it sandbox_id=%s", sandbox_id)
            return
        key, pid = tracked
        try:
            await self.runtime.send(
                ROLE_NAME, key, "exited", {"returncode": returncode, "reason": reason[-20_000:], "pid": pid}
            )
        except FoundryError:
            log.exception("could not report the exit of sandbox %s to its actor %s", sandbox_id, key)


def exit_router(provider: Any, runtime: Runtime) -> ExitRouter:
    """The provider's `ExitRouter`, installed on first use (one per provider, i.e. per process)."""
    current = getattr(provider, "on_exit", None)
    if isinstance(current, ExitRouter):
        return current
    router = ExitRouter(runtime)
    provider.on_exit = router
    return router


def _is_server_in(pid: int, directory: Path) -> bool:
    """True when ``pid`` runs with its cwd inside ``directory`` (our sandbox-agent, not a reused pid)."""
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return False
    return cwd == directory or directory in cwd.parents


def _reap(pid: int, directory: Path) -> bool:
    if not _is_server_in(pid, directory):
        return False
    with contextlib.suppress(ProcessLookupError):
        # The local provider starts each server as the leader of its own process group.
        os.killpg(pid, signal.SIGKILL)
    return True


async def reap_orphan(pid: int | None, directory: Path) -> None:
    """Kill a sandbox server left running by a previous host process (it was started in its own
    session, so it outlives a killed host). Only a process whose cwd is inside this sandbox's
    directory is touched."""
    if pid is None:
        return
    if await asyncio.to_thread(_reap, pid, directory):
        log.warning("reaped an orphaned sandbox server pid=%d dir=%s", pid, directory)


async def on_host_start(host: Any) -> None:
    """Reap leftovers of this host's shard, then rebuild the queue and wake the queued tasks."""
    provider = host.services.drivers.get("sandbox")
    if provider is None:
        return  # this process has no sandbox driver (a test harness): nothing to reap

    def belongs(key: str) -> bool:
        try:
            return bool(shard_of(key, host.shards) == host.shard)
        except FoundryError:
            return False

    try:
        reaped = await provider.reap_leftovers(belongs)
        if reaped:
            log.warning("%s: killed %d leftover sandbox servers: %s", host.name, len(reaped), reaped)
        admission = admission_for(provider, host.runtime, host.services.settings)
        keys = admission.restore_queue(belongs)
    except Exception:
        log.exception("%s: sandbox start-up sweep failed", host.name)
        return
    for key in keys:
        try:
            # Waking the task resumes its provisioning or waiting sessions, which ask for the sandbox
            # again and so keep their restored place in the queue.
            await host.runtime.call(TASK_ROLE, key, "get", {})
        except FoundryError as exc:
            log.warning("%s: could not wake queued task %s: %s", host.name, key, exc)


async def on_host_stop(host: Any) -> None:
    """Stop every sandbox server (and its agents) this process runs; their directories are kept."""
    provider = host.services.drivers.get("sandbox")
    if provider is None:
        return
    admission = getattr(provider, "admission", None)
    if admission is not None:
        await admission.close()
    await provider.aclose()
    log.info("%s: stopped its sandboxes", host.name)


async def on_cluster_stop(settings: Settings) -> None:
    """Kill every sandbox server still recorded once the whole local cluster is down.

    Hosts stop their servers when they close, but a Ctrl-C in a terminal or a service manager's stop
    signals Ray's daemons together with ``foundry serve``, and a host whose worker dies first never
    closes. Its servers run in their own sessions and would outlive everything; the records (pid and
    start time) tell which processes are provably ours.
    """
    root = settings.sandbox_root.resolve()
    reaped = await asyncio.to_thread(reap_leftovers, Registry(root), root, set(), None)
    if reaped:
        log.warning("stopped %d sandbox servers whose host died before closing: %s", len(reaped), reaped)
