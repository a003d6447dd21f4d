"""early_archive: a task archived before it initialized

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 13:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'early_archive',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('archived_at', sa.Integer(), nullable=False),
        sa.Column('reason', sa.String(), nullable=False),
        sa.Column('user_id', sa.String(), nullable=True),
        sa.CheckConstraint('id = 1', name='early_archive_singleton'),
        sa.PrimaryKeyConstraint('id'),
    )


def downgrade() -> None:
    op.drop_table('early_archive')
