"""The audit log's database: one ``events`` table."""

from __future__ import annotations

import sqlalchemy as sa

from foundry.runtime.tables import add_runtime_tables

metadata = sa.MetaData()
add_runtime_tables(metadata)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("repo_id", sa.String, nullable=True),
    sa.Column("task_id", sa.String, nullable=True),
    sa.Column("branch_name", sa.String, nullable=True),
    sa.Column("kind", sa.String, nullable=False),
    sa.Column("actor_user_id", sa.String, nullable=True),
    sa.Column("payload_json", sa.Text, nullable=False),
    sa.Column("created_at", sa.Integer, nullable=False),
    sa.Index("ix_events_task", "task_id", "id"),
    sa.Index("ix_events_repo", "repo_id", "id"),
    sa.Index("ix_events_kind", "kind", "id"),
    sqlite_autoincrement=True,
)
