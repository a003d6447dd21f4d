"""Coalescing of acknowledged sends (`foundry.runtime.send_batcher`), with the Ray calls replaced by
coroutines that record what they were given: which sends travel together, and that every sender gets
its own answer or error, never a neighbour's."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from foundry.errors import InvalidInput
from foundry.runtime.send_batcher import MAX_IN_FLIGHT, SendArgs, SendBatcher


class FakeHostProcess:
    """Answers each send with ("ok", its argument) once released; ``bad`` arguments get an error."""

    def __init__(self, *, fail_batches: bool = False) -> None:
        self.release = asyncio.Event()
        self.singles: list[SendArgs] = []
        self.batches: list[list[SendArgs]] = []
        self.fail_batches = fail_batches

    def answer(self, args: SendArgs) -> Any:
        return InvalidInput(f"bad send {args[0]}") if args[0] == "bad" else ("ok", args[0])

    async def send_one(self, args: SendArgs) -> Any:
        self.singles.append(args)
        await self.release.wait()
        answer = self.answer(args)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def send_many(self, sends: list[SendArgs]) -> list[Any]:
        self.batches.append(sends)
        await self.release.wait()
        if self.fail_batches:
            raise ConnectionError("host process gone")
        return [self.answer(args) for args in sends]


async def test_sends_wait_only_behind_calls_in_flight_and_then_go_together() -> None:
    host = FakeHostProcess()
    batcher = SendBatcher(host.send_one, host.send_many)
    first = [asyncio.ensure_future(batcher.send((f"s{i}",))) for i in range(MAX_IN_FLIGHT)]
    await asyncio.sleep(0)
    later = [asyncio.ensure_future(batcher.send((f"w{i}",))) for i in range(50)]
    later.append(asyncio.ensure_future(batcher.send(("bad",))))
    await asyncio.sleep(0)
    assert [args[0] for args in host.singles] == [f"s{i}" for i in range(MAX_IN_FLIGHT)]
    assert host.batches == []  # waiting behind the calls in flight
    host.release.set()
    answers = await asyncio.gather(*first, *later, return_exceptions=True)
    assert answers[: MAX_IN_FLIGHT + 50] == [("ok", f"s{i}") for i in range(MAX_IN_FLIGHT)] + [
        ("ok", f"w{i}") for i in range(50)
    ]
    assert isinstance(answers[-1], InvalidInput)  # only its own sender gets the error
    assert len(host.batches) == 1
    assert len(host.batches[0]) == 51
    assert (batcher.sends, batcher.calls) == (MAX_IN_FLIGHT + 51, MAX_IN_FLIGHT + 1)


async def test_a_sender_cancelled_while_waiting_sends_nothing_and_a_failed_batch_reaches_every_sender() -> (
    None
):
    host = FakeHostProcess(fail_batches=True)
    batcher = SendBatcher(host.send_one, host.send_many)
    busy = [asyncio.ensure_future(batcher.send((f"s{i}",))) for i in range(MAX_IN_FLIGHT)]
    await asyncio.sleep(0)
    gone = asyncio.ensure_future(batcher.send(("gone",)))
    waiting = [asyncio.ensure_future(batcher.send((f"w{i}",))) for i in range(3)]
    await asyncio.sleep(0)
    gone.cancel()
    host.release.set()
    assert await asyncio.gather(*busy) == [("ok", f"s{i}") for i in range(MAX_IN_FLIGHT)]
    for sender in waiting:
        with pytest.raises(ConnectionError, match="host process gone"):
            await sender
    assert [[args[0] for args in batch] for batch in host.batches] == [["w0", "w1", "w2"]]
