"""the pull request's head commit, author, GitHub update time and CI state on the task

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("task") as batch:
        batch.add_column(sa.Column("pr_head_sha", sa.String(), nullable=True))
        batch.add_column(sa.Column("pr_author_login", sa.String(), nullable=True))
        batch.add_column(sa.Column("pr_updated_at", sa.String(), nullable=True))
        batch.add_column(sa.Column("ci_state", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("task") as batch:
        batch.drop_column("ci_state")
        batch.drop_column("pr_updated_at")
        batch.drop_column("pr_author_login")
        batch.drop_column("pr_head_sha")
