"""The task role, keyed ``<orgId>:<taskId>``. Only the organization creates tasks (``initialize``);
only the task creates its sandbox."""

from __future__ import annotations

from actors.task import actions, handlers, session_handlers
from actors.task.commands import (
    AnswerPermission,
    Archive,
    ChangeOwner,
    CreateSession,
    Empty,
    EventsPage,
    Initialize,
    MirrorPullRequest,
    PromptTarget,
    PullRequestRequest,
    Rename,
    RenameSession,
    SandboxExited,
    SendMessage,
    SessionRef,
    Snapshot,
)
from actors.task.jobs import resume_after_wake
from actors.task.schema import metadata
from foundry.runtime.role import Handler, Role

ROLE = Role(
    name="task",
    package="task",
    metadata=metadata,
    commands=(
        Handler("initialize", Initialize, handlers.handle_initialize),
        Handler("create_session", CreateSession, handlers.handle_create_session),
        Handler("send_message", SendMessage, handlers.handle_send_message),
        Handler("stop_session", SessionRef, session_handlers.handle_stop_session),
        Handler("rename_session", RenameSession, session_handlers.handle_rename_session),
        Handler("close_session", SessionRef, session_handlers.handle_close_session),
        Handler("answer_permission", AnswerPermission, session_handlers.handle_answer_permission),
        Handler("rename", Rename, handlers.handle_rename),
        Handler("change_owner", ChangeOwner, handlers.handle_change_owner),
        Handler("mirror_pull_request", MirrorPullRequest, handlers.handle_mirror_pull_request),
        Handler("sandbox_exited", SandboxExited, handlers.handle_sandbox_exited),
    ),
    actions=(
        Handler("get", Empty, actions.get),
        Handler("snapshot", Snapshot, actions.snapshot),
        Handler("events", EventsPage, actions.events),
        Handler("check_prompt_target", PromptTarget, actions.check_prompt_target),
        Handler("diff", Empty, actions.diff),
        Handler("files", Empty, actions.files),
        Handler("create_pull_request", PullRequestRequest, actions.create_pull_request),
        Handler("archive", Archive, actions.archive),
    ),
    on_wake=resume_after_wake,
    # What `resume_after_wake` picks up again: unfinished provisioning (a task waiting for a sandbox
    # slot, or cloning) and queued or interrupted messages of a task that is not archived.
    resume_query=(
        "SELECT 1 FROM task WHERE archived_at IS NULL AND (provision_state IN ('pending', 'provisioning')"
        " OR EXISTS (SELECT 1 FROM messages WHERE status IN ('queued', 'running'))) LIMIT 1"
    ),
)
