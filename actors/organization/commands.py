"""Inputs of the organization role."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from foundry.models_catalog import KNOWN_MODELS

_STRICT = ConfigDict(extra="forbid", populate_by_name=True)


class GitHubMember(BaseModel):
    model_config = _STRICT
    user_github_id: int = Field(alias="userGithubId", gt=0)
    login: str = Field(min_length=1, max_length=100)
    avatar_url: str | None = Field(default=None, alias="avatarUrl")
    role: Literal["admin", "member"]


class SyncFromGitHub(BaseModel):
    """Profile and members of a GitHub account where the App is installed."""

    model_config = _STRICT
    kind: Literal["personal", "organization"]
    github_login: str = Field(alias="githubLogin", min_length=1, max_length=100)
    github_account_id: int = Field(alias="githubAccountId", gt=0)
    display_name: str = Field(alias="displayName", min_length=1, max_length=200)
    avatar_url: str | None = Field(default=None, alias="avatarUrl")
    installation_id: int | None = Field(default=None, alias="installationId")
    suspended: bool = False
    members: list[GitHubMember] = Field(default_factory=list, max_length=100_000)


class UpdateSettings(BaseModel):
    """A settings change; only the given fields change."""

    model_config = _STRICT
    display_name: str | None = Field(default=None, alias="displayName", min_length=1, max_length=200)
    default_model: str | None = Field(default=None, alias="defaultModel")
    actor_user_id: str | None = Field(default=None, alias="actorUserId")

    @field_validator("default_model")
    @classmethod
    def _known_model(cls, value: str | None) -> str | None:
        if value is not None and value not in KNOWN_MODELS:
            raise ValueError(f"unknown model {value!r}; known: {', '.join(sorted(KNOWN_MODELS))}")
        return value


class Empty(BaseModel):
    model_config = _STRICT


class GetOrganization(BaseModel):
    """The organization read; ``billingDetails`` (admins only: the HTTP layer decides) swaps the
    member-safe billing summary for the whole billing state."""

    model_config = _STRICT
    billing_details: bool = Field(default=False, alias="billingDetails")


class Snapshot(BaseModel):
    model_config = _STRICT
    topic: str
    since: int | None = None


class MemberRef(BaseModel):
    model_config = _STRICT
    user_id: str = Field(alias="userId", max_length=200)


class RegisterInstallation(BaseModel):
    model_config = _STRICT
    installation_id: int = Field(alias="installationId", gt=0)
    organization_id: str = Field(alias="organizationId", max_length=200)
    account_login: str = Field(alias="accountLogin", max_length=100)


class InstallationRef(BaseModel):
    model_config = _STRICT
    installation_id: int = Field(alias="installationId", gt=0)


class OAuthCallbackResult(BaseModel):
    model_config = _STRICT
    state_hash: str = Field(alias="stateHash", min_length=16, max_length=128)
    user_id: str | None = Field(default=None, alias="userId")
    session_id: str | None = Field(default=None, alias="sessionId")
    session_expires_at: int | None = Field(default=None, alias="sessionExpiresAt")
    ttl_seconds: int = Field(default=60, alias="ttlSeconds", gt=0, le=600)
