"""A transaction cancelled at any point (a caller's timeout, a closing instance, a client that went
away) must not leave its pooled connection inside it: the next user of that connection would fail at
BEGIN ("cannot start a transaction within a transaction"), and one holding ``BEGIN IMMEDIATE`` keeps
the database's write lock, so every later write of that actor fails until the process restarts."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
import sqlalchemy as sa

from foundry.db.engine import make_engine, read_only


async def _cancel_after(steps: int, work: asyncio.Task[None]) -> None:
    for _ in range(steps):
        await asyncio.sleep(0)
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await work


@pytest.mark.parametrize("reader", [False, True], ids=["write", "read"])
async def test_a_transaction_cancelled_at_any_step_leaves_every_connection_usable(
    tmp_path: Path, reader: bool, caplog: pytest.LogCaptureFixture
):
    engine = make_engine(tmp_path / "actor.db")
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
        target = read_only(engine) if reader else engine

        async def work() -> None:
            async with target.begin() as conn:
                if not reader:
                    await conn.execute(sa.text("INSERT INTO t VALUES (1)"))
                await conn.execute(sa.text("SELECT count(*) FROM t"))

        # Cancel after every number of event-loop steps a transaction takes, so that each of its
        # awaits (BEGIN, the statements, COMMIT, the return to the pool) is hit.
        for steps in range(60):
            await _cancel_after(steps, asyncio.create_task(work()))

        # Every connection of the pool (2, plus 2 of overflow) at once: each must begin and write.
        async def write_once() -> None:
            async with engine.begin() as conn:
                await conn.execute(sa.text("INSERT INTO t VALUES (2)"))
                await asyncio.sleep(0.01)

        await asyncio.wait_for(asyncio.gather(*(write_once() for _ in range(4))), 20)
        async with engine.connect() as conn:
            assert (await conn.execute(sa.text("SELECT count(*) FROM t WHERE x = 2"))).scalar() == 4
        # Never left inside one in the first place (the repair at the next BEGIN is a last resort).
        assert "abandoned transaction" not in caplog.text
    finally:
        await engine.dispose()


async def test_a_connection_left_inside_a_transaction_is_repaired_at_its_next_use(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    engine = make_engine(tmp_path / "actor.db")
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
        # Whatever way it happened, a pooled connection went back holding BEGIN IMMEDIATE.
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            await raw.driver_connection.execute("BEGIN IMMEDIATE")  # type: ignore[union-attr]
        for _ in range(4):  # whichever pooled connection each one gets
            async with engine.begin() as conn:
                await conn.execute(sa.text("INSERT INTO t VALUES (1)"))
        assert "abandoned transaction" in caplog.text
    finally:
        await engine.dispose()
