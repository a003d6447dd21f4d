"""sandbox queue position on the task; sandbox generation of a session's ACP ids

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("task") as batch:
        batch.add_column(sa.Column("sandbox_queue_position", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("sandbox_queue_reason", sa.Text(), nullable=True))
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("acp_sandbox_generation", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("acp_sandbox_generation")
    with op.batch_alter_table("task") as batch:
        batch.drop_column("sandbox_queue_reason")
        batch.drop_column("sandbox_queue_position")
