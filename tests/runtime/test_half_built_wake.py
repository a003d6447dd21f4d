"""An instance whose first wake was killed mid-migration wakes fine afterwards, and keeps working."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlalchemy as sa

from foundry.runtime.inprocess import InProcessRuntime
from tests.runtime.counter_role import metadata

RUNTIME_TABLES = ("foundry_mailbox", "foundry_outbox", "foundry_topic_seq")


def build_half_migrated(path: Path) -> None:
    """Only the runtime tables' CREATEs, no ``alembic_version``: what an interrupted first
    migration left when every CREATE TABLE committed on its own."""
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        metadata.create_all(engine, tables=[metadata.tables[name] for name in RUNTIME_TABLES])
    finally:
        engine.dispose()


async def test_a_half_migrated_instance_wakes_and_keeps_working(runtime: InProcessRuntime) -> None:
    host = runtime.host("counter", 0)
    path = host.path_for("half")
    build_half_migrated(path)
    ref = runtime.actor("counter", "half")

    assert await ref.send("incr", {"by": 2, "tag": "a"}, wait=True) == {"value": 2}
    assert await host.sleep_idle(older_than=0) >= 1
    assert await ref.send("incr", {"by": 3, "tag": "b"}, wait=True) == {"value": 5}
    host = await runtime.restart_host("counter", 0)
    assert await ref.call("get") == {"value": 5, "tags": ["a", "b"]}
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
    assert not list(path.parent.glob("*.broken-*"))


async def test_a_half_migrated_instance_with_rows_is_moved_aside_and_rebuilt(
    runtime: InProcessRuntime,
) -> None:
    host = runtime.host("counter", 0)
    path = host.path_for("half-rows")
    build_half_migrated(path)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO foundry_topic_seq(topic, seq) VALUES ('counter:half-rows', 7)")
    ref = runtime.actor("counter", "half-rows")
    assert await ref.send("incr", {"by": 1}, wait=True) == {"value": 1}
    assert await ref.send("incr", {"by": 1}, wait=True) == {"value": 2}
    broken = list(path.parent.glob("half-rows.sqlite3.broken-*"))
    assert len(broken) == 1
