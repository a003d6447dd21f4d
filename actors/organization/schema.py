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

# ---- billing (actors/organization/billing*.py) ------------------------------------------------

billing = sa.Table(
    "billing",
    metadata,
    # The organization's plan and its Stripe subscription as last applied (one row, created lazily).
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("plan", sa.String, nullable=False, server_default="free"),  # free | team
    # active | trialing | past_due | scheduled_cancel | canceled
    sa.Column("status", sa.String, nullable=False, server_default="active"),
    sa.Column("customer_id", sa.String, nullable=True),
    sa.Column("subscription_id", sa.String, nullable=True),
    sa.Column("subscription_item_id", sa.String, nullable=True),
    sa.Column("price_id", sa.String, nullable=True),
    sa.Column("paid_seats", sa.Integer, nullable=True),
    sa.Column("current_period_end", sa.Integer, nullable=True),  # ms
    sa.Column("trial_end", sa.Integer, nullable=True),  # ms
    sa.Column("cancel_at", sa.Integer, nullable=True),  # ms
    sa.Column("past_due_since", sa.Integer, nullable=True),  # ms
    sa.Column("payment_method", sa.String, nullable=True),  # e.g. "Visa •••• 4242"
    # Where that label comes from, as Stripe bills: the subscription's default payment method, else
    # the customer's invoice default. ``customer_state_created`` is the Stripe time (s) of the
    # customer state applied last (None: the customer's default was never seen).
    sa.Column("sub_payment_method_id", sa.String, nullable=True),
    sa.Column("customer_payment_method_id", sa.String, nullable=True),
    sa.Column("customer_state_created", sa.Integer, nullable=True),
    # Ordering guard for subscription events: Stripe's creation time (s) of the state applied last,
    # the subscription's own creation time, and whether that subscription was deleted.
    sa.Column("sub_state_created", sa.Integer, nullable=True),
    sa.Column("sub_created", sa.Integer, nullable=True),
    sa.Column("sub_deleted", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("checkout_session_id", sa.String, nullable=True),
    sa.Column("updated_at", sa.Integer, nullable=False),
    sa.CheckConstraint("id = 1", name="billing_singleton"),
)

billing_seats = sa.Table(
    "billing_seats",
    metadata,
    # A member holds a seat from their first prompt in the organization until an admin releases it.
    sa.Column("user_id", sa.String, primary_key=True),
    sa.Column("login", sa.String, nullable=False),
    sa.Column("taken_at", sa.Integer, nullable=False),
)

billing_seat_changes = sa.Table(
    "billing_seat_changes",
    metadata,
    # One row per seat taken or released: the durable record that Stripe's quantity must follow.
    # Its id makes the Stripe call's idempotency key, so a retry never counts twice.
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String, nullable=False),  # taken | released
    sa.Column("user_id", sa.String, nullable=False),
    sa.Column("seats_after", sa.Integer, nullable=False),
    # pending (to sync) | synced | skipped (no subscription to sync) | failed (Stripe refused it)
    sa.Column("status", sa.String, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("next_attempt_at", sa.Integer, nullable=True),
    sa.Column("created_at", sa.Integer, nullable=False),
    sa.Column("synced_at", sa.Integer, nullable=True),
    sa.Index("ix_billing_seat_changes_status", "status"),
    sqlite_autoincrement=True,
)

billing_invoices = sa.Table(
    "billing_invoices",
    metadata,
    sa.Column("invoice_id", sa.String, primary_key=True),
    sa.Column("number", sa.String, nullable=True),
    sa.Column("status", sa.String, nullable=False),  # open | paid | payment_failed | void | uncollectible
    sa.Column("amount_due", sa.Integer, nullable=False),
    sa.Column("amount_paid", sa.Integer, nullable=False),
    sa.Column("currency", sa.String, nullable=False),
    sa.Column("hosted_invoice_url", sa.String, nullable=True),
    sa.Column("created", sa.Integer, nullable=False),  # Stripe's, seconds
    sa.Column("period_end", sa.Integer, nullable=True),  # seconds
    sa.Column("event_created", sa.Integer, nullable=False),  # ordering guard, seconds
    sa.Column("event_rank", sa.Integer, nullable=False),
    sa.Index("ix_billing_invoices_created", "created"),
)

billing_events = sa.Table(
    "billing_events",
    metadata,
    # Every Stripe event this organization received, once (its id), and what it did.
    sa.Column("event_id", sa.String, primary_key=True),
    sa.Column("type", sa.String, nullable=False),
    sa.Column("created", sa.Integer, nullable=False),
    sa.Column("outcome", sa.String, nullable=False),  # applied | stale | ignored
    sa.Column("applied_count", sa.Integer, nullable=False, server_default="1"),
    sa.Column("received_at", sa.Integer, nullable=False),
)

billing_payment_methods = sa.Table(
    "billing_payment_methods",
    metadata,
    # What Foundry knows of each Stripe payment method it was told about: its label (None: not read
    # yet, Stripe only gave its id) and whether it left the customer (detached is final).
    sa.Column("payment_method_id", sa.String, primary_key=True),
    sa.Column("label", sa.String, nullable=True),
    sa.Column("detached", sa.Boolean, nullable=False, server_default=sa.false()),
    # Stripe refused to show it (not a retryable failure): shown as no label, never read again.
    sa.Column("unreadable", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("state_created", sa.Integer, nullable=False),  # ordering guard, Stripe seconds
    sa.Column("updated_at", sa.Integer, nullable=False),  # ms
)

stripe_customers = sa.Table(
    "stripe_customers",
    metadata,
    # App shell only: which organization a Stripe customer belongs to (webhook routing).
    sa.Column("customer_id", sa.String, primary_key=True),
    sa.Column("organization_id", sa.String, nullable=False),
)

stripe_unrouted_events = sa.Table(
    "stripe_unrouted_events",
    metadata,
    # App shell only: events for customers no organization owns, recorded and otherwise ignored.
    sa.Column("event_id", sa.String, primary_key=True),
    sa.Column("type", sa.String, nullable=False),
    sa.Column("customer_id", sa.String, nullable=True),
    sa.Column("received_at", sa.Integer, nullable=False),
)

# ---- agent credentials (actors/organization/agent_credentials.py) ------------------------------

agent_credentials = sa.Table(
    "agent_credentials",
    metadata,
    # Provider API keys this organization's agents get in their sandbox's environment. The value is
    # stored only as a Fernet token under a key derived from the app secret; the plaintext and the
    # ciphertext never leave the organization's host except to start one of its sandboxes.
    sa.Column("name", sa.String, primary_key=True),  # an allowed variable name, e.g. ANTHROPIC_API_KEY
    sa.Column("ciphertext", sa.Text, nullable=False),
    # The value's last 4 characters, so an admin can tell keys apart (None for short values).
    sa.Column("last4", sa.String, nullable=True),
    sa.Column("set_at", sa.Integer, nullable=False),  # ms
    sa.Column("set_by_user_id", sa.String, nullable=False),
    sa.Column("set_by_login", sa.String, nullable=True),
)
