"""Migrations are atomic, and databases half-built by an interrupted first migration are repaired.

SQLite runs DDL inside a transaction only if something emitted BEGIN first; these tests prove that an
upgrade interrupted at any point (an exception, or a ``kill -9`` of the process) leaves the file as it
was, and that files already left half-built by older code wake fine.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from foundry.db.engine import make_engine
from foundry.db.migrate import current_revision, ensure_schema, head_revision, schema_diff
from foundry.runtime.role import available_roles, load_role

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNTIME_TABLES = ("foundry_mailbox", "foundry_outbox", "foundry_topic_seq")

_FIRST = """
import os
import time

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("first", sa.Column("id", sa.Integer, primary_key=True))
    op.create_index("ix_first_id", "first", ["id"])
    op.create_table("second", sa.Column("id", sa.Integer, primary_key=True))
    ready = os.environ.get("MIGRATION_READY_FILE")
    if ready:
        open(ready, "w").close()
        time.sleep(60)
    if os.environ.get("MIGRATION_RAISE"):
        raise RuntimeError("migration step failed")
    op.create_table("third", sa.Column("id", sa.Integer, primary_key=True))
"""

_SECOND = """
import os

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("fourth", sa.Column("id", sa.Integer, primary_key=True))
    op.add_column("first", sa.Column("note", sa.String, nullable=True))
    if os.environ.get("MIGRATION_RAISE_SECOND"):
        raise RuntimeError("second step failed")
"""


def _environment(root: Path, *, second: bool = False) -> str:
    versions = root / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    (versions / "0001_first.py").write_text(_FIRST)
    if second:
        (versions / "0002_second.py").write_text(_SECOND)
    return str(root)


def _schema(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as conn:
        return sorted(
            conn.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchall()
        )


def _version_rows(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        try:
            return [r[0] for r in conn.execute("SELECT version_num FROM alembic_version")]
        except sqlite3.OperationalError:
            return []


def kill_at_migration_pause(script: str, ready: Path) -> None:
    """Run ``script`` in a new process until a migration step of `_FIRST` pauses, then ``kill -9`` it."""
    env = {**os.environ, "MIGRATION_READY_FILE": str(ready), "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, "the migrating process exited early"
            assert time.monotonic() < deadline, "the migration never reached its pause"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_a_failing_first_migration_leaves_no_table_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    location = _environment(tmp_path / "env-raise")
    path = tmp_path / "db.sqlite3"
    monkeypatch.setenv("MIGRATION_RAISE", "1")
    engine = make_engine(path)
    try:
        with pytest.raises(RuntimeError, match="migration step failed"):
            await ensure_schema(engine, location)
    finally:
        await engine.dispose()
    assert _schema(path) == []
    # The same file migrates cleanly once the step is fixed.
    monkeypatch.delenv("MIGRATION_RAISE")
    engine = make_engine(path)
    try:
        assert await ensure_schema(engine, location) is True
        assert await current_revision(engine) == "0001"
    finally:
        await engine.dispose()
    assert {name for _, name in _schema(path)} == {
        "alembic_version",
        "first",
        "ix_first_id",
        "second",
        "third",
    }


async def test_a_failing_upgrade_step_keeps_the_previous_revision_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "db.sqlite3"
    engine = make_engine(path)
    try:
        await ensure_schema(engine, _environment(tmp_path / "env-one"))
    finally:
        await engine.dispose()
    before = _schema(path)
    monkeypatch.setenv("MIGRATION_RAISE_SECOND", "1")
    engine = make_engine(path)
    try:
        with pytest.raises(RuntimeError, match="second step failed"):
            await ensure_schema(engine, _environment(tmp_path / "env-two", second=True))
    finally:
        await engine.dispose()
    assert _schema(path) == before
    assert _version_rows(path) == ["0001"]


def test_kill_9_in_the_middle_of_a_first_migration_leaves_the_file_as_before(tmp_path: Path) -> None:
    location = _environment(tmp_path / "env-hang")
    path = tmp_path / "db.sqlite3"
    ready = tmp_path / "ready"
    script = textwrap.dedent(
        f"""
        import asyncio
        from pathlib import Path
        from foundry.db.engine import make_engine
        from foundry.db.migrate import ensure_schema

        asyncio.run(ensure_schema(make_engine(Path({str(path)!r})), {location!r}))
        """
    )
    # Two tables and an index have been created by now: the process dies mid-migration.
    kill_at_migration_pause(script, ready)
    assert _schema(path) == []
    assert _version_rows(path) == []


def _build_half_migrated(path: Path, role_name: str) -> sa.MetaData:
    """The state a kill -9 left behind with the old, non-transactional upgrade: the runtime tables'
    CREATEs ran (each committed on its own) and ``alembic_version`` never got its row."""
    metadata = load_role(role_name).metadata
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        metadata.create_all(engine, tables=[metadata.tables[name] for name in RUNTIME_TABLES])
    finally:
        engine.dispose()
    return metadata


@pytest.mark.parametrize("role_name", available_roles())
@pytest.mark.parametrize("empty_version_table", [False, True])
async def test_a_half_built_database_is_rebuilt_at_head(
    tmp_path: Path, role_name: str, empty_version_table: bool
) -> None:
    role = load_role(role_name)
    path = tmp_path / "half.sqlite3"
    _build_half_migrated(path, role_name)
    if empty_version_table:
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
    engine = make_engine(path)
    try:
        assert await ensure_schema(engine, role.migrations_location) is True
        assert await current_revision(engine) == head_revision(role.migrations_location)
        assert await schema_diff(engine, role.metadata) == []
        assert await ensure_schema(engine, role.migrations_location) is False
    finally:
        await engine.dispose()
    assert not list(tmp_path.glob("*.broken-*"))


async def test_a_half_built_database_that_holds_rows_is_moved_aside_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    role = load_role("task")
    path = tmp_path / "task-1.sqlite3"
    _build_half_migrated(path, "task")
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO foundry_mailbox(command_id, name, body, status, created_at) "
            "VALUES ('c1', 'initialize', '{}', 'pending', 1)"
        )
    engine = make_engine(path)
    try:
        with caplog.at_level(logging.ERROR, logger="foundry.db"):
            assert await ensure_schema(engine, role.migrations_location) is True
        assert await schema_diff(engine, role.metadata) == []
        async with engine.connect() as conn:
            assert (await conn.execute(sa.text("SELECT count(*) FROM foundry_mailbox"))).scalar() == 0
    finally:
        await engine.dispose()
    broken = list(tmp_path.glob("task-1.sqlite3.broken-*"))
    assert len(broken) == 1
    with sqlite3.connect(broken[0]) as conn:
        assert conn.execute("SELECT command_id FROM foundry_mailbox").fetchall() == [("c1",)]
    assert any(str(broken[0]) in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)


async def test_a_file_that_is_not_a_database_is_left_alone(tmp_path: Path) -> None:
    """Corruption is not an interrupted migration: nothing is moved or deleted automatically."""
    role = load_role("task")
    path = tmp_path / "garbage.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    engine = make_engine(path)
    try:
        with pytest.raises(sa.exc.DatabaseError):
            await ensure_schema(engine, role.migrations_location)
    finally:
        await engine.dispose()
    assert path.read_bytes().startswith(b"this is not a database")
    assert not list(tmp_path.glob("*.broken-*"))
