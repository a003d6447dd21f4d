"""A sandbox actor's database: one row describing its sandbox."""

from __future__ import annotations

import sqlalchemy as sa

from foundry.runtime.tables import add_runtime_tables

metadata = sa.MetaData()
add_runtime_tables(metadata)

sandbox = sa.Table(
    "sandbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    # The provider's id of the sandbox: the task id.
    sa.Column("sandbox_id", sa.String, nullable=False),
    sa.Column("provider", sa.String, nullable=False),
    # pending | running | error | destroyed
    sa.Column("state", sa.String, nullable=False),
    # The server's pid (local provider): lets a restarted host reap a server it no longer knows.
    sa.Column("pid", sa.Integer, nullable=True),
    sa.Column("base_url", sa.String, nullable=True),
    sa.Column("workdir", sa.String, nullable=True),
    # Why the sandbox is in `error` (a crash with the tail of its log, or a failed start).
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("starts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("crashes", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.Integer, nullable=False),
    sa.Column("destroyed_at", sa.Integer, nullable=True),
    sa.CheckConstraint("id = 1", name="sandbox_singleton"),
)
