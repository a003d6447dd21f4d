"""Every role's migrations build exactly the schema its models declare."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from foundry.db.engine import make_engine
from foundry.db.migrate import current_revision, ensure_schema, head_revision, schema_diff, script_directory
from foundry.runtime.role import available_roles, load_role


@pytest.mark.parametrize("role_name", available_roles())
async def test_fresh_database_migrates_to_head_and_matches_the_models(tmp_path: Path, role_name: str) -> None:
    role = load_role(role_name)
    engine = make_engine(tmp_path / "fresh.sqlite3")
    try:
        assert await ensure_schema(engine, role.migrations_location) is True
        assert await current_revision(engine) == head_revision(role.migrations_location)
        assert await schema_diff(engine, role.metadata) == []
        # Second wake takes the fast path.
        assert await ensure_schema(engine, role.migrations_location) is False
        async with engine.connect() as conn:
            mode = (await conn.execute(sa.text("PRAGMA journal_mode"))).scalar()
        assert mode == "wal"
    finally:
        await engine.dispose()


def test_every_role_ships_runtime_tables() -> None:
    for role_name in available_roles():
        tables = load_role(role_name).metadata.tables
        assert {"foundry_mailbox", "foundry_outbox", "foundry_topic_seq"} <= set(tables), role_name


async def test_organization_upgrade_from_0001_keeps_existing_data(tmp_path: Path) -> None:
    """Forward-only migrations are tested on upgrade, not just on fresh files."""
    from alembic import command

    from foundry.db.migrate import alembic_config

    role = load_role("organization")
    path = tmp_path / "old.sqlite3"
    cfg = alembic_config(role.migrations_location)
    cfg.set_main_option("sqlalchemy.url", f"sqlite:///{path}")
    try:
        command.upgrade(cfg, "0001")
    finally:
        cfg.set_main_option("sqlalchemy.url", "")
    engine = make_engine(path)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO profile(id, organization_id, kind, github_login, github_account_id, "
                    "display_name, installation_status, default_model, created_at, updated_at) "
                    "VALUES (1, 'acme', 'organization', 'acme', 7, 'ACME', 'connected', 'opus', 1, 1)"
                )
            )
        assert await ensure_schema(engine, role.migrations_location) is True
        assert await schema_diff(engine, role.metadata) == []
        async with engine.connect() as conn:
            row = (await conn.execute(sa.text("SELECT display_name, sync_status FROM profile"))).one()
        assert tuple(row) == ("ACME", "pending")
    finally:
        await engine.dispose()


@pytest.mark.parametrize("role_name", available_roles())
def test_the_head_read_from_the_revision_files_is_alembics(role_name: str) -> None:
    location = load_role(role_name).migrations_location
    assert head_revision(location) == script_directory(location).get_current_head()


def test_the_head_of_a_branched_history_is_left_to_alembic(tmp_path: Path) -> None:
    """Two heads cannot be settled from the files alone: alembic answers (and refuses)."""
    versions = tmp_path / "env" / "versions"
    versions.mkdir(parents=True)
    for name, down in (("a", None), ("b", "a"), ("c", "a")):
        (versions / f"{name}.py").write_text(f"revision = {name!r}\ndown_revision = {down!r}\n")
    (tmp_path / "env" / "script.py.mako").write_text("")
    with pytest.raises(Exception, match="multiple heads"):
        head_revision(str(tmp_path / "env"))


def test_a_host_process_comes_up_without_importing_alembic_or_the_fakes(tmp_path: Path) -> None:
    """A restarted host process answers sooner without alembic's 0.4 s import (databases at head
    need only the head revision) nor the fake GitHub's JWT stack (0.3 s)."""
    code = (
        "import sys, foundry.runtime.host_process, foundry.services\n"
        "from foundry.runtime.role import available_roles, load_role\n"
        "from foundry.db.migrate import head_revision\n"
        "[head_revision(load_role(r).migrations_location) for r in available_roles()]\n"
        "from foundry.config import Settings\n"
        "foundry.services.build_services(Settings(mode='mock', data_dir=sys.argv[1]))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'jwt')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
