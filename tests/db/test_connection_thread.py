"""`in_connection_thread` runs plain sqlite3 work inside the caller's SQLAlchemy transaction."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from foundry.db.engine import in_connection_thread, make_engine


def _insert_and_count(db: sqlite3.Connection, values: list[int]) -> int:
    db.executemany("INSERT INTO t (v) VALUES (?)", [(v,) for v in values])
    return int(db.execute("SELECT count(*) FROM t").fetchone()[0])


async def _fail_after(engine: AsyncEngine, values: list[int]) -> None:
    async with engine.begin() as conn:
        await in_connection_thread(conn, _insert_and_count, values)
        raise RuntimeError("the caller fails after the work ran")


async def test_work_in_the_connection_thread_commits_and_rolls_back_with_the_transaction(
    tmp_path: Path,
) -> None:
    engine = make_engine(tmp_path / "db.sqlite")
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE t (v INTEGER)")
        async with engine.begin() as conn:
            # It sees what the transaction wrote before it, and the transaction sees what it wrote.
            await conn.exec_driver_sql("INSERT INTO t (v) VALUES (0)")
            assert await in_connection_thread(conn, _insert_and_count, [1, 2]) == 3
            assert (await conn.exec_driver_sql("SELECT count(*) FROM t")).scalar() == 3
        with pytest.raises(RuntimeError):
            await _fail_after(engine, [3, 4, 5])
        async with engine.connect() as conn:
            values = (await conn.execute(sa.text("SELECT v FROM t ORDER BY v"))).scalars().all()
        assert values == [0, 1, 2]
    finally:
        await engine.dispose()
