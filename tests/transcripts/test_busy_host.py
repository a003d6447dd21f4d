"""A host whose event loop is busy with other work (hundreds of awake instances, a long query) must
still receive every event: sandbox-agent drops the events of a subscriber that does not read in time,
and keeps only its last 1,024 for a re-read."""

from __future__ import annotations

import asyncio
import contextlib
import time

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
