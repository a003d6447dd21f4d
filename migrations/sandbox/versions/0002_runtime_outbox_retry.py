"""runtime: outbox retry state and dead letters

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 12:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing rows were all waiting for delivery: they become "pending" with no attempts yet.
    with op.batch_alter_table("foundry_outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("status", sa.String(), server_default="pending", nullable=False))
        batch_op.add_column(sa.Column("attempts", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("last_error", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("next_attempt_at", sa.Integer(), nullable=True))
        batch_op.create_index("ix_foundry_outbox_status", ["status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("foundry_outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_foundry_outbox_status")
        batch_op.drop_column("next_attempt_at")
        batch_op.drop_column("last_error")
        batch_op.drop_column("attempts")
        batch_op.drop_column("status")
