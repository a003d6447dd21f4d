"""Calls to a host process that stopped answering fail, instead of waiting as long as it hangs.

A host process that is stopped (SIGSTOP, a debugger) or whose event loop is blocked is neither dead
nor restarting, so Ray holds every call to it for as long as that lasts: a request for a task list,
a message or a sign-in hung for minutes without an answer. A call still pending after `CHECK_AFTER_S`
asks the process for a trivial answer (one ask shared by every waiting call); a process that does
not give it within `PING_TIMEOUT_S` is hung, and its waiting calls fail with `ActorUnavailable`
(a 503) naming it. A process that answers is only slow: its calls go on waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from foundry.errors import ActorUnavailable
from foundry.runtime.placement import process_name

log = logging.getLogger(__name__)

#: How long a call waits before its process is asked whether it still answers.
CHECK_AFTER_S = 5.0
#: How long that trivial answer may take (the readiness check gives a host as long).
PING_TIMEOUT_S = 5.0
#: A ping's verdict is reused by calls that ask within this long of it.
VERDICT_TTL_S = 1.0

T = TypeVar("T")


class HangWatch:
    """Guards calls to host processes; ``ping(process)`` must ask the process for a trivial answer."""

    def __init__(self, ping: Callable[[str], Awaitable[Any]]) -> None:
        self._ping = ping
        self._asking: dict[str, asyncio.Task[bool]] = {}
        self._verdicts: dict[str, tuple[float, bool]] = {}

    async def guard(self, process: str, call: Awaitable[T]) -> T:
        """Await ``call`` (already submitted to ``process``); `ActorUnavailable` if the process stops
        answering meanwhile."""
        pending = asyncio.ensure_future(call)
        try:
            while True:
                done, _ = await asyncio.wait({pending}, timeout=CHECK_AFTER_S)
                if done:
                    return pending.result()
                if not await self.answers(process):
                    raise ActorUnavailable(
                        f"host process {process_name(process)} is not answering (stopped, or too busy to "
                        f"answer within {PING_TIMEOUT_S:g} s). This request had already reached it and "
                        "may still be applied when it answers again; to send a message, open a session "
                        "or create a task again safely, repeat it with the same Idempotency-Key header"
                    )
        finally:
            if not pending.done():
                pending.cancel()

    async def answers(self, process: str) -> bool:
        """Whether ``process`` gives a trivial answer within `PING_TIMEOUT_S` (asked once for all)."""
        verdict = self._verdicts.get(process)
        if verdict is not None and time.monotonic() - verdict[0] < VERDICT_TTL_S:
            return verdict[1]
        asking = self._asking.get(process)
        if asking is None:
            asking = self._asking[process] = asyncio.create_task(self._ask(process))
            asking.add_done_callback(lambda _: self._asking.pop(process, None))
        return await asyncio.shield(asking)

    async def _ask(self, process: str) -> bool:
        try:
            await asyncio.wait_for(self._ping(process), PING_TIMEOUT_S)
            answered = True
        except TimeoutError:
            answered = False
            log.warning(
                "host process %s gave no answer within %g s; failing the calls that wait for it",
                process_name(process),
                PING_TIMEOUT_S,
            )
        except Exception as exc:  # dead or restarting: Ray's own retry of the call deals with that
            log.info("asking host process %s whether it answers failed: %r", process_name(process), exc)
            answered = True
        self._verdicts[process] = (time.monotonic(), answered)
        return answered
