"""The user role, keyed by the canonical user id (``gh-<github account id>``)."""

from __future__ import annotations

from actors.user import actions, handlers
from actors.user.commands import (
    CreateSession,
    Empty,
    OrganizationsDiscovered,
    SessionRef,
    SetActiveOrganization,
    Snapshot,
    TaskRef,
    UpdateSessionState,
    UpsertFromGitHub,
)
from actors.user.schema import metadata
from foundry.runtime.role import Handler, Role

ROLE = Role(
    name="user",
    package="user",
    metadata=metadata,
    commands=(
        Handler("discover_organizations", Empty, handlers.handle_discover_organizations),
        Handler(
            "organizations_discovered", OrganizationsDiscovered, handlers.handle_organizations_discovered
        ),
        Handler("update_session_state", UpdateSessionState, actions.handle_update_session_state),
    ),
    actions=(
        Handler("upsert_from_github", UpsertFromGitHub, actions.upsert_from_github),
        Handler("create_session", CreateSession, actions.create_session),
        Handler("get_session", SessionRef, actions.get_session),
        Handler("revoke_session", SessionRef, actions.revoke_session),
        Handler("app_snapshot", Empty, actions.app_snapshot),
        Handler("snapshot", Snapshot, actions.snapshot),
        Handler("set_active_organization", SetActiveOrganization, actions.set_active_organization),
        Handler("github_token", Empty, actions.github_token),
        Handler("get_task_state", TaskRef, actions.get_task_state),
        Handler("update_session_state", UpdateSessionState, actions.update_session_state),
    ),
    on_wake=handlers.resume_discovery,
)
