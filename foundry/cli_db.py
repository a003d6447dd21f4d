"""``foundry db``: the per-actor databases and their migrations."""

from __future__ import annotations

import asyncio
import re
import sys
import tempfile
from pathlib import Path

import click

from foundry.config import ROLE_NAMES, get_settings


@click.group()
def db() -> None:
    """Per-actor databases and their migrations."""


def _role_names(role: str | None) -> list[str]:
    from foundry.runtime.role import available_roles

    roles = available_roles()
    if role is None:
        return roles
    if role not in ROLE_NAMES:
        raise click.BadParameter(
            f"unknown role {role!r}; choose from {', '.join(ROLE_NAMES)}", param_hint="--role"
        )
    if role not in roles:
        raise click.BadParameter(f"role {role!r} is not implemented yet", param_hint="--role")
    return [role]


@db.command("upgrade")
@click.option("--role", default=None, help="Only this role (default: all).")
def db_upgrade(role: str | None) -> None:
    """Migrate every existing actor database to its role's head (instances also migrate at wake)."""
    from foundry.data_dir_lock import DataDirInUse, lock_data_dir, release_data_dir
    from foundry.db.engine import make_engine
    from foundry.db.migrate import ensure_schema
    from foundry.runtime.role import load_role

    settings = get_settings()
    if not settings.data_dir.is_dir():
        raise click.ClickException(f"no data directory at {settings.data_dir} (set FOUNDRY_DATA_DIR)")
    try:
        lock_data_dir(settings.data_dir)  # a running server migrates at wake: never both at once
    except DataDirInUse as exc:
        raise click.ClickException(str(exc)) from exc

    async def _run() -> None:
        for name in _role_names(role):
            spec = load_role(name)
            # Partition folders only: `.schema` templates and the `.inbox` files are not actor databases.
            files = sorted((settings.data_dir / name).glob("[0-9a-f][0-9a-f]/*.sqlite3"))
            migrated = 0
            for path in files:
                engine = make_engine(path)
                try:
                    migrated += await ensure_schema(engine, spec.migrations_location)
                except Exception as exc:
                    raise click.ClickException(f"{path}: {exc}") from exc
                finally:
                    await engine.dispose()
            click.echo(f"{name}: {len(files)} databases, {migrated} migrated")

    try:
        asyncio.run(_run())
    finally:
        release_data_dir()


@db.command("check")
def db_check() -> None:
    """Fail when a role's models and its migrations disagree."""
    from foundry.db.engine import make_engine
    from foundry.db.migrate import ensure_schema, schema_diff
    from foundry.runtime.role import load_role

    async def _run() -> int:
        problems = 0
        with tempfile.TemporaryDirectory() as tmp:
            for name in _role_names(None):
                spec = load_role(name)
                engine = make_engine(Path(tmp) / f"{name}.sqlite3")
                try:
                    await ensure_schema(engine, spec.migrations_location)
                    diff = await schema_diff(engine, spec.metadata)
                finally:
                    await engine.dispose()
                if diff:
                    problems += 1
                    click.echo(f"{name}: models differ from migrations:")
                    for item in diff:
                        click.echo(f"  {item}")
                else:
                    click.echo(f"{name}: ok")
        return problems

    if asyncio.run(_run()):
        sys.exit(1)


@db.command("revision")
@click.option("--role", required=True, help="The role whose schema changed.")
@click.option("-m", "--message", required=True, help="What the revision does.")
@click.option("--autogenerate", is_flag=True, help="Diff the models against the migrations.")
def db_revision(role: str, message: str, autogenerate: bool) -> None:
    """Write a new migration for a role, numbered after the last one."""
    from alembic import command

    from foundry.db.migrate import alembic_config
    from foundry.runtime.role import load_role

    _role_names(role)
    spec = load_role(role)
    versions = Path(spec.migrations_location) / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for p in versions.glob("*.py") if (m := re.match(r"(\d{4})_", p.name))]
    rev_id = f"{(max(numbers) if numbers else 0) + 1:04d}"
    cfg = alembic_config(spec.migrations_location)
    with tempfile.TemporaryDirectory() as tmp:
        cfg.set_main_option("sqlalchemy.url", f"sqlite:///{tmp}/scratch.sqlite3")
        try:
            if autogenerate:
                command.upgrade(cfg, "head")
            command.revision(cfg, message=message, autogenerate=autogenerate, rev_id=rev_id)
        finally:
            cfg.set_main_option("sqlalchemy.url", "")
    click.echo(f"{role}: wrote revision {rev_id}")
