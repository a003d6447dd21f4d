"""Counting the actor calls that authentication and membership checks make, and warming their cache."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from foundry.errors import ActorUnavailable
from foundry.runtime.inprocess import InProcessRuntime

#: The calls a signed-in organization request made before the API process cached their answers.
AUTH_ACTIONS = {("user", "get_session"), ("user", "app_snapshot"), ("organization", "member_role")}


class ActorCalls:
    """Records every ``(role, action)`` called through a runtime (wraps its transport)."""

    def __init__(self, runtime: InProcessRuntime) -> None:
        self.calls: list[tuple[str, str]] = []
        real = runtime._call

        async def counted(role: str, key: str, action: str, body: Any) -> tuple[str, Any]:
            self.calls.append((role, action))
            return await real(role, key, action, body)

        runtime._call = counted  # type: ignore[method-assign]

    def auth_calls_of(self, calls: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [c for c in calls if c in AUTH_ACTIONS]

    async def auth_calls(self, request: Callable[[], Any]) -> tuple[httpx.Response, list[tuple[str, str]]]:
        """The response of ``request()`` and the session/membership calls it made."""
        start = len(self.calls)
        response = await request()
        return response, self.auth_calls_of(self.calls[start:])

    async def warm(self, request: Callable[[], Any], timeout: float = 5.0) -> httpx.Response:
        """Repeat ``request()`` until it succeeds without any session/membership call (cached)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            response, calls = await self.auth_calls(request)
            assert response.status_code == 200, response.text
            if not calls:
                return response
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"still asking the actors after {timeout}s: {calls}")
            await asyncio.sleep(0.05)

    async def prime(self, request: Callable[[], Any], timeout: float = 3.0) -> None:
        """Like `warm`, for guards that must also hold without a cache: gives up quietly (the
        cache itself is proven by the test that uses `warm`)."""
        try:
            await self.warm(request, timeout)
        except AssertionError as exc:
            if "still asking the actors" not in str(exc):
                raise


class BreakableStreams:
    """Host event streams that a test can cut, as a host restart does: while a role is ``down``
    its open streams end with `ActorUnavailable` and new ones fail the same way."""

    def __init__(self, runtime: InProcessRuntime) -> None:
        self.down: set[str] = set()
        self._cut: dict[str, asyncio.Event] = {}
        real = runtime.subscribe

        async def subscribe(role: str, shard: int) -> AsyncIterator[Any]:
            if role in self.down:
                raise ActorUnavailable(f"host {role}/{shard} is down (cut by the test)")
            cut = self._cut.setdefault(role, asyncio.Event())
            stream = real(role, shard).__aiter__()
            nxt: asyncio.Future[Any] | None = None
            try:
                while True:
                    nxt = asyncio.ensure_future(stream.__anext__())
                    stop = asyncio.ensure_future(cut.wait())
                    try:
                        await asyncio.wait({nxt, stop}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        stop.cancel()
                    if not nxt.done():
                        raise ActorUnavailable(f"the stream of {role}/{shard} was cut by the test")
                    yield nxt.result()
            finally:
                if nxt is not None and not nxt.done():
                    nxt.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await nxt
                await stream.aclose()

        runtime.subscribe = subscribe  # type: ignore[method-assign]

    def cut(self, role: str) -> None:
        self.down.add(role)
        self._cut.setdefault(role, asyncio.Event()).set()

    def restore(self, role: str) -> None:
        self.down.discard(role)
        self._cut[role] = asyncio.Event()
