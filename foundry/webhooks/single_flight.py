"""One lookup for many concurrent askers of the same key.

A burst of webhook deliveries for an installation or customer this process has not cached yet would
otherwise send one identical lookup per delivery to the same actor, all queued behind each other:
the whole burst then waits for all of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class SingleFlight(Generic[V]):
    """Runs ``fetch`` once per key at a time; callers that ask meanwhile share its result or error."""

    def __init__(self) -> None:
        self._running: dict[Hashable, asyncio.Future[V]] = {}

    async def run(self, key: Hashable, fetch: Callable[[], Awaitable[V]]) -> V:
        running = self._running.get(key)
        if running is not None:
            # Shielded: one caller giving up must not cancel the lookup the others wait for.
            return await asyncio.shield(running)
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            value = await fetch()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # the callers that share it re-raise it; nobody else must log it
            raise
        else:
            future.set_result(value)
            return value
        finally:
            del self._running[key]
