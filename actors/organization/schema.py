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
    # GitHub mirror progress, pushed by the github-data actor:
    # sync_status pending|syncing|synced|error; sync_phase e.g. repositories|members|pull_requests.
    sa.Column("sync_status", sa.String, nullable=False, server_default="pending"),
    sa.Column("sync_phase", sa.String, nullable=True),
    sa.Column("sync_generation", sa.Integer, nullable=False, server_default="0"),
    sa.Column("sync_processed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("sync_total", sa.Integer, nullable=False, server_default="0"),
    sa.Column("sync_error", sa.Text, nullable=True),
    sa.Column("last_sync_at", sa.Integer, nullable=True),
    sa.Column("last_webhook_at", sa.Integer, nullable=True),
    sa.Column("last_webhook_event", sa.String, nullable=True),
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

repos = sa.Table(
    "repos",
    metadata,
    # The repository catalog as the organization serves it; github-data replaces it per sync generation.
    sa.Column("repo_id", sa.String, primary_key=True),  # GitHub's numeric repository id, as text
    sa.Column("full_name", sa.String, nullable=False),
    sa.Column("default_branch", sa.String, nullable=False),
    sa.Column("private", sa.Boolean, nullable=False),
    sa.Column("archived", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("clone_url", sa.String, nullable=False),
    sa.Column("html_url", sa.String, nullable=True),
    sa.Column("updated_at", sa.Integer, nullable=False),
    sa.Index("ix_repos_full_name", "full_name", unique=True),
)

task_summaries = sa.Table(
    "task_summaries",
    metadata,
    # One row per task, real or virtual (an open PR nobody has touched yet). The organization
    # is the coordinator: sidebar reads never fan out to task actors.
    sa.Column("task_id", sa.String, primary_key=True),
    sa.Column("repo_id", sa.String, nullable=False),
    sa.Column("repo_full_name", sa.String, nullable=False),
    sa.Column("title", sa.String, nullable=False),
    # virtual | provisioning | running | idle | error | archived
    sa.Column("status", sa.String, nullable=False),
    sa.Column("is_virtual", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("branch", sa.String, nullable=True),
    sa.Column("pr_number", sa.Integer, nullable=True),
    sa.Column("pr_state", sa.String, nullable=True),  # open | draft | closed | merged
    sa.Column("pr_url", sa.String, nullable=True),
    sa.Column("pr_title", sa.String, nullable=True),
    sa.Column("pr_author_login", sa.String, nullable=True),
    sa.Column("pr_head_sha", sa.String, nullable=True),
    sa.Column("pr_updated_at", sa.String, nullable=True),  # GitHub's own updated_at
    sa.Column("ci_state", sa.String, nullable=True),  # pending | success | failure | error
    sa.Column("owner_user_id", sa.String, nullable=True),
    sa.Column("owner_login", sa.String, nullable=True),
    sa.Column("sessions_json", sa.Text, nullable=False, server_default="[]"),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("created_at", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.Integer, nullable=False),
    sa.Column("archived_at", sa.Integer, nullable=True),
    sa.Index("ix_task_summaries_repo_branch", "repo_id", "branch"),
    sa.Index("ix_task_summaries_updated", "updated_at"),
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
    # sha256 of the OAuth state: a retried callback finds the sign-in it already completed.
    sa.Column("state_hash", sa.String, primary_key=True),
    sa.Column("user_id", sa.String, nullable=False),
    # Encrypted with the app secret (foundry.auth.signin): the plain id is a cookie's bearer secret.
    sa.Column("session_id", sa.String, nullable=False),
    sa.Column("session_expires_at", sa.Integer, nullable=False),
    sa.Column("expires_at", sa.Integer, nullable=False),
)
