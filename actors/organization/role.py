"""The organization role, keyed by organization id (``app`` = the app shell)."""

from __future__ import annotations

from actors.organization import (
    actions,
    agent_credentials,
    billing,
    billing_events,
    billing_sync,
    github,
    github_commands,
    handlers,
    task_list,
    tasks,
)
from actors.organization.commands import (
    Empty,
    GetOrganization,
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
        # GitHub mirror (actors/organization/github*.py)
        Handler("apply_github_sync", github_commands.ApplyGitHubSync, github.handle_apply_github_sync),
        Handler(
            "github_sync_progress", github_commands.GitHubSyncProgress, github.handle_github_sync_progress
        ),
        Handler("github_event", github_commands.GitHubEvent, github.handle_github_event),
        Handler("request_github_sync", github_commands.RequestGitHubSync, github.handle_request_github_sync),
        # Tasks (actors/organization/tasks.py)
        Handler("create_task", tasks.CreateTask, tasks.handle_create_task),
        Handler("task_summary_updated", tasks.TaskSummaryUpdated, tasks.handle_task_summary_updated),
        Handler("materialize_task", tasks.MaterializeTask, tasks.handle_materialize_task),
        # Billing (actors/organization/billing*.py)
        Handler("stripe_event", billing_events.StripeEvent, billing_events.handle_stripe_event),
        Handler(
            "apply_subscription", billing_events.ApplySubscription, billing_events.handle_apply_subscription
        ),
    ),
    actions=(
        Handler("get", GetOrganization, actions.get),
        Handler("snapshot", Snapshot, actions.snapshot),
        Handler("member_role", MemberRef, actions.member_role),
        Handler("members", Empty, actions.get_members),
        Handler("organization_for_installation", InstallationRef, actions.organization_for_installation),
        Handler("record_oauth_callback", OAuthCallbackResult, actions.record_oauth_callback),
        Handler("get_oauth_callback", OAuthCallbackResult, actions.get_oauth_callback),
        Handler("github_status", Empty, github.github_status),
        Handler("task_summary", tasks.TaskRef, tasks.task_summary),
        Handler("list_tasks", task_list.ListTasks, task_list.list_tasks),
        Handler("create_task", tasks.CreateTask, tasks.create_task),
        Handler("billing", billing.BillingRef, billing.get_billing),
        Handler("stripe_event_stats", billing.BillingRef, billing.stripe_event_stats),
        Handler("ensure_seat", billing.SeatRequest, billing.ensure_seat),
        Handler("seat", billing.SeatRequest, billing.seat),
        Handler("release_seat", billing.ReleaseSeat, billing.release_seat),
        Handler("start_checkout", billing.StartCheckout, billing.start_checkout),
        Handler("complete_checkout", billing.CompleteCheckout, billing.complete_checkout),
        Handler("open_billing_portal", billing.PortalRequest, billing.open_portal),
        Handler("cancel_subscription", billing.AdminRequest, billing.cancel_at_period_end),
        Handler("resume_subscription", billing.AdminRequest, billing.resume),
        Handler("switch_to_free", billing.AdminRequest, billing.switch_to_free),
        Handler("register_stripe_customer", billing.CustomerRef, billing.register_stripe_customer),
        Handler("stripe_customer_organization", billing.CustomerRef, billing.stripe_customer_organization),
        Handler("record_unrouted_stripe_event", billing.UnroutedEvent, billing.record_unrouted_event),
        # Agent credentials (actors/organization/agent_credentials.py)
        Handler(
            "set_agent_credential",
            agent_credentials.SetAgentCredential,
            agent_credentials.set_agent_credential,
        ),
        Handler(
            "remove_agent_credential",
            agent_credentials.RemoveAgentCredential,
            agent_credentials.remove_agent_credential,
        ),
        Handler(
            "agent_credentials",
            agent_credentials.AgentCredentialsRef,
            agent_credentials.list_agent_credentials,
        ),
        Handler(
            "agent_environment",
            agent_credentials.AgentCredentialsRef,
            agent_credentials.agent_environment,
        ),
    ),
    on_wake=billing_sync.resume_billing_jobs,
)
