"""alembic, driven from code: one environment per role under ``migrations/<role package>/``.

alembic's ``op`` and ``context`` are process-global proxies, so two migrations interleaving on one
event loop send DDL to the wrong connection (measured). Upgrades therefore run under one lock per
event loop; a module-level lock would bind to the first loop and break under pytest.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import logging
import os
import shutil
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

import migrations as _migrations_package  # the top-level package that holds the environments
from foundry.db.engine import make_engine, no_transaction, read_only

# alembic is imported where a migration runs, not here: importing it costs about 0.4 s, and every
# process that hosts actors imports this module on its way up, which a restarted host process pays
# before it can answer. An instance whose database is at head (every wake but the first) needs only
# the head revision, read from the revision files by `head_revision`.
if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

log = logging.getLogger(__name__)

MIGRATIONS_ROOT = Path(_migrations_package.__file__).resolve().parent
_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()
_BUILD_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def migrations_dir(role_package: str) -> Path:
    """The default alembic environment of a role package: ``migrations/<package>``."""
    return MIGRATIONS_ROOT / role_package


@functools.cache
def alembic_config(location: str) -> Config:
    """An alembic Config without alembic.ini, pointing at one role's environment folder."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", location)
    cfg.set_main_option("version_locations", str(Path(location) / "versions"))
    cfg.set_main_option("path_separator", "os")
    return cfg


@functools.cache
def script_directory(location: str) -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(location))


@functools.cache
def head_revision(location: str) -> str | None:
    """The head revision of one environment (``None``: no revisions).

    Read from the revision files' ``revision``/``down_revision`` assignments, which is what alembic
    itself resolves them from, without importing alembic; anything this reading cannot settle on its
    own (several heads, a file it cannot parse) is left to alembic's ScriptDirectory.
    """
    graph = _revision_graph(Path(location) / "versions")
    if graph is not None:
        revisions, parents = graph
        heads = revisions - parents
        if len(heads) == 1:
            return heads.pop()
        if not revisions:
            return None
    return script_directory(location).get_current_head()


class UnknownSchemaRevision(Exception):
    """A database's recorded revision is none of this code's migrations (a newer Foundry wrote it)."""


@functools.cache
def known_revisions(location: str) -> frozenset[str]:
    """Every revision id of one environment."""
    graph = _revision_graph(Path(location) / "versions")
    if graph is not None:
        return frozenset(graph[0])
    return frozenset(rev.revision for rev in script_directory(location).walk_revisions())


def _revision_graph(versions: Path) -> tuple[set[str], set[str]] | None:
    """Every revision id in ``versions`` and every id named as a down revision; None if unsure."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted(versions.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(), str(path))
        except (OSError, SyntaxError, ValueError) as exc:
            log.debug("reading revisions: %s left to alembic (%s)", path, exc)
            return None
        values: dict[str, Any] = {}
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            else:
                continue
            if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                try:
                    values[target.id] = ast.literal_eval(value)
                except ValueError:
                    return None
        revision = values.get("revision")
        if not isinstance(revision, str):
            return None
        revisions.add(revision)
        down = values.get("down_revision")
        if isinstance(down, str):
            parents.add(down)
        elif isinstance(down, (tuple, list)):
            parents.update(d for d in down if isinstance(d, str))
        elif down is not None:
            return None
    return revisions, parents


class HalfBuiltDatabase(Exception):
    """A file with tables but no recorded revision, and rows in some of them (see `ensure_schema`)."""

    def __init__(self, tables: list[str]) -> None:
        super().__init__(f"unversioned tables hold rows: {', '.join(tables)}")
        self.tables = tables


def _recorded_revision(connection: Connection) -> str | None:
    has_table = connection.exec_driver_sql(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='alembic_version'"
    ).first()
    if has_table is None:
        return None
    return connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()


def _clear_unversioned(connection: Connection, path: str) -> None:
    """Inside the upgrade's transaction: drop what an interrupted first migration left behind.

    Before migrations were atomic, a crash during an instance's first wake could commit some of its
    CREATE TABLEs but never the ``alembic_version`` row, and every later wake then failed on "table
    already exists". Empty leftovers are dropped and the migration rebuilds them; if any leftover
    holds rows, nothing is dropped (`HalfBuiltDatabase`) so the caller can keep the file.
    """
    objects = connection.exec_driver_sql(
        "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%'"
    ).all()
    if not objects:
        return
    tables = [name for kind, name in objects if kind == "table" and name != "alembic_version"]
    holding = [t for t in tables if connection.exec_driver_sql(f'SELECT 1 FROM "{t}" LIMIT 1').first()]
    if holding:
        raise HalfBuiltDatabase(holding)
    log.warning(
        "%s: no recorded revision but %d leftover tables (an interrupted first migration); "
        "they are empty, dropping them and migrating from scratch",
        path,
        len(objects),
    )
    for kind, name in objects:
        connection.exec_driver_sql(f'DROP {kind.upper()} IF EXISTS "{name}"')


def _upgrade_sync(connection: Connection, location: str, path: str) -> None:
    from alembic.runtime.environment import EnvironmentContext
    from alembic.runtime.migration import MigrationStep

    if _recorded_revision(connection) is None:
        _clear_unversioned(connection, path)
    script = script_directory(location)

    def _steps(rev: Any, _ctx: Any) -> Any:
        # What `alembic upgrade head` runs from the current revision(s), oldest step first.
        revisions = reversed(list(script.iterate_revisions("head", rev, implicit_base=True)))
        return [MigrationStep.upgrade_from_script(script.revision_map, r) for r in revisions]

    # EnvironmentContext with the cached ScriptDirectory skips re-importing env.py and re-parsing
    # the revision files at every wake (4 ms instead of 6-16 ms, measured).
    with EnvironmentContext(alembic_config(location), script, fn=_steps, destination_rev="head") as env:
        # The connection is already in the engine's transaction, so alembic adds no BEGIN/COMMIT of
        # its own and every step, version row included, commits together or not at all.
        env.configure(connection=connection, target_metadata=None, render_as_batch=True)
        with env.begin_transaction():
            env.run_migrations()


def _move_aside(path: Path, stamp: str) -> Path:
    """Rename a database file (with its WAL and shared-memory files) to ``<name>.broken-<stamp>``."""
    target = path.with_name(f"{path.name}.broken-{stamp}")
    n = 1
    while target.exists():  # never overwrite an earlier broken copy
        n += 1
        target = path.with_name(f"{path.name}.broken-{stamp}-{n}")
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(target.with_name(target.name + suffix))
    path.rename(target)
    return target


async def current_revision(engine: AsyncEngine) -> str | None:
    async with read_only(engine).connect() as conn:
        try:
            result = await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
        except sa.exc.OperationalError:
            return None
        return result.scalar()


async def ensure_schema(engine: AsyncEngine, location: str) -> bool:
    """Bring the database to the role's head revision. Returns True when a migration ran.

    The upgrade is one transaction: interrupted anywhere (an error, a kill), it leaves the file as it
    was. A file already half-built by an interrupted first migration (tables, no revision) is
    rebuilt; if its leftovers hold rows it is moved aside to ``<name>.broken-<UTC time>``, logged at
    ERROR, and a fresh database takes its place, so the instance never stays unable to wake.

    Fast path: one SELECT against the cached head (about 3 ms on this hardware).
    """
    head = head_revision(location)
    current = await current_revision(engine)
    if current == head:
        return False
    path = engine.url.database or ""
    if current is not None and current not in known_revisions(location):
        raise UnknownSchemaRevision(
            f"{path} has schema revision {current!r}, which this Foundry does not know: a newer "
            "Foundry wrote it. Run that version again, or restore a backup made by this one"
        )
    lock = _LOCKS.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with lock:
        try:
            async with engine.begin() as conn:
                await conn.run_sync(_upgrade_sync, location, path)
        except HalfBuiltDatabase as exc:
            # Release every pooled handle on the old file before renaming it.
            await engine.dispose()
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            moved = await asyncio.to_thread(_move_aside, Path(path), stamp)
            log.error(
                "%s had tables but no recorded revision, and %s; moved it aside to %s and "
                "building a fresh database in its place; inspect or restore the moved file by hand",
                path,
                exc,
                moved,
            )
            async with engine.begin() as conn:
                await conn.run_sync(_upgrade_sync, location, path)
    log.debug("migrated role=%s to head=%s", location, head)
    return True


def _copy_atomically(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` so that ``target`` is either absent or complete, even after a kill."""
    tmp = target.with_name(f"{target.name}.seed-{os.getpid()}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


async def _build_template(template: Path, location: str) -> None:
    """Migrate a scratch database to head and publish it as ``template`` (atomically)."""
    scratch = template.with_name(f"{template.name}.build-{os.getpid()}.tmp")
    await asyncio.to_thread(scratch.unlink, missing_ok=True)
    engine = make_engine(scratch)
    try:
        await ensure_schema(engine, location)
        # Outside a transaction: SQLite refuses a checkpoint inside one.
        async with no_transaction(engine).connect() as conn:
            # Fold the WAL into the main file: the template is copied as that one file.
            await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        await engine.dispose()
    await asyncio.to_thread(_publish, scratch, template)


def _publish(scratch: Path, template: Path) -> None:
    for suffix in ("-wal", "-shm"):
        scratch.with_name(scratch.name + suffix).unlink(missing_ok=True)
    os.replace(scratch, template)


async def seed_new_database(path: Path, location: str, template_dir: Path) -> bool:
    """Give a database file that does not exist yet the role's head schema, by copying a template.

    Running every migration for each new instance costs 25-50 ms of CPU under a lock that serializes
    alembic in the process, so a burst of first wakes (hundreds of new tasks) queued behind it; a
    file copy costs well under a millisecond. The template (``<environment>-<head>.template``) is
    built once, by migrating a scratch file, and named after the head revision, so a new revision
    gets a new template. Copy and build both write a temporary file and rename it: a kill leaves
    either no file (the next wake seeds again) or a complete one. Returns True when it seeded.
    """
    if await asyncio.to_thread(path.exists):
        return False
    head = head_revision(location)
    if head is None:
        return False
    template = template_dir / f"{Path(location).name}-{head}.template"
    if not await asyncio.to_thread(template.exists):
        await asyncio.to_thread(template_dir.mkdir, parents=True, exist_ok=True)
        # Keeps the first wakes of one process from building the same template at once (the build's
        # migration takes the alembic lock itself).
        async with _BUILD_LOCKS.setdefault(asyncio.get_running_loop(), asyncio.Lock()):
            if not await asyncio.to_thread(template.exists):
                await _build_template(template, location)
    await asyncio.to_thread(_copy_atomically, template, path)
    return True


async def schema_diff(engine: AsyncEngine, metadata: sa.MetaData) -> list[Any]:
    """Differences between the database schema and the role's models (empty when they agree)."""

    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    def _compare(sync_conn: Connection) -> list[Any]:
        ctx = MigrationContext.configure(sync_conn, opts={"render_as_batch": True})
        return list(compare_metadata(ctx, metadata))

    async with read_only(engine).connect() as conn:
        return await conn.run_sync(_compare)
