"""New instance databases are copied from a head-schema template instead of migrated one by one.

What a user would notice if this went wrong: an instance that cannot wake (a half-copied file, a
template from an older schema), or a schema that differs from what the migrations build.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from foundry.db.engine import make_engine
from foundry.db.migrate import current_revision, ensure_schema, head_revision, schema_diff, seed_new_database
from foundry.runtime.role import available_roles, load_role
from tests.db.test_atomic_migrations import REPO_ROOT, _environment, _schema, kill_at_migration_pause


def _dump(path: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(path) as conn:
        return sorted(
            conn.execute(
                "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' AND sql IS NOT NULL"
            ).fetchall()
        )


@pytest.mark.parametrize("role_name", available_roles())
async def test_a_seeded_database_is_the_migrated_one(tmp_path: Path, role_name: str) -> None:
    role = load_role(role_name)
    migrated = tmp_path / "migrated.sqlite3"
    engine = make_engine(migrated)
    try:
        assert await ensure_schema(engine, role.migrations_location) is True
    finally:
        await engine.dispose()

    for n in range(3):  # the first seed builds the template, the next ones copy it
        seeded = tmp_path / f"seeded-{n}.sqlite3"
        assert await seed_new_database(seeded, role.migrations_location, tmp_path / ".schema") is True
        engine = make_engine(seeded)
        try:
            assert await current_revision(engine) == head_revision(role.migrations_location)
            assert await ensure_schema(engine, role.migrations_location) is False  # nothing left to run
            assert await schema_diff(engine, role.metadata) == []
        finally:
            await engine.dispose()
        assert _dump(seeded) == _dump(migrated)
    # Only the template and the databases: no temporary file stays behind.
    assert sorted(p.name for p in (tmp_path / ".schema").iterdir()) == [
        f"{Path(role.migrations_location).name}-{head_revision(role.migrations_location)}.template"
    ]


async def test_an_existing_database_is_never_replaced(tmp_path: Path) -> None:
    location = _environment(tmp_path / "env")
    path = tmp_path / "db.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE mine (id INTEGER)")
        conn.execute("INSERT INTO mine VALUES (1)")
    assert await seed_new_database(path, location, tmp_path / ".schema") is False
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT id FROM mine").fetchall() == [(1,)]


async def test_a_new_revision_gets_a_new_template(tmp_path: Path) -> None:
    """Databases created after an upgrade of the code start at the new head, not the old template's."""
    # The same environment folder name before and after the upgrade, as in a deployment.
    old = _environment(tmp_path / "before" / "env")
    new = _environment(tmp_path / "after" / "env", second=True)
    schema_dir = tmp_path / ".schema"
    assert await seed_new_database(tmp_path / "a.sqlite3", old, schema_dir) is True
    assert await seed_new_database(tmp_path / "b.sqlite3", new, schema_dir) is True
    names = {n for _, n in _schema(tmp_path / "b.sqlite3")}
    assert "fourth" in names
    assert "fourth" not in {n for _, n in _schema(tmp_path / "a.sqlite3")}


def test_kill_9_while_the_template_is_built_leaves_nothing_a_wake_would_trip_on(tmp_path: Path) -> None:
    location = _environment(tmp_path / "env-hang")
    path = tmp_path / "db.sqlite3"
    schema_dir = tmp_path / ".schema"
    ready = tmp_path / "ready"
    script = textwrap.dedent(
        f"""
        import asyncio
        from pathlib import Path
        from foundry.db.migrate import seed_new_database

        asyncio.run(seed_new_database(Path({str(path)!r}), {location!r}, Path({str(schema_dir)!r})))
        """
    )
    kill_at_migration_pause(script, ready)
    assert not path.exists()
    assert not list(schema_dir.glob("*.template"))

    # The next wake, in a new process, seeds a complete database.
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=60,
    )
    assert done.returncode == 0
    assert {n for _, n in _schema(path)} >= {"alembic_version", "first", "second", "third"}
