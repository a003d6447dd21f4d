"""Inputs of the github-data role."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_STRICT = ConfigDict(extra="forbid", populate_by_name=True)


class Empty(BaseModel):
    model_config = _STRICT


class Sync(BaseModel):
    """Start a full sync (or queue one behind the running sync). ``reason`` is shown in logs only."""

    model_config = _STRICT
    reason: str = Field(default="manual", max_length=200)


class IngestWebhook(BaseModel):
    """One verified GitHub delivery, trimmed by the HTTP tier to the fields the handlers read.

    ``payload`` stays free-form on purpose: a delivery that lacks a field its handler needs must still
    be recorded (as failed, with the reason), so it is validated by the handler, not at enqueue.
    """

    model_config = _STRICT
    delivery_id: str = Field(alias="deliveryId", min_length=1, max_length=100)
    event: str = Field(min_length=1, max_length=100)
    action: str | None = Field(default=None, max_length=100)
    installation_id: int | None = Field(default=None, alias="installationId")
    received_at: int = Field(alias="receivedAt")
    payload: dict[str, Any] = Field(default_factory=dict)


class SyncBatch(BaseModel):
    """What the organization pulls to apply sync ``generation``: rows changed after ``since``."""

    model_config = _STRICT
    since: int = Field(ge=0)
    generation: int = Field(ge=1)


class PullRef(BaseModel):
    model_config = _STRICT
    repo_id: str = Field(alias="repoId", min_length=1, max_length=40)
    number: int = Field(gt=0)


class RepoRef(BaseModel):
    model_config = _STRICT
    repo_id: str = Field(alias="repoId", min_length=1, max_length=40)


class ListDeliveries(BaseModel):
    model_config = _STRICT
    limit: int = Field(default=50, ge=1, le=1000)
    status: str | None = Field(default=None, max_length=20)
