"""billing: the payment method's sources (subscription, customer default) and known payment methods

Revision ID: 0006_paymethod
Revises: 0005_agentkeys
Create Date: 2026-12-02 00:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0006_paymethod"
down_revision = "0005_agentkeys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("billing") as batch:
        batch.add_column(sa.Column("sub_payment_method_id", sa.String(), nullable=True))
        batch.add_column(sa.Column("customer_payment_method_id", sa.String(), nullable=True))
        batch.add_column(sa.Column("customer_state_created", sa.Integer(), nullable=True))
    op.create_table(
        "billing_payment_methods",
        sa.Column("payment_method_id", sa.String(), nullable=False),
        sa.Column("label", sa.String(), nullable=True),
        sa.Column("detached", sa.Boolean(), server_default=sa.text("0"), nullable=False),
        sa.Column("unreadable", sa.Boolean(), server_default=sa.text("0"), nullable=False),
        sa.Column("state_created", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("payment_method_id"),
    )


def downgrade() -> None:
    op.drop_table("billing_payment_methods")
    with op.batch_alter_table("billing") as batch:
        batch.drop_column("customer_state_created")
        batch.drop_column("customer_payment_method_id")
        batch.drop_column("sub_payment_method_id")
