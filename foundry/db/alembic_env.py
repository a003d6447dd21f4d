"""The body of every role's ``migrations/<role>/env.py``.

Online, Foundry passes the connection in ``config.attributes["connection"]`` (`foundry.db.migrate`).
The CLI (``foundry db revision --autogenerate``) passes a URL of a scratch database instead.
"""

from __future__ import annotations

import importlib

import sqlalchemy as sa
from alembic import context


def run(schema_module: str) -> None:
    """Run migrations for the role whose ``metadata`` lives in ``schema_module``."""
    metadata: sa.MetaData = importlib.import_module(schema_module).metadata
    config = context.config
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection, metadata)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("run migrations through `foundry db upgrade`, not the alembic CLI")
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        _run(conn, metadata)
        conn.commit()
    engine.dispose()


def _run(connection: sa.Connection, metadata: sa.MetaData) -> None:
    # render_as_batch: SQLite cannot ALTER most things in place; batch mode rebuilds the table.
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
