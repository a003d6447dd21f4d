"""An organization's database (the ``app`` shell uses the index tables of the same schema)."""

from __future__ import annotations

import sqlalchemy as sa

from foundry.runtime.tables import add_runtime_tables

metadata = sa.MetaData()
add_runtime_tables(metadata)

profile = sa.Table(
    "profile",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("organization_id", sa.String, nullable=False),
    sa.Column("kind", sa.String, nullable=False),  # personal | organization
    sa.Column("github_login", sa.String, nullable=False),
    sa.Column("github_account_id", sa.Integer, nullable=False),
    sa.Column("display_name", sa.String, nullable=False),
    sa.Column("avatar_url", sa.String, nullable=True),
    sa.Column("installation_id", sa.Integer, nullable=True),
    # connected | suspended | install_required
    sa.Column("installation_status", sa.String, nullable=False),
    sa.Column("default_model", sa.String, nullable=False),
    sa.Column("created_at", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.Integer, nullable=False),
    sa.CheckConstraint("id = 1", name="profile_singleton"),
)

members = sa.Table(
    "members",
    metadata,
    sa.Column("user_id", sa.String, primary_key=True),  # gh-<github account id>
    sa.Column("github_account_id", sa.Integer, nullable=False),
    sa.Column("login", sa.String, nullable=False),
    sa.Column("avatar_url", sa.String, nullable=True),
    sa.Column("role", sa.String, nullable=False),  # admin | member, from GitHub membership
    sa.Column("updated_at", sa.Integer, nullable=False),
)

# ---- app shell only ----------------------------------------------------------------------------

installations = sa.Table(
    "installations",
    metadata,
    sa.Column("installation_id", sa.Integer, primary_key=True),
    sa.Column("organization_id", sa.String, nullable=False),
    sa.Column("account_login", sa.String, nullable=False),
    sa.Column("updated_at", sa.Integer, nullable=False),
)

oauth_callbacks = sa.Table(
    "oauth_callbacks",
    metadata,
    # sha256 of the OAuth state: a retried callback finds the sign-in it already completed (bug 1).
    sa.Column("state_hash", sa.String, primary_key=True),
    sa.Column("user_id", sa.String, nullable=False),
    sa.Column("session_id", sa.String, nullable=False),
    sa.Column("session_expires_at", sa.Integer, nullable=False),
    sa.Column("expires_at", sa.Integer, nullable=False),
)
