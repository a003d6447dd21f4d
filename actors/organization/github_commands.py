"""Bodies of the organization's GitHub commands: what github-data sends after a sync or a webhook.

These are the shapes github-data produces (camelCase on the wire, GitHub's ``updated_at`` as ISO
8601 UTC). They live apart from the code that applies them so that the row writers and the command
handlers, split by concern, share one definition, and the wire contract reads in one place.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

_STRICT = ConfigDict(extra="forbid", populate_by_name=True)

PullRequestState = Literal["open", "draft", "closed", "merged"]
CiState = Literal["pending", "success", "failure", "error"]
InstallationStatus = Literal["connected", "suspended", "install_required"]


class RepoState(BaseModel):
    """A repository as github-data mirrors it."""

    model_config = _STRICT
    repo_id: str = Field(alias="repoId", min_length=1, max_length=40)
    full_name: str = Field(alias="fullName", min_length=3, max_length=300)
    default_branch: str = Field(alias="defaultBranch", min_length=1, max_length=300)
    private: bool
    archived: bool = False
    clone_url: str = Field(alias="cloneUrl", max_length=2000)
    html_url: str | None = Field(default=None, alias="htmlUrl", max_length=2000)


class PullState(BaseModel):
    """A pull request as github-data mirrors it; ``updatedAt`` is GitHub's (ISO 8601, UTC)."""

    model_config = _STRICT
    repo_id: str = Field(alias="repoId", min_length=1, max_length=40)
    repo_full_name: str = Field(alias="repoFullName", max_length=300)
    number: int = Field(gt=0)
    title: str = Field(max_length=1000)
    state: PullRequestState
    head_ref: str = Field(alias="headRef", min_length=1, max_length=300)
    head_sha: str | None = Field(default=None, alias="headSha", max_length=64)
    base_ref: str | None = Field(default=None, alias="baseRef", max_length=300)
    author_login: str | None = Field(default=None, alias="authorLogin", max_length=100)
    url: str | None = Field(default=None, max_length=2000)
    updated_at: str = Field(alias="updatedAt", min_length=20, max_length=20)
    ci_state: CiState | None = Field(default=None, alias="ciState")


class MemberState(BaseModel):
    model_config = _STRICT
    github_id: int = Field(alias="githubId", gt=0)
    login: str = Field(min_length=1, max_length=100)
    avatar_url: str | None = Field(default=None, alias="avatarUrl")
    role: Literal["admin", "member"]


class CiChange(BaseModel):
    model_config = _STRICT
    repo_id: str = Field(alias="repoId", min_length=1, max_length=40)
    number: int = Field(gt=0)
    head_sha: str | None = Field(default=None, alias="headSha", max_length=64)
    state: CiState | None


class Touch(BaseModel):
    """New activity (a review or comment) on a pull request at ``at`` (epoch ms)."""

    model_config = _STRICT
    repo_id: str = Field(alias="repoId", min_length=1, max_length=40)
    number: int = Field(gt=0)
    at: int


class InstallationChange(BaseModel):
    model_config = _STRICT
    installation_id: int = Field(alias="installationId", gt=0)
    status: InstallationStatus
    account_login: str = Field(alias="accountLogin", min_length=1, max_length=100)
    account_id: int = Field(alias="accountId", gt=0)
    account_type: Literal["User", "Organization"] = Field(alias="accountType")
    avatar_url: str | None = Field(default=None, alias="avatarUrl", max_length=2000)
    #: Sync again even if the installation was already connected (e.g. new permissions accepted).
    resync: bool = False


class WebhookReceipt(BaseModel):
    model_config = _STRICT
    event: str = Field(max_length=100)
    received_at: int = Field(alias="receivedAt")


class GitHubEvent(BaseModel):
    """What one webhook delivery (or a member refresh, or the installation reconciliation) changed."""

    model_config = _STRICT
    installation: InstallationChange | None = None
    repos_upserted: list[RepoState] = Field(default_factory=list, alias="reposUpserted", max_length=1000)
    repos_removed: list[str] = Field(default_factory=list, alias="reposRemoved", max_length=1000)
    #: github-data's member list changed: the organization reads it (``member_list``) and applies it.
    members_changed: bool = Field(default=False, alias="membersChanged")
    pulls: list[PullState] = Field(default_factory=list, max_length=1000)
    ci: list[CiChange] = Field(default_factory=list, max_length=1000)
    touched: list[Touch] = Field(default_factory=list, max_length=1000)
    webhook: WebhookReceipt | None = None


class ApplyGitHubSync(BaseModel):
    """Sync ``generation`` is stored in github-data: pull and apply everything it changed."""

    model_config = _STRICT
    generation: int = Field(ge=1)
    processed: int = Field(default=0, ge=0)
    total: int = Field(default=0, ge=0)


class GitHubSyncProgress(BaseModel):
    model_config = _STRICT
    generation: int = Field(ge=1)
    status: Literal["syncing", "error"]
    phase: str | None = Field(default=None, max_length=50)
    processed: int = Field(default=0, ge=0)
    total: int = Field(default=0, ge=0)
    error: str | None = Field(default=None, max_length=2000)


class RequestGitHubSync(BaseModel):
    model_config = _STRICT
    actor_user_id: str | None = Field(default=None, alias="actorUserId", max_length=200)
