"""A running sandbox-agent that stops answering is stopped like a crash, so the next message starts it.

A server that is stopped (SIGSTOP) or wedged is still alive, so nothing reported it: every request to
it waited out its timeout (a diff, an archive, a queued message failed after a minute or more), and
the hung process ran on forever. `watch_answers` asks the server's health every `CHECK_INTERVAL_S`;
after `HUNG_AFTER_S` without an answer it reports the server hung, and the provider stops it the way
it stops a sandbox over a limit (its files are kept; the sandbox's actor sees it exit).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import httpx

from foundry.drivers.sandbox.server import RunningSandbox, health_client

log = logging.getLogger(__name__)

#: How often the server is asked.
CHECK_INTERVAL_S = 5.0
#: How long one answer may take.
ANSWER_TIMEOUT_S = 5.0
#: How long without an answer makes the server hung (a busy machine slows answers, never for this long).
HUNG_AFTER_S = 30.0


async def watch_answers(sandbox: RunningSandbox, on_hung: Callable[[str], Awaitable[None]]) -> None:
    """Ask ``sandbox``'s server for its health until it goes ``HUNG_AFTER_S`` without answering; then
    ``await on_hung(what)`` once and return. Runs until cancelled otherwise."""
    url = f"{sandbox.endpoint.base_url}/v1/health"
    answered_at = time.monotonic()
    async with health_client(sandbox, ANSWER_TIMEOUT_S) as http:
        while True:
            await asyncio.sleep(CHECK_INTERVAL_S)
            try:
                response = await http.get(url)
                if response.status_code == 200:
                    answered_at = time.monotonic()
                    continue
                problem = f"HTTP {response.status_code}"
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            silent = time.monotonic() - answered_at
            log.warning(
                "sandbox-agent of %s did not answer its health check (%s); silent for %.0f s",
                sandbox.sandbox_id,
                problem,
                silent,
            )
            if silent >= HUNG_AFTER_S:
                await on_hung(
                    f"its sandbox-agent stopped answering (no answer to its health check for {silent:.0f} s)"
                )
                return
