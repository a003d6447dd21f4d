"""Inputs and outputs of the audit log."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_STRICT = ConfigDict(extra="forbid", populate_by_name=True)


class AppendEvent(BaseModel):
    """Record one event. ``kind`` is dotted, e.g. ``task.created``."""

    model_config = _STRICT
    kind: str = Field(min_length=1, max_length=100, pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
    repo_id: str | None = Field(default=None, alias="repoId", max_length=200)
    task_id: str | None = Field(default=None, alias="taskId", max_length=200)
    branch_name: str | None = Field(default=None, alias="branchName", max_length=300)
    actor_user_id: str | None = Field(default=None, alias="actorUserId", max_length=200)
    payload: dict[str, Any] = Field(default_factory=dict)


class ListEvents(BaseModel):
    """Filter the log; rows come newest first."""

    model_config = _STRICT
    repo_id: str | None = Field(default=None, alias="repoId")
    task_id: str | None = Field(default=None, alias="taskId")
    branch: str | None = None
    kind: str | None = None
    limit: int = Field(default=100, ge=1, le=1000)
    before_id: int | None = Field(default=None, alias="beforeId", ge=1)
    #: False for a member who is not an admin: events of `ADMIN_ONLY_KINDS` are left out. The HTTP
    #: route always says which; operators' and internal reads see everything.
    admin_view: bool = Field(default=True, alias="adminView")


class AuditLogEvent(BaseModel):
    """One row as clients see it."""

    id: int
    organization_id: str = Field(serialization_alias="organizationId")
    repo_id: str | None = Field(serialization_alias="repoId")
    task_id: str | None = Field(serialization_alias="taskId")
    branch_name: str | None = Field(serialization_alias="branchName")
    kind: str
    actor_user_id: str | None = Field(serialization_alias="actorUserId")
    payload: dict[str, Any]
    created_at: int = Field(serialization_alias="createdAt")

    def public(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")
