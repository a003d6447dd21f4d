"""A task's database: the task, its sessions, their queued messages and their event logs."""

from __future__ import annotations

import sqlalchemy as sa

from foundry.runtime.tables import add_runtime_tables

metadata = sa.MetaData()
add_runtime_tables(metadata)

task = sa.Table(
    "task",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("organization_id", sa.String, nullable=False),
    sa.Column("task_id", sa.String, nullable=False),
    sa.Column("repo_id", sa.String, nullable=False),
    sa.Column("repo_full_name", sa.String, nullable=False),
    sa.Column("clone_url", sa.String, nullable=False),
    sa.Column("default_branch", sa.String, nullable=False),
    sa.Column("installation_id", sa.Integer, nullable=True),
    sa.Column("title", sa.String, nullable=False),
    # The prompt the task was created with; NULL for a task materialized from a pull request.
    sa.Column("prompt", sa.Text, nullable=True),
    # One task = one branch, immutable.
    sa.Column("branch", sa.String, nullable=False),
    sa.Column("default_agent", sa.String, nullable=False),
    sa.Column("default_model", sa.String, nullable=False),
    # Sandbox + clone: none (not needed yet) | pending | provisioning | ready | error.
    sa.Column("provision_state", sa.String, nullable=False),
    sa.Column("provision_error", sa.Text, nullable=True),
    # The sandbox died (with its log tail); cleared when it runs again.
    sa.Column("sandbox_error", sa.Text, nullable=True),
    # The generation of the sandbox server last seen running (crash reports of older ones are stale).
    sa.Column("sandbox_generation", sa.Integer, nullable=False, server_default="0"),
    # While the sandbox waits for a slot (per-node caps): its 1-based place in the queue and why.
    sa.Column("sandbox_queue_position", sa.Integer, nullable=True),
    sa.Column("sandbox_queue_reason", sa.Text, nullable=True),
    # The last failed git/PR operation, with an actionable message; cleared on success.
    sa.Column("last_error", sa.Text, nullable=True),
    # Derived: queued | provisioning | running | idle | error | archived. Stored for summaries.
    sa.Column("status", sa.String, nullable=False),
    sa.Column("owner_user_id", sa.String, nullable=True),
    sa.Column("owner_login", sa.String, nullable=True),
    sa.Column("created_by", sa.String, nullable=True),
    sa.Column("pr_number", sa.Integer, nullable=True),
    sa.Column("pr_url", sa.String, nullable=True),
    sa.Column("pr_state", sa.String, nullable=True),
    sa.Column("pr_title", sa.String, nullable=True),
    # Mirrored from GitHub by the organization, so the task's own topic shows a new head commit
    # (a push, a force push) and its CI as they happen, like the organization's list does.
    sa.Column("pr_head_sha", sa.String, nullable=True),
    sa.Column("pr_author_login", sa.String, nullable=True),
    sa.Column("pr_updated_at", sa.String, nullable=True),
    sa.Column("ci_state", sa.String, nullable=True),
    sa.Column("pushed_sha", sa.String, nullable=True),
    sa.Column("pushed_at", sa.Integer, nullable=True),
    # The last summary pushed to the organization, to push only real changes.
    sa.Column("pushed_summary", sa.Text, nullable=True),
    sa.Column("created_at", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.Integer, nullable=False),
    sa.Column("archived_at", sa.Integer, nullable=True),
    sa.CheckConstraint("id = 1", name="task_singleton"),
)

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("session_id", sa.String, primary_key=True),  # session-<uuid hex>
    sa.Column("name", sa.String, nullable=False),  # "Session <n>"
    sa.Column("agent", sa.String, nullable=False),
    sa.Column("model", sa.String, nullable=False),
    # pending (no agent session yet) | idle | running | error | closed
    sa.Column("status", sa.String, nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    # The ACP server (one agent process) inside sandbox-agent, and the agent's session id in it.
    # Both are cleared when the agent or the sandbox dies; the next turn starts a fresh pair.
    sa.Column("acp_server_id", sa.String, nullable=True),
    sa.Column("acp_session_id", sa.String, nullable=True),
    sa.Column("acp_generation", sa.Integer, nullable=False, server_default="0"),
    # The sandbox generation (server start) the ACP ids belong to: a different current generation
    # means the sandbox-agent was restarted and never heard of them, so the session is resumed.
    sa.Column("acp_sandbox_generation", sa.Integer, nullable=True),
    # The last SSE event id of the ACP server already recorded (resume with Last-Event-ID).
    sa.Column("last_event_id", sa.Integer, nullable=True),
    sa.Column("thinking_since", sa.Integer, nullable=True),
    sa.Column("agent_title", sa.String, nullable=True),  # from the agent's session_info_update
    sa.Column("created_by", sa.String, nullable=True),
    sa.Column("created_at", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.Integer, nullable=False),
    sa.Column("closed_at", sa.Integer, nullable=True),
)

messages = sa.Table(
    "messages",
    metadata,
    # Prompts in the order they were sent; a turn takes the oldest queued one (the first prompt of
    # a task waits here until its session is ready).
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("session_id", sa.String, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("user_id", sa.String, nullable=True),
    # queued | running | done | failed | cancelled
    sa.Column("status", sa.String, nullable=False),
    sa.Column("stop_reason", sa.String, nullable=True),
    # Stop was pressed during this message's turn (a turn that then dies is reported as cancelled).
    sa.Column("stop_requested_at", sa.Integer, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("created_at", sa.Integer, nullable=False),
    sa.Column("started_at", sa.Integer, nullable=True),
    sa.Column("finished_at", sa.Integer, nullable=True),
    sa.Index("ix_messages_session_status", "session_id", "status", "id"),
    sqlite_autoincrement=True,
)

session_events = sa.Table(
    "session_events",
    metadata,
    # The append-only transcript of a session. ``seq`` is the seq of the event published on
    # ``session:<org>:<task>:<session>``, so `since` pages the HTTP log and the websocket replay alike.
    sa.Column("session_id", sa.String, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("event", sa.String, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("created_at", sa.Integer, nullable=False),
)

permission_requests = sa.Table(
    "permission_requests",
    metadata,
    sa.Column("session_id", sa.String, primary_key=True),
    # The agent's JSON-RPC request id as text (the URL form) and as JSON (to answer with its type).
    sa.Column("request_id", sa.String, primary_key=True),
    sa.Column("rpc_id_json", sa.String, nullable=False),
    sa.Column("acp_server_id", sa.String, nullable=False),
    sa.Column("options_json", sa.Text, nullable=False),
    # pending | answered | cancelled
    sa.Column("status", sa.String, nullable=False),
    sa.Column("option_id", sa.String, nullable=True),
    sa.Column("answered_by", sa.String, nullable=True),
    sa.Column("created_at", sa.Integer, nullable=False),
    sa.Column("answered_at", sa.Integer, nullable=True),
)

early_archive = sa.Table(
    "early_archive",
    metadata,
    # The task was archived before its ``initialize`` arrived (the organization lists a task at once,
    # its actor is created a moment later). ``initialize`` then records the task as archived and
    # starts nothing: no session, no sandbox.
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("archived_at", sa.Integer, nullable=False),
    sa.Column("reason", sa.String, nullable=False),
    sa.Column("user_id", sa.String, nullable=True),
    sa.CheckConstraint("id = 1", name="early_archive_singleton"),
)
