"""A user's database."""

from __future__ import annotations

import sqlalchemy as sa

from foundry.runtime.tables import add_runtime_tables

metadata = sa.MetaData()
add_runtime_tables(metadata)

profile = sa.Table(
    "profile",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("user_id", sa.String, nullable=False),
    sa.Column("github_account_id", sa.Integer, nullable=False),
    sa.Column("github_login", sa.String, nullable=False),
    sa.Column("name", sa.String, nullable=False),
    sa.Column("email", sa.String, nullable=True),
    sa.Column("avatar_url", sa.String, nullable=True),
    sa.Column("default_model", sa.String, nullable=True),
    sa.Column("active_organization_id", sa.String, nullable=True),
    # [{id, displayName, kind, role, avatarUrl}] as found by the last discovery: the app snapshot is
    # built from this row alone, without reading every organization actor.
    sa.Column("organizations_json", sa.Text, nullable=False, server_default="[]"),
    # Organization discovery runs in the background after sign-in: idle|syncing|synced|error.
    sa.Column("org_sync_status", sa.String, nullable=False, server_default="idle"),
    sa.Column("org_sync_error", sa.Text, nullable=True),
    sa.Column("org_synced_at", sa.Integer, nullable=True),
    sa.Column("starter_repo_status", sa.String, nullable=False, server_default="pending"),
    sa.Column("created_at", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.Integer, nullable=False),
    sa.CheckConstraint("id = 1", name="profile_singleton"),
)

oauth_accounts = sa.Table(
    "oauth_accounts",
    metadata,
    sa.Column("provider", sa.String, primary_key=True),
    sa.Column("account_id", sa.String, nullable=False),
    # Encrypted with a key derived from FOUNDRY_SECRET_KEY (foundry.auth.crypto).
    sa.Column("access_token_encrypted", sa.Text, nullable=False),
    sa.Column("scope", sa.String, nullable=False, server_default=""),
    sa.Column("updated_at", sa.Integer, nullable=False),
)

sessions = sa.Table(
    "sessions",
    metadata,
    # SHA-256 (hex) of the session id the cookie carries, never the id itself
    # (`foundry.auth.cache_events.session_digest`).
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("created_at", sa.Integer, nullable=False),
    sa.Column("expires_at", sa.Integer, nullable=False),
    sa.Column("revoked_at", sa.Integer, nullable=True),
    sa.Column("user_agent", sa.String, nullable=True),
    sa.Column("ip_address", sa.String, nullable=True),
)

task_state = sa.Table(
    "task_state",
    metadata,
    sa.Column("organization_id", sa.String, primary_key=True),
    sa.Column("task_id", sa.String, primary_key=True),
    sa.Column("active_session_id", sa.String, nullable=True),
    sa.Column("updated_at", sa.Integer, nullable=False),
)

session_state = sa.Table(
    "session_state",
    metadata,
    sa.Column("organization_id", sa.String, primary_key=True),
    sa.Column("task_id", sa.String, primary_key=True),
    sa.Column("session_id", sa.String, primary_key=True),
    sa.Column("unread", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("draft_text", sa.Text, nullable=False, server_default=""),
    sa.Column("draft_updated_at", sa.Integer, nullable=True),
    sa.Column("updated_at", sa.Integer, nullable=False),
)
