"""alembic, driven from code: one environment per role under ``migrations/<role package>/``.

alembic's ``op`` and ``context`` are process-global proxies, so two migrations interleaving on one
event loop send DDL to the wrong connection (measured). Upgrades therefore run under one lock per
event loop; a module-level lock would bind to the first loop and break under pytest.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import weakref
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

import migrations as _migrations_package  # the top-level package that holds the environments

log = logging.getLogger(__name__)

MIGRATIONS_ROOT = Path(_migrations_package.__file__).resolve().parent
_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def migrations_dir(role_package: str) -> Path:
    """The default alembic environment of a role package: ``migrations/<package>``."""
    return MIGRATIONS_ROOT / role_package


@functools.cache
def alembic_config(location: str) -> Config:
    """An alembic Config without alembic.ini, pointing at one role's environment folder."""
    cfg = Config()
    cfg.set_main_option("script_location", location)
    cfg.set_main_option("version_locations", str(Path(location) / "versions"))
    cfg.set_main_option("path_separator", "os")
    return cfg


@functools.cache
def script_directory(location: str) -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config(location))


def head_revision(location: str) -> str | None:
    return script_directory(location).get_current_head()


def _upgrade_sync(connection: Connection, location: str) -> None:
    script = script_directory(location)

    def _steps(rev: Any, _ctx: Any) -> Any:
        return script._upgrade_revs("head", rev)

    # EnvironmentContext with the cached ScriptDirectory skips re-importing env.py and re-parsing
    # the revision files at every wake (4 ms instead of 6-16 ms, research C).
    with EnvironmentContext(alembic_config(location), script, fn=_steps, destination_rev="head") as env:
        env.configure(connection=connection, target_metadata=None, render_as_batch=True)
        with env.begin_transaction():
            env.run_migrations()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        try:
            result = await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
        except sa.exc.OperationalError:
            return None
        return result.scalar()


async def ensure_schema(engine: AsyncEngine, location: str) -> bool:
    """Bring the database to the role's head revision. Returns True when a migration ran.

    Fast path: one SELECT against the cached head (about 3 ms on this hardware).
    """
    head = head_revision(location)
    if await current_revision(engine) == head:
        return False
    lock = _LOCKS.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with lock, engine.begin() as conn:
        await conn.run_sync(_upgrade_sync, location)
    log.debug("migrated role=%s to head=%s", location, head)
    return True


async def schema_diff(engine: AsyncEngine, metadata: sa.MetaData) -> list[Any]:
    """Differences between the database schema and the role's models (empty when they agree)."""

    def _compare(sync_conn: Connection) -> list[Any]:
        ctx = MigrationContext.configure(sync_conn, opts={"render_as_batch": True})
        return list(compare_metadata(ctx, metadata))

    async with engine.connect() as conn:
        return await conn.run_sync(_compare)
