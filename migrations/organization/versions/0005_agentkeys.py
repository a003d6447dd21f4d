"""agent credentials: per-organization provider keys, encrypted

Revision ID: 0005_agentkeys
Revises: 0004_billing
Create Date: 2026-12-01 22:45:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0005_agentkeys"
down_revision = "0004_billing"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_credentials",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("ciphertext", sa.Text(), nullable=False),
        sa.Column("last4", sa.String(), nullable=True),
        sa.Column("set_at", sa.Integer(), nullable=False),
        sa.Column("set_by_user_id", sa.String(), nullable=False),
        sa.Column("set_by_login", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("agent_credentials")
