"""Inputs of the task role."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from actors.task.naming import MAX_PROMPT_CHARS

_STRICT = ConfigDict(extra="forbid", populate_by_name=True)

SessionId = Field(alias="sessionId", min_length=1, max_length=100)
UserId = Field(default=None, alias="userId", max_length=200)


class Empty(BaseModel):
    model_config = _STRICT


class Initialize(BaseModel):
    """Sent by the organization (only it creates tasks): everything the task needs to start."""

    model_config = _STRICT
    organization_id: str = Field(alias="organizationId", max_length=200)
    task_id: str = Field(alias="taskId", max_length=100)
    repo_id: str = Field(alias="repoId", max_length=100)
    repo_full_name: str = Field(alias="repoFullName", max_length=300)
    clone_url: str = Field(alias="cloneUrl", max_length=2000)
    default_branch: str = Field(alias="defaultBranch", max_length=300)
    installation_id: int | None = Field(default=None, alias="installationId")
    title: str = Field(min_length=1, max_length=300)
    branch: str = Field(min_length=1, max_length=300)
    #: The first prompt; None for a task materialized from a pull request (no session is opened).
    prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    #: The id of the first session (chosen by the organization so that creation can return it).
    session_id: str | None = Field(default=None, alias="sessionId", pattern=r"^session-[0-9a-f]{32}$")
    agent: str = Field(max_length=50)
    model: str = Field(max_length=100)
    owner_user_id: str | None = Field(default=None, alias="ownerUserId", max_length=200)
    owner_login: str | None = Field(default=None, alias="ownerLogin", max_length=100)
    pull_request: dict[str, object] | None = Field(default=None, alias="pullRequest")


class CreateSession(BaseModel):
    model_config = _STRICT
    agent: str | None = Field(default=None, max_length=50)
    model: str | None = Field(default=None, max_length=100)
    name: str | None = Field(default=None, min_length=1, max_length=200)
    #: A first message, queued until the session is ready.
    prompt: str | None = Field(default=None, min_length=1, max_length=MAX_PROMPT_CHARS)
    user_id: str | None = UserId


class SendMessage(BaseModel):
    model_config = _STRICT
    session_id: str = SessionId
    text: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    user_id: str | None = UserId


class PromptTarget(BaseModel):
    """Where a prompt would go: a session of the task, or (no ``sessionId``) a new session."""

    model_config = _STRICT
    session_id: str | None = Field(default=None, alias="sessionId", max_length=100)


class SessionRef(BaseModel):
    model_config = _STRICT
    session_id: str = SessionId
    user_id: str | None = UserId


class RenameSession(BaseModel):
    model_config = _STRICT
    session_id: str = SessionId
    name: str = Field(min_length=1, max_length=200)
    user_id: str | None = UserId


class AnswerPermission(BaseModel):
    model_config = _STRICT
    session_id: str = SessionId
    request_id: str = Field(alias="requestId", min_length=1, max_length=100)
    #: One of the offered option ids; None answers "cancelled".
    option_id: str | None = Field(default=None, alias="optionId", max_length=200)
    user_id: str | None = UserId


class Rename(BaseModel):
    model_config = _STRICT
    title: str = Field(min_length=1, max_length=300)
    user_id: str | None = UserId


class MirrorPullRequest(BaseModel):
    """The task's pull request as GitHub shows it now (sent by the organization's mirror)."""

    model_config = _STRICT
    number: int = Field(gt=0)
    url: str | None = Field(default=None, max_length=2000)
    state: Literal["open", "draft", "closed", "merged"]
    title: str = Field(max_length=1000)
    head_sha: str | None = Field(default=None, alias="headSha", max_length=64)
    author_login: str | None = Field(default=None, alias="authorLogin", max_length=100)
    updated_at: str | None = Field(default=None, alias="updatedAt", max_length=40)
    ci_state: Literal["pending", "success", "failure", "error"] | None = Field(default=None, alias="ciState")


class ChangeOwner(BaseModel):
    model_config = _STRICT
    owner_user_id: str = Field(alias="ownerUserId", max_length=200)
    owner_login: str = Field(alias="ownerLogin", max_length=100)
    user_id: str | None = UserId


class SandboxExited(BaseModel):
    """From the sandbox actor: its server stopped on its own."""

    model_config = _STRICT
    reason: str = Field(max_length=20_000)
    returncode: int | None = None
    generation: int = 0


class Snapshot(BaseModel):
    model_config = _STRICT
    topic: str
    since: int | None = None


class EventsPage(BaseModel):
    model_config = _STRICT
    session_id: str = SessionId
    since: int = Field(default=0, ge=0)
    limit: int = Field(default=500, ge=1, le=5000)


class PullRequestRequest(BaseModel):
    model_config = _STRICT
    title: str | None = Field(default=None, min_length=1, max_length=300)
    body: str = Field(default="", max_length=60_000)
    draft: bool = False
    user_id: str | None = UserId


class Archive(BaseModel):
    model_config = _STRICT
    force: bool = False
    reason: str = Field(default="user", max_length=200)
    user_id: str | None = UserId
