"""The organization role, keyed by organization id (``app`` = the app shell)."""

from __future__ import annotations

from actors.organization import actions, handlers
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
    ),
    actions=(
        Handler("get", Empty, actions.get),
        Handler("snapshot", Snapshot, actions.snapshot),
        Handler("member_role", MemberRef, actions.member_role),
        Handler("members", Empty, actions.get_members),
        Handler("organization_for_installation", InstallationRef, actions.organization_for_installation),
        Handler("record_oauth_callback", OAuthCallbackResult, actions.record_oauth_callback),
        Handler("get_oauth_callback", OAuthCallbackResult, actions.get_oauth_callback),
    ),
)
