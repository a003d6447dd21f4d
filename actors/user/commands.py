"""Inputs of the user role."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

_STRICT = ConfigDict(extra="forbid", populate_by_name=True)


class UpsertFromGitHub(BaseModel):
    """The GitHub identity and OAuth token of a sign-in."""

    model_config = _STRICT
    github_account_id: int = Field(alias="githubAccountId", gt=0)
    login: str = Field(min_length=1, max_length=100)
    name: str | None = Field(default=None, max_length=300)
    email: str | None = Field(default=None, max_length=320)
    avatar_url: str | None = Field(default=None, alias="avatarUrl", max_length=2000)
    access_token: str = Field(alias="accessToken", min_length=1, max_length=2000)
    scope: str = Field(default="", max_length=500)


class CreateSession(BaseModel):
    model_config = _STRICT
    ttl_seconds: int = Field(alias="ttlSeconds", gt=0, le=90 * 24 * 3600)
    user_agent: str | None = Field(default=None, alias="userAgent", max_length=500)
    ip_address: str | None = Field(default=None, alias="ipAddress", max_length=100)


class SessionRef(BaseModel):
    model_config = _STRICT
    session_id: str = Field(alias="sessionId", min_length=10, max_length=200)


class Empty(BaseModel):
    model_config = _STRICT


class SetActiveOrganization(BaseModel):
    model_config = _STRICT
    organization_id: str | None = Field(alias="organizationId", max_length=200)


class DiscoveredOrganization(BaseModel):
    model_config = _STRICT
    id: str
    display_name: str = Field(alias="displayName")
    kind: str
    role: str
    avatar_url: str | None = Field(default=None, alias="avatarUrl")


class OrganizationsDiscovered(BaseModel):
    """Result of a discovery run: the organizations this user may use, or the error."""

    model_config = _STRICT
    organizations: list[DiscoveredOrganization] = Field(default_factory=list)
    error: str | None = None


class Snapshot(BaseModel):
    model_config = _STRICT
    topic: str
    since: int | None = None


class TaskRef(BaseModel):
    model_config = _STRICT
    organization_id: str = Field(alias="organizationId", max_length=200)
    task_id: str = Field(alias="taskId", max_length=200)


class UpdateSessionState(BaseModel):
    """Per-user state of one agent session: unread flag and draft text."""

    model_config = _STRICT
    organization_id: str = Field(alias="organizationId", max_length=200)
    task_id: str = Field(alias="taskId", max_length=200)
    session_id: str = Field(alias="sessionId", max_length=200)
    unread: bool | None = None
    draft_text: str | None = Field(default=None, alias="draftText", max_length=100_000)
    make_active: bool = Field(default=False, alias="makeActive")
