"""The github-data role, keyed by organization id (``app``: deliveries of no known organization)."""

from __future__ import annotations

from actors.github_data import actions, handlers, sync
from actors.github_data.commands import (
    Empty,
    IngestWebhook,
    ListDeliveries,
    PullRef,
    RepoRef,
    Sync,
    SyncBatch,
)
from actors.github_data.schema import metadata
from foundry.runtime.role import Handler, Role

ROLE = Role(
    name="github-data",
    package="github_data",
    metadata=metadata,
    commands=(
        Handler("sync", Sync, sync.handle_sync),
        Handler("ingest_webhook", IngestWebhook, handlers.handle_ingest_webhook, batch=True),
        Handler("process_deliveries", Empty, handlers.handle_process_deliveries),
        Handler("reconcile_installations", Empty, handlers.handle_reconcile_installations),
    ),
    actions=(
        Handler("status", Empty, actions.status),
        Handler("sync_batch", SyncBatch, actions.sync_batch),
        Handler("member_list", Empty, actions.member_list),
        Handler("pr_items", PullRef, actions.list_pr_items),
        Handler("branches", RepoRef, actions.list_branches),
        Handler("deliveries", ListDeliveries, actions.list_deliveries),
    ),
    on_wake=handlers.on_wake,
)
