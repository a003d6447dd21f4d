"""store session ids as their SHA-256 digest

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 12:55:00

The sessions table used to hold the cookie's bearer value itself. Existing rows are hashed in place
(not invalidated): the digest is deterministic, so everyone stays signed in, and nothing about a
session changes except what a copy of the file reveals. ``secure_delete`` makes SQLite overwrite the
cells that held the plain ids instead of leaving them in free pages.
"""
from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    previous = bind.exec_driver_sql("PRAGMA secure_delete").scalar()
    bind.exec_driver_sql("PRAGMA secure_delete = ON")
    try:
        plain = [row[0] for row in bind.execute(sa.text("SELECT id FROM sessions"))]
        for session_id in plain:
            digest = hashlib.sha256(session_id.encode()).hexdigest()
            bind.execute(
                sa.text("UPDATE sessions SET id = :digest WHERE id = :plain"),
                {"digest": digest, "plain": session_id},
            )
    finally:
        bind.exec_driver_sql(f"PRAGMA secure_delete = {int(previous or 0)}")


def downgrade() -> None:
    # A digest cannot be turned back into the id the cookie carries: those sessions end.
    op.execute("DELETE FROM sessions")
