"""The organization role, keyed by organization id (``app`` = the app shell)."""

from __future__ import annotations

from actors.organization import actions, github, handlers, tasks
from actors.organization.commands import (
    Empty,
    InstallationRef,
    MemberRef,
    OAuthCallbackResult,
    RegisterInstallation,
    Snapshot,
    SyncFromGitHub,
    UpdateSettings,
)
from actors.organization.schema import metadata
from foundry.runtime.role import Handler, Role

ROLE = Role(
    name="organization",
    package="organization",
    metadata=metadata,
    commands=(
        Handler("sync_from_github", SyncFromGitHub, handlers.handle_sync_from_github),
        Handler("update_settings", UpdateSettings, handlers.handle_update_settings),
        Handler("register_installation", RegisterInstallation, handlers.handle_register_installation),
        # GitHub mirror (actors/organization/github.py)
        Handler("apply_github_sync", github.ApplyGitHubSync, github.handle_apply_github_sync),
        Handler("github_sync_progress", github.GitHubSyncProgress, github.handle_github_sync_progress),
        Handler("github_event", github.GitHubEvent, github.handle_github_event),
        Handler("request_github_sync", github.RequestGitHubSync, github.handle_request_github_sync),
        # Tasks (actors/organization/tasks.py)
        Handler("create_task", tasks.CreateTask, tasks.handle_create_task),
        Handler("task_summary_updated", tasks.TaskSummaryUpdated, tasks.handle_task_summary_updated),
        Handler("materialize_task", tasks.MaterializeTask, tasks.handle_materialize_task),
    ),
    actions=(
        Handler("get", Empty, actions.get),
        Handler("snapshot", Snapshot, actions.snapshot),
        Handler("member_role", MemberRef, actions.member_role),
        Handler("members", Empty, actions.get_members),
        Handler("organization_for_installation", InstallationRef, actions.organization_for_installation),
        Handler("record_oauth_callback", OAuthCallbackResult, actions.record_oauth_callback),
        Handler("get_oauth_callback", OAuthCallbackResult, actions.get_oauth_callback),
        Handler("github_status", Empty, github.github_status),
        Handler("task_summary", tasks.TaskRef, tasks.task_summary),
        Handler("create_task", tasks.CreateTask, tasks.create_task),
    ),
)
