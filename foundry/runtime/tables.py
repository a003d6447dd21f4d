"""Tables every role's database carries for the runtime: mailbox, outbox and topic sequences.

Each role's ``schema.py`` calls `add_runtime_tables` on its own MetaData so that the role's alembic
environment creates and checks them like any other table.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection


def add_runtime_tables(metadata: sa.MetaData) -> None:
    """Declare the runtime's tables on a role's metadata."""
    sa.Table(
        "foundry_mailbox",
        metadata,
        # The autoincrement seq is the processing order: insertion and enqueue happen atomically.
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("command_id", sa.String, nullable=False, unique=True),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("status", sa.String, nullable=False, server_default="pending"),
        sa.Column("result", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", sa.Integer, nullable=False),
        sa.Column("finished_at", sa.Integer, nullable=True),
        sa.Index("ix_foundry_mailbox_status", "status"),
        sqlite_autoincrement=True,
    )
    sa.Table(
        "foundry_outbox",
        metadata,
        # Sends to other actors recorded in the same transaction as the effect that caused them,
        # delivered after commit and again at wake until acknowledged (transactional outbox).
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("role", sa.String, nullable=False),
        sa.Column("key", sa.String, nullable=False),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("command_id", sa.String, nullable=False, unique=True),
        sa.Column("created_at", sa.Integer, nullable=False),
        # "pending" rows are delivered; "dead" rows gave up after too many failed attempts and wait
        # for an operator's retry (`foundry actors retry-dead`).
        sa.Column("status", sa.String, nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text, nullable=True),
        #: Wall-clock ms before which the next attempt is not made (backoff survives restarts).
        sa.Column("next_attempt_at", sa.Integer, nullable=True),
        sa.Index("ix_foundry_outbox_status", "status"),
    )
    sa.Table(
        "foundry_topic_seq",
        metadata,
        sa.Column("topic", sa.String, primary_key=True),
        sa.Column("seq", sa.Integer, nullable=False),
    )


async def dead_letters(conn: AsyncConnection, limit: int = 100) -> dict[str, Any]:
    """This instance's dead letters: ``{"count": N, "items": [...]}`` with the oldest ``limit`` rows.

    A dead letter is an outgoing send that failed too many times; it stays in the outbox until an
    operator retries it.
    """
    count = (
        await conn.execute(sa.text("SELECT count(*) FROM foundry_outbox WHERE status = 'dead'"))
    ).scalar() or 0
    rows = (
        await conn.execute(
            sa.text(
                "SELECT id, role, key, name, command_id, attempts, last_error, created_at "
                "FROM foundry_outbox WHERE status = 'dead' ORDER BY id LIMIT :limit"
            ),
            {"limit": limit},
        )
    ).all()
    items = [
        {
            "id": r.id,
            "role": r.role,
            "key": r.key,
            "name": r.name,
            "commandId": r.command_id,
            "attempts": r.attempts,
            "lastError": r.last_error,
            "createdAt": r.created_at,
        }
        for r in rows
    ]
    return {"count": int(count), "items": items}


async def current_seq(conn: AsyncConnection, topic: str) -> int:
    """The last seq published on ``topic`` by this instance (0 before the first event).

    Snapshot actions read it in the same read as their data, so a subscriber can drop every live
    event the snapshot already contains.
    """
    result = await conn.execute(sa.text("SELECT seq FROM foundry_topic_seq WHERE topic = :t"), {"t": topic})
    return int(result.scalar() or 0)
