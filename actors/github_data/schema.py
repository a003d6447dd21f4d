"""The database of one organization's GitHub cache.

GitHub's own ``updated_at`` is kept on repositories and pull requests, so a resync compares content
and versions instead of treating everything as new. ``changed_generation`` says in which full
sync a row last changed: the organization pulls "everything changed since the generation I applied".
"""

from __future__ import annotations

import sqlalchemy as sa

from foundry.runtime.tables import add_runtime_tables

metadata = sa.MetaData()
add_runtime_tables(metadata)

meta = sa.Table(
    "meta",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    # The installation this cache mirrors (from the organization; never a user token).
    sa.Column("kind", sa.String, nullable=True),  # personal | organization
    sa.Column("github_login", sa.String, nullable=True),
    sa.Column("installation_id", sa.Integer, nullable=True),
    # connected | suspended | install_required
    sa.Column("installation_status", sa.String, nullable=False, server_default="install_required"),
    # The last completed full sync; rows changed by it carry this number.
    sa.Column("generation", sa.Integer, nullable=False, server_default="0"),
    # idle | syncing | synced | error
    sa.Column("sync_status", sa.String, nullable=False, server_default="idle"),
    sa.Column("sync_phase", sa.String, nullable=True),
    sa.Column("sync_processed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("sync_total", sa.Integer, nullable=False, server_default="0"),
    sa.Column("sync_error", sa.Text, nullable=True),
    sa.Column("sync_reason", sa.String, nullable=True),
    # A sync asked for while one runs: it runs again right after (requests coalesce).
    sa.Column("resync_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("sync_started_at", sa.Integer, nullable=True),
    sa.Column("last_sync_at", sa.Integer, nullable=True),
    sa.Column("last_sync_stats", sa.Text, nullable=True),  # JSON of the last apply's counters
    # False until a member list was read from GitHub: an empty table then means "unknown", not "none".
    sa.Column("members_synced", sa.Boolean, nullable=False, server_default=sa.false()),
    # A ``process_deliveries`` command is queued (in the outbox or the mailbox) for queued deliveries.
    sa.Column("process_pending", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("process_kicked_at", sa.Integer, nullable=True),
    sa.Column("updated_at", sa.Integer, nullable=False),
    sa.CheckConstraint("id = 1", name="meta_singleton"),
)

repositories = sa.Table(
    "repositories",
    metadata,
    sa.Column("repo_id", sa.String, primary_key=True),  # GitHub's numeric id, as text
    sa.Column("full_name", sa.String, nullable=False),
    sa.Column("name", sa.String, nullable=False),
    sa.Column("owner_login", sa.String, nullable=False),
    sa.Column("private", sa.Boolean, nullable=False),
    sa.Column("default_branch", sa.String, nullable=False),
    sa.Column("archived", sa.Boolean, nullable=False),
    sa.Column("clone_url", sa.String, nullable=False),
    sa.Column("html_url", sa.String, nullable=True),
    sa.Column("gh_updated_at", sa.String, nullable=True),  # GitHub's, ISO 8601 UTC
    sa.Column("changed_generation", sa.Integer, nullable=False),
    sa.Column("written_at", sa.Integer, nullable=False),
)

members = sa.Table(
    "members",
    metadata,
    sa.Column("github_id", sa.Integer, primary_key=True),
    sa.Column("login", sa.String, nullable=False),
    sa.Column("avatar_url", sa.String, nullable=True),
    sa.Column("role", sa.String, nullable=False),  # admin | member
    sa.Column("changed_generation", sa.Integer, nullable=False),
)

pull_requests = sa.Table(
    "pull_requests",
    metadata,
    sa.Column("repo_id", sa.String, primary_key=True),
    sa.Column("number", sa.Integer, primary_key=True),
    sa.Column("github_id", sa.Integer, nullable=True),
    sa.Column("repo_full_name", sa.String, nullable=False),
    sa.Column("title", sa.String, nullable=False),
    sa.Column("state", sa.String, nullable=False),  # open | draft | closed | merged
    sa.Column("head_ref", sa.String, nullable=False),
    sa.Column("head_sha", sa.String, nullable=True),
    sa.Column("base_ref", sa.String, nullable=True),
    sa.Column("author_login", sa.String, nullable=True),
    sa.Column("html_url", sa.String, nullable=True),
    sa.Column("gh_updated_at", sa.String, nullable=False),  # GitHub's, ISO 8601 UTC: the row's version
    sa.Column("changed_generation", sa.Integer, nullable=False),
    sa.Column("written_at", sa.Integer, nullable=False),
    sa.Index("ix_pull_requests_head", "repo_id", "head_ref"),
    sa.Index("ix_pull_requests_sha", "repo_id", "head_sha"),
    sa.Index("ix_pull_requests_changed", "changed_generation"),
)

ci_checks = sa.Table(
    "ci_checks",
    metadata,
    # One row per CI signal on a commit: a commit status context, a check run or a check suite.
    sa.Column("repo_id", sa.String, primary_key=True),
    sa.Column("sha", sa.String, primary_key=True),
    sa.Column("source", sa.String, primary_key=True),
    sa.Column("state", sa.String, nullable=False),  # pending | success | failure | error
    sa.Column("updated_at", sa.Integer, nullable=False),
)

branches = sa.Table(
    "branches",
    metadata,
    sa.Column("repo_id", sa.String, primary_key=True),
    sa.Column("name", sa.String, primary_key=True),
    sa.Column("head_sha", sa.String, nullable=True),  # unknown after a `create` until the first push
    sa.Column("updated_at", sa.Integer, nullable=False),
)

pr_items = sa.Table(
    "pr_items",
    metadata,
    # Reviews, review comments and conversation comments of a pull request, for the agent and the UI.
    sa.Column("kind", sa.String, primary_key=True),  # review | review_comment | comment
    sa.Column("item_id", sa.Integer, primary_key=True),  # GitHub's id: redeliveries and edits dedupe
    sa.Column("repo_id", sa.String, nullable=False),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("author_login", sa.String, nullable=True),
    sa.Column("body", sa.Text, nullable=True),
    sa.Column(
        "state", sa.String, nullable=True
    ),  # reviews: approved | changes_requested | commented | dismissed
    sa.Column("path", sa.String, nullable=True),  # review comments: the file
    sa.Column("line", sa.Integer, nullable=True),
    sa.Column("html_url", sa.String, nullable=True),
    sa.Column("gh_created_at", sa.String, nullable=True),
    sa.Column("gh_updated_at", sa.String, nullable=True),
    sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("ix_pr_items_pr", "repo_id", "number"),
)

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    # Every delivery routed here, keyed by X-GitHub-Delivery, in arrival order. The ingest command
    # records it ``queued`` (the mailbox's command-id dedupe stops a redelivery before that, this
    # table beyond the mailbox's retention); ``process_deliveries`` applies queued rows in batches.
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("delivery_id", sa.String, nullable=False, unique=True),
    sa.Column("event", sa.String, nullable=False),
    sa.Column("action", sa.String, nullable=True),
    sa.Column("installation_id", sa.Integer, nullable=True),
    # queued | applied | ignored | failed | forwarded
    sa.Column("status", sa.String, nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    # The trimmed payload until the delivery is processed (then cleared).
    sa.Column("payload_json", sa.Text, nullable=True),
    # How often a delivery was applied: 1 once processed, always (tests and the benchmark check it).
    sa.Column("applied_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("received_at", sa.Integer, nullable=False),
    sa.Column("processed_at", sa.Integer, nullable=True),
    sa.Index("ix_webhook_deliveries_status", "status", "seq"),
    sqlite_autoincrement=True,
)

#: The columns of a pull request row that come from GitHub (a sync and a webhook both write them).
PR_FIELDS = (
    "github_id",
    "repo_full_name",
    "title",
    "state",
    "head_ref",
    "head_sha",
    "base_ref",
    "author_login",
    "html_url",
    "gh_updated_at",
)
