"""The outbox: ordered per target, independent across targets, retried with backoff, dead letters.

A target "fails" here for a real reason: its database file is not a database, so its host cannot
wake it and refuses every send until the file is removed.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from foundry.clock import FakeClock
from foundry.errors import ActorUnavailable, NotFound
from foundry.runtime.inprocess import InProcessRuntime
from foundry.services import Services
from tests.conftest import COUNTER_MODULE, make_settings


def _runtime(data_dir: Path, **outbox: Any) -> InProcessRuntime:
    settings = make_settings(data_dir, runtime=outbox)
    return InProcessRuntime(
        settings.data_dir,
        Services(settings=settings, clock=FakeClock()),
        idle_seconds=3600,
        extra_role_modules={"counter": COUNTER_MODULE},
    )


@pytest.fixture
async def patient(tmp_path: Path) -> AsyncIterator[InProcessRuntime]:
    """Many attempts before a dead letter, short waits."""
    rt = _runtime(
        tmp_path / "data", outbox_max_attempts=1000, outbox_backoff_base_s=0.02, outbox_backoff_cap_s=0.1
    )
    yield rt
    await rt.close()


@pytest.fixture
async def impatient(tmp_path: Path) -> AsyncIterator[InProcessRuntime]:
    """Three attempts, then a dead letter."""
    rt = _runtime(
        tmp_path / "data", outbox_max_attempts=3, outbox_backoff_base_s=0.02, outbox_backoff_cap_s=0.05
    )
    yield rt
    await rt.close()


def break_database(rt: InProcessRuntime, key: str) -> Path:
    path = rt.host("counter", 0).path_for(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a database" * 100)
    return path


def repair_database(path: Path) -> None:
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        p.unlink(missing_ok=True)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def outbox_rows(rt: InProcessRuntime, key: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(rt.host("counter", 0).path_for(key)) as conn:
        return conn.execute(
            "SELECT key, status, attempts, last_error FROM foundry_outbox ORDER BY id"
        ).fetchall()


async def tags(rt: InProcessRuntime, key: str) -> list[str]:
    return list((await rt.actor("counter", key).call("get"))["tags"])


async def test_a_failing_target_delays_no_other_and_each_target_keeps_its_order(
    patient: InProcessRuntime,
) -> None:
    broken = break_database(patient, "t-broken")
    healthy = [f"t-ok-{i}" for i in range(5)]
    sends = [{"to": "t-broken", "body": {"tag": "b0"}}]
    for round_ in range(3):
        sends += [{"to": key, "body": {"tag": f"{key}:{round_}"}} for key in healthy]
        sends.append({"to": "t-broken", "body": {"tag": f"b{round_ + 1}"}})
    await patient.actor("counter", "org").send("send_many", {"sends": sends}, wait=True)

    # Every healthy target gets its three sends, in order, while the broken one keeps failing.
    async def healthy_done() -> bool:
        return all([len(await tags(patient, k)) == 3 for k in healthy])

    await eventually(healthy_done, timeout=5)
    for key in healthy:
        assert await tags(patient, key) == [f"{key}:{r}" for r in range(3)]
    with pytest.raises(ActorUnavailable, match="could not wake"):
        await patient.actor("counter", "t-broken").call("get")

    # It failed several times; attempts and the error are on its head row.
    async def failed_thrice() -> bool:
        rows = outbox_rows(patient, "org")
        return bool(rows) and rows[0][2] >= 3

    await eventually(failed_thrice)
    rows = outbox_rows(patient, "org")
    assert [r[0] for r in rows] == ["t-broken"] * 4
    assert rows[0][1] == "pending"
    assert "could not wake" in rows[0][3]

    # Once it can wake again, everything arrives, in the order it was sent.
    repair_database(broken)

    async def broken_done() -> bool:
        try:
            return len(await tags(patient, "t-broken")) == 4
        except ActorUnavailable:
            return False

    await eventually(broken_done)
    assert await tags(patient, "t-broken") == ["b0", "b1", "b2", "b3"]
    await eventually(lambda: _true(not outbox_rows(patient, "org")))
    assert not patient.host("counter", 0).pending_marker("org").exists()


async def _true(value: bool) -> bool:
    return value


async def test_a_target_that_always_fails_becomes_a_visible_dead_letter_that_can_be_retried(
    impatient: InProcessRuntime,
) -> None:
    rt = impatient
    host = rt.host("counter", 0)
    broken = break_database(rt, "dead-target")
    sender = rt.actor("counter", "sender")
    await sender.send(
        "send_many",
        {
            "sends": [
                {"to": "dead-target", "body": {"tag": "d0"}},
                {"to": "live-target", "body": {"tag": "l0"}},
                {"to": "dead-target", "body": {"tag": "d1"}},
            ]
        },
        wait=True,
    )

    async def two_dead() -> bool:
        return bool((await rt.dead_letters("counter", "sender"))["count"] == 2)

    await eventually(two_dead)
    letters = await rt.dead_letters("counter", "sender")
    head, behind = letters["items"]
    assert (head["role"], head["key"], head["name"], head["attempts"]) == (
        "counter",
        "dead-target",
        "incr",
        3,
    )
    assert "could not wake" in head["lastError"]
    assert behind["attempts"] == 0
    assert f"blocked behind dead letter {head['id']}" in behind["lastError"]
    assert await tags(rt, "live-target") == ["l0"]

    # Not retried automatically; counted for `foundry actors ls`; no pending marker left behind.
    await asyncio.sleep(0.3)
    assert [r[2] for r in outbox_rows(rt, "sender")] == [3, 0]
    assert await host.dead_letter_counts() == {"sender": 2}
    assert (host.dead_dir / "sender").read_text() == "2"
    assert not host.pending_marker("sender").exists()

    # A dead-letter-only instance sleeps, and a restart does not wake it; its count stays visible.
    assert "sender" in host.awake_keys()
    assert await host.sleep_idle(older_than=0) >= 1
    host = await rt.restart_host("counter", 0)
    assert await host.recovered() == 0
    assert "sender" not in host.awake_keys()
    assert await host.dead_letter_counts() == {"sender": 2}

    # A later send to the same target waits behind the dead ones, so the target's order holds.
    await sender.send("send_many", {"sends": [{"to": "dead-target", "body": {"tag": "d2"}}]}, wait=True)

    async def three_dead() -> bool:
        return bool((await rt.dead_letters("counter", "sender"))["count"] == 3)

    await eventually(three_dead)

    # The operator fixes the target and retries: all three arrive, in order, and nothing is dead.
    repair_database(broken)
    assert await rt.retry_dead_letters("counter", "sender") == 3

    async def delivered() -> bool:
        return await tags(rt, "dead-target") == ["d0", "d1", "d2"]

    await eventually(delivered)
    await eventually(lambda: _true(not outbox_rows(rt, "sender")))
    assert (await rt.dead_letters("counter", "sender"))["count"] == 0
    assert await host.dead_letter_counts() == {}
    assert not (host.dead_dir / "sender").exists()
    assert await rt.retry_dead_letters("counter", "sender") == 0
    # An operator's mistyped key finds nothing and creates nothing.
    for look in (rt.dead_letters, rt.retry_dead_letters):
        with pytest.raises(NotFound, match="no counter instance 'sendr'"):
            await look("counter", "sendr")
    assert not host.path_for("sendr").exists()


async def test_attempts_and_backoff_survive_a_restart(tmp_path: Path) -> None:
    rt = _runtime(
        tmp_path / "data", outbox_max_attempts=6, outbox_backoff_base_s=0.2, outbox_backoff_cap_s=0.2
    )
    try:
        break_database(rt, "down")
        await rt.actor("counter", "src").send("send_many", {"sends": [{"to": "down"}]}, wait=True)

        async def failed_twice() -> bool:
            rows = outbox_rows(rt, "src")
            return bool(rows) and rows[0][2] >= 2

        await eventually(failed_twice)
        host = await rt.restart_host("counter", 0)  # the host dies mid-backoff
        before = outbox_rows(rt, "src")[0][2]
        assert 2 <= before < 6
        assert await host.recovered() == 1  # pending work: the sender is woken and goes on

        async def dead() -> bool:
            return bool((await rt.dead_letters("counter", "src"))["count"] == 1)

        await eventually(dead)
        # The count went on from where it was: six attempts in all, not six after the restart.
        assert (await rt.dead_letters("counter", "src"))["items"][0]["attempts"] == 6
    finally:
        await rt.close()


async def test_refusals_for_good_are_dropped_and_unknown_commands_are_kept_as_dead_letters(
    impatient: InProcessRuntime,
) -> None:
    rt = impatient
    await rt.actor("counter", "mixed").send(
        "send_many",
        {
            "sends": [
                {"to": "r1", "name": "incr", "body": {"by": "not a number"}},
                {"to": "r2", "name": "command_of_a_newer_version"},
                {"to": "r3", "body": {"tag": "fine"}},
            ]
        },
        wait=True,
    )

    async def settled() -> bool:
        return [r[0] for r in outbox_rows(rt, "mixed")] == ["r2"] and outbox_rows(rt, "mixed")[0][1] == "dead"

    await eventually(settled)
    letter = (await rt.dead_letters("counter", "mixed"))["items"][0]
    assert letter["name"] == "command_of_a_newer_version"
    assert letter["lastError"].startswith("not_found:")
    assert await tags(rt, "r3") == ["fine"]
    assert (await rt.actor("counter", "r1").call("get"))["value"] == 0
