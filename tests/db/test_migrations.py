"""Every role's migrations build exactly the schema its models declare."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from foundry.db.engine import make_engine
from foundry.db.migrate import current_revision, ensure_schema, head_revision, schema_diff
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
