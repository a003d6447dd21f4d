"""The host's inbox: acknowledgements that never wait for a running command, and nothing lost or
run twice across crashes and backups."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from foundry import backup as backup_module
from foundry import restore as restore_module
from foundry.clock import FakeClock
from foundry.config import Settings
from foundry.runtime import inbox
from foundry.runtime.inprocess import InProcessRuntime
from foundry.services import Services
from tests.conftest import COUNTER_MODULE


async def _value_reaches(
    runtime: InProcessRuntime, key: str, value: int, seconds: float = 10
) -> dict[str, object]:
    state: dict[str, object] = {}
    for _ in range(int(seconds / 0.05)):
        state = await runtime.actor("counter", key).call("get")
        if state["value"] == value:
            break
        await asyncio.sleep(0.05)
    return state


async def test_an_ack_does_not_wait_for_the_command_that_is_running(runtime: InProcessRuntime) -> None:
    ref = runtime.actor("counter", "busy")
    await ref.send("slow", {"seconds": 1.5})
    await asyncio.sleep(0.1)  # the slow command's transaction is open now
    started = time.perf_counter()
    for i in range(50):
        await ref.send("incr", {"tag": f"t{i}"})
    elapsed = time.perf_counter() - started
    # Before, the first acknowledgement waited for the slow command's whole transaction.
    assert elapsed < 0.5, f"50 acknowledgements took {elapsed:.2f}s behind a running command"
    state = await _value_reaches(runtime, "busy", 50)
    assert state["tags"] == [f"t{i}" for i in range(50)]


async def test_an_acknowledged_command_is_on_disk_before_it_runs(runtime: InProcessRuntime) -> None:
    ref = runtime.actor("counter", "durable")
    await ref.send("slow", {"seconds": 1})
    ack = await ref.send("incr", {"by": 1})
    host = runtime.host("counter", 0)
    waiting = [(key, q) for key, q in inbox.read_all(host.inbox.path) if q.command_id == ack["commandId"]]
    assert len(waiting) == 1
    key, queued = waiting[0]
    assert (key, queued.name) == ("durable", "incr")
    assert '"by":1' in queued.body


async def test_a_command_that_ran_before_a_crash_is_not_run_again(runtime: InProcessRuntime) -> None:
    ref = runtime.actor("counter", "once")
    await ref.send("incr", {"by": 1, "tag": "a"}, wait=True, command_id="c1")
    host = runtime.host("counter", 0)
    with sqlite3.connect(host.path_for("once")) as conn:
        body = conn.execute("SELECT body FROM foundry_mailbox WHERE command_id='c1'").fetchone()[0]
    # A crash between the command's commit and the removal of its inbox row leaves the row behind.
    host.inbox.add("once", "c1", "incr", body, 0)
    host.pending_marker("once").touch()
    host = await runtime.restart_host("counter", 0)
    assert await host.recovered() == 1
    assert await ref.call("get") == {"value": 1, "tags": ["a"]}
    assert inbox.read_all(host.inbox.path) == []
    # And a redelivery of the same command id is still answered as a duplicate.
    again = await ref.send("incr", {"by": 1, "tag": "a"}, command_id="c1")
    assert again["duplicate"] is True
    assert await ref.call("get") == {"value": 1, "tags": ["a"]}


async def test_duplicates_racing_the_end_of_their_command_run_once(runtime: InProcessRuntime) -> None:
    ref = runtime.actor("counter", "racy")
    for round_ in range(30):
        command_id = f"r{round_}"
        # The same command sent again and again while it runs and right after it finished.
        sends = [ref.send("incr", {"tag": command_id}, command_id=command_id) for _ in range(5)]
        waits = [ref.send("incr", {"tag": command_id}, wait=True, command_id=command_id) for _ in range(5)]
        results = await asyncio.gather(*sends, *waits)
        assert all(r["value"] >= round_ + 1 for r in results[5:] if "value" in r)
    state = await ref.call("get")
    assert state["tags"] == [f"r{i}" for i in range(30)]


async def test_commands_waiting_at_backup_time_run_after_a_restore(
    settings: Settings, tmp_path: Path
) -> None:
    runtime = InProcessRuntime(
        settings.data_dir,
        Services(settings=settings, clock=FakeClock()),
        idle_seconds=3600,
        extra_role_modules={"counter": COUNTER_MODULE},
    )
    try:
        ref = runtime.actor("counter", "saved")
        await ref.send("incr", {"tag": "before"}, wait=True)
        await ref.send("slow", {"seconds": 1})
        for i in range(10):
            await ref.send("incr", {"tag": f"w{i}"})
        # Acknowledged, not yet run: only the inbox holds them while the backup runs.
        result = await asyncio.to_thread(
            backup_module.backup, settings.data_dir, tmp_path / "bk", ["counter"]
        )
        assert result.waiting == 11  # the slow command and the ten increments
    finally:
        await runtime.close()
    restored = tmp_path / "restored"
    schemas = restore_module.role_schemas(["counter"], {"counter": COUNTER_MODULE})
    await asyncio.to_thread(restore_module.restore, tmp_path / "bk", restored, schemas)
    again = InProcessRuntime(
        restored,
        Services(settings=settings, clock=FakeClock()),
        idle_seconds=3600,
        extra_role_modules={"counter": COUNTER_MODULE},
    )
    try:
        host = again.host("counter", 0)
        assert await host.recovered() == 1
        state = await _value_reaches(again, "saved", 11)
        assert state["tags"] == ["before"] + [f"w{i}" for i in range(10)]
    finally:
        await again.close()


async def test_the_inbox_file_stays_small_under_a_long_stream_of_commands(runtime: InProcessRuntime) -> None:
    ref = runtime.actor("counter", "stream")
    for i in range(3000):
        await ref.send("incr", {"by": 1})
        if i % 500 == 499:
            await asyncio.sleep(0.05)  # room for the checkpoint thread, as between real requests
    state = await _value_reaches(runtime, "stream", 3000, seconds=60)
    assert state["value"] == 3000
    wal = runtime.host("counter", 0).inbox.path.with_name("0.sqlite3-wal")
    # 6,000 writes (add, then remove) of at least a page each: ~25 MB of WAL if nothing folds it back.
    assert wal.stat().st_size < 8 * 1024 * 1024, wal.stat().st_size
