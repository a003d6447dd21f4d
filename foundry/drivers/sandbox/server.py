"""One running ``sandbox-agent`` server of the local provider: its record, the wait for its health,
and how a failed start is reported (`foundry.drivers.sandbox.local` drives them)."""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import signal
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import httpx
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from foundry.drivers.sandbox import SandboxEndpoint, SandboxError, SandboxState
from foundry.drivers.sandbox.layout import LOG_FILE, describe_returncode, read_log_tail
from foundry.drivers.sandbox.limits import Cgroups
from foundry.drivers.sandbox.spawn import effective_returncode

__all__ = ["PortTaken", "RunningSandbox", "signal_group", "tell_launcher_healthy", "wait_healthy"]

log = logging.getLogger(__name__)


@dataclass
class RunningSandbox:
    """A server the provider started (or is starting) and what it knows about it."""

    sandbox_id: str
    directory: Path
    endpoint: SandboxEndpoint
    process: asyncio.subprocess.Process
    owner: str = ""
    #: The sandbox-agent process itself (``process`` is its launcher, the process group's leader).
    server_pid: int | None = None
    state: SandboxState = SandboxState.PENDING
    stopping: bool = False
    returncode: int | None = None
    detail: str = ""
    #: The limit it hit, named for the user, when the watchdog stopped it for that.
    limit_hit: str = ""
    cgroups: Cgroups | None = field(default=None, repr=False)
    supervisor: asyncio.Task[None] | None = field(default=None, repr=False)
    watchdog: asyncio.Task[None] | None = field(default=None, repr=False)
    #: Asks the server whether it still answers (`foundry.drivers.sandbox.liveness`).
    liveness: asyncio.Task[None] | None = field(default=None, repr=False)
    #: Removing the cgroup of a sandbox stopped over a limit (it kills what is left in it): its exit
    #: is reported only once this is done, so a sandbox started again in its place is never caught.
    limit_cleanup: asyncio.Future[None] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.directory / LOG_FILE


class PortTaken(Exception):
    """The chosen port was taken before the server could bind it; `create` retries."""

    def __init__(self, error: SandboxError) -> None:
        super().__init__(error.detail)
        self.error = error


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # httpx builds a TLS context for every client it creates (tens of ms, loading the CA bundle),
    # although the health check speaks plain HTTP: one is built once and shared.
    return ssl.create_default_context()


def health_client(sandbox: RunningSandbox, timeout: float) -> httpx.AsyncClient:
    """An HTTP client for ``sandbox``'s health checks (its token, a shared TLS context)."""
    return httpx.AsyncClient(headers=sandbox.endpoint.headers(), timeout=timeout, verify=_ssl_context())


class _NotHealthyYet(Exception):
    """One unanswered or non-200 health check (retried until the start deadline)."""


async def wait_healthy(sandbox: RunningSandbox, timeout: float, *, jailed: bool) -> None:
    """Poll ``GET /v1/health`` until it answers 200; raise `SandboxError` (or `PortTaken`) with the
    log's tail when the server exits first or stays unhealthy for ``timeout`` seconds."""
    started = time.monotonic()
    url = f"{sandbox.endpoint.base_url}/v1/health"
    async with health_client(sandbox, 2.0) as http:

        async def check() -> None:
            if sandbox.process.returncode is not None or (
                sandbox.supervisor is not None and sandbox.supervisor.done()
            ):
                # Not retried: the server is gone, and its log says why.
                await raise_start_failure(sandbox, "before becoming healthy", jailed=jailed)
            try:
                response = await http.get(url)
            except httpx.TransportError as exc:
                raise _NotHealthyYet(f"{type(exc).__name__}: {exc}") from exc
            if response.status_code != 200:
                raise _NotHealthyYet(f"HTTP {response.status_code}: {response.text[:200]}")

        try:
            # Short waits at first: a jailed server is usually up within a few hundred ms.
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(_NotHealthyYet),
                wait=wait_exponential(multiplier=0.01, exp_base=1.5, max=0.25),
                stop=stop_after_delay(timeout),
            ):
                with attempt:
                    await check()
        except RetryError as exc:
            problem = exc.last_attempt.exception()
            await raise_start_failure(
                sandbox, f"not healthy after {timeout:.0f} s ({problem})", jailed=jailed
            )
    log.info("sandbox healthy sandbox_id=%s seconds=%.2f", sandbox.sandbox_id, time.monotonic() - started)


async def raise_start_failure(sandbox: RunningSandbox, what: str, *, jailed: bool) -> NoReturn:
    """Raise the `SandboxError` of a failed start (`PortTaken` when its port was taken)."""
    if sandbox.process.returncode is not None:
        returncode = effective_returncode(sandbox.process.returncode, jailed)
        what = f"{describe_returncode(returncode)} {what}"
    tail = await asyncio.to_thread(read_log_tail, sandbox.log_path)
    error = SandboxError(f"sandbox-agent for sandbox {sandbox.sandbox_id} {what}; last log lines:\n{tail}")
    if sandbox.process.returncode is not None and (
        "address already in use" in tail.lower() or os.strerror(errno.EADDRINUSE).lower() in tail.lower()
    ):
        raise PortTaken(error)
    raise error


async def tell_launcher_healthy(process: asyncio.subprocess.Process) -> None:
    """The server parsed its token long ago: the launcher may now scrub it from its environment."""
    if process.stdin is None:
        return
    try:
        process.stdin.write(b"healthy\n")
        await process.stdin.drain()
        process.stdin.close()
    except (OSError, ConnectionError) as exc:
        log.warning("could not tell the sandbox launcher pid=%d it is healthy: %s", process.pid, exc)


def signal_group(sandbox: RunningSandbox, sig: signal.Signals) -> None:
    """Send ``sig`` to the sandbox's process group (its launcher and, unjailed, its agents)."""
    try:
        os.killpg(sandbox.process.pid, sig)
    except ProcessLookupError:
        pass  # the whole group is gone already
    except PermissionError:
        log.warning(
            "cannot signal sandbox process group sandbox_id=%s pid=%d signal=%s",
            sandbox.sandbox_id,
            sandbox.process.pid,
            sig.name,
        )
