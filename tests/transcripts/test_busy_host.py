"""A host whose event loop is busy with other work (hundreds of awake instances, a long query) must
still receive every event: sandbox-agent drops the events of a subscriber that does not read in time,
and keeps only its last 1,024 for a re-read."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from foundry.drivers.sandbox import acp as acp_module
from foundry.drivers.sandbox import sse as sse_module
from tests.tasks.conftest import TaskServer
from tests.transcripts.conftest import assert_seqs_dense, chunks, start_task, terminal, wait_turns


async def _hog_the_loop(busy_s: float, every_s: float) -> None:
    """Hold the event loop ``busy_s`` at a time, as a host busy with other instances' work does."""
    while True:
        time.sleep(busy_s)  # blocking on purpose: that is the busy host
        await asyncio.sleep(every_s)


async def test_a_flood_while_the_host_is_busy_loses_nothing(scripted_server: TaskServer):
    async with scripted_server.signed_in("alice") as client:
        task_id, session_id = await start_task(client, "pause 300 flood 20000")
        hog = asyncio.create_task(_hog_the_loop(0.5, 0.02))
        try:
            await asyncio.sleep(8)
        finally:
            hog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hog
        log = await wait_turns(client, task_id, session_id, 1, timeout=120)
    assert not [e["data"] for e in log if e["event"] == "eventsLost"]
    assert chunks(log) == list(range(1, 20_001))
    assert terminal(log) == ["turnEnded"]
    assert_seqs_dense(log)


async def test_a_turn_whose_event_stream_connects_late_still_gets_its_first_events(
    scripted_server: TaskServer, monkeypatch: pytest.MonkeyPatch
):
    """On a busy host the event stream can connect well after the prompt could have gone out; an
    agent that meanwhile produced more than sandbox-agent keeps (1,024 events) must not lose the
    start of its answer."""
    real_open = sse_module.open_event_stream

    async def slow_open(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(2.0)  # the connection waits for a busy loop / a slow network
        return await real_open(*args, **kwargs)

    monkeypatch.setattr(acp_module, "open_event_stream", slow_open)
    async with scripted_server.signed_in("alice") as client:
        task_id, session_id = await start_task(client, "flood 3000")
        log = await wait_turns(client, task_id, session_id, 1, timeout=120)
    assert not [e["data"] for e in log if e["event"] == "eventsLost"]
    assert chunks(log) == list(range(1, 3_001))
    assert terminal(log) == ["turnEnded"]
