"""Acknowledged sends from one process to one host process, coalesced into few Ray calls.

A Ray call costs both processes more than acknowledging a command does (measured under a burst of
600 webhook deliveries a second: about a quarter of the API process's work per delivery, and a
tenth of the host process's). So while `MAX_IN_FLIGHT` calls to a host process are on their way,
the sends that arrive meanwhile wait and then go together, as one ``send_many`` call. A lone send
goes at once: nothing waits unless calls are already in flight.

Only sends that do not wait for their command to run are coalesced (the answer is the acknowledgement,
which every send of a batch gets at about the same time). A batch that fails as a whole (its host
process died) is retried by the caller's retry loop like any call; the commands carry ids, so one
that was acknowledged before the failure is recognised as a duplicate, never run twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

#: Calls to one host process in flight before new sends wait to go together.
MAX_IN_FLIGHT = 2
#: Most sends in one call.
MAX_BATCH = 200

#: One send's arguments to `HostProcess.send`.
SendArgs = tuple[Any, ...]


class SendBatcher:
    """Coalesces the acknowledged sends to one host process.

    Args:
        send_one: makes one ``send`` call with these arguments (with the caller's retries).
        send_many: makes one ``send_many`` call for a list of them; answers one outcome or exception
            per send, in order.
    """

    def __init__(
        self,
        send_one: Callable[[SendArgs], Awaitable[Any]],
        send_many: Callable[[list[SendArgs]], Awaitable[list[Any]]],
    ) -> None:
        self._send_one = send_one
        self._send_many = send_many
        self._in_flight = 0
        #: Sends made, and the Ray calls that carried them.
        self.sends = 0
        self.calls = 0
        self._waiting: list[tuple[SendArgs, asyncio.Future[Any]]] = []

    async def send(self, args: SendArgs) -> Any:
        """The send's outcome, as `HostProcess.send` answers it."""
        self.sends += 1
        if self._in_flight < MAX_IN_FLIGHT and not self._waiting:
            self._in_flight += 1
            self.calls += 1
            try:
                return await self._send_one(args)
            finally:
                self._in_flight -= 1
                self._flush()
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append((args, answer))
        return await answer

    def _flush(self) -> None:
        # A sender cancelled while it waited (its request went away) sent nothing: its send is dropped,
        # as a send not yet made would have been.
        self._waiting = [(args, answer) for args, answer in self._waiting if not answer.done()]
        while self._waiting and self._in_flight < MAX_IN_FLIGHT:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            self._in_flight += 1
            self.calls += 1
            asyncio.get_running_loop().create_task(self._deliver(batch))

    async def _deliver(self, batch: list[tuple[SendArgs, asyncio.Future[Any]]]) -> None:
        try:
            answers = await self._send_many([args for args, _ in batch])
        except asyncio.CancelledError:
            for _, answer in batch:
                answer.cancel()
            raise
        except Exception as exc:
            # Each sender gets the error (and decides, as for a send of its own).
            log.info("a batch of %d sends failed as a whole: %s", len(batch), exc)
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(exc)
        else:
            for (_, answer), outcome in zip(batch, answers, strict=True):
                if answer.done():
                    continue  # its sender was cancelled meanwhile
                if isinstance(outcome, BaseException):
                    answer.set_exception(outcome)
                else:
                    answer.set_result(outcome)
        finally:
            self._in_flight -= 1
            self._flush()
