"""Every statement through an instance engine is one hop to the connection's thread, and keeps the
DBAPI behaviour SQLAlchemy relies on: rows, rowcount, lastrowid, RETURNING and error types."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiosqlite
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from foundry.db.engine import make_engine


async def test_a_statement_is_one_thread_hop_with_dbapi_semantics_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(tmp_path / "db.sqlite")
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)")
        hops: list[Any] = []
        execute = aiosqlite.Connection._execute

        async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
            hops.append(fn)
            return await execute(self, fn, *args, **kwargs)

        monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
        async with engine.begin() as conn:
            hops.clear()
            inserted = await conn.execute(sa.text("INSERT INTO t (v) VALUES (:v)"), {"v": "a"})
            assert len(hops) == 1
            assert inserted.lastrowid == 1
            hops.clear()
            rows = (await conn.execute(sa.text("SELECT id, v FROM t WHERE v = :v"), {"v": "a"})).all()
            assert len(hops) == 1
            assert [tuple(r) for r in rows] == [(1, "a")]
            await conn.execute(sa.text("INSERT INTO t (v) VALUES (:v)"), [{"v": "b"}, {"v": "c"}])
            updated = await conn.execute(sa.text("UPDATE t SET v = v || '!' WHERE id > 1"))
            assert updated.rowcount == 2
            returned = await conn.execute(sa.text("DELETE FROM t WHERE id = 3 RETURNING v"))
            assert returned.scalar() == "c!"
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(sa.text("INSERT INTO t (v) VALUES ('a')"))
        async with engine.connect() as conn:
            values = (await conn.execute(sa.text("SELECT v FROM t ORDER BY id"))).scalars().all()
        assert values == ["a", "b!"]
    finally:
        await engine.dispose()
