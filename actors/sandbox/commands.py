"""Inputs of the sandbox role."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

_STRICT = ConfigDict(extra="forbid", populate_by_name=True)


class Empty(BaseModel):
    model_config = _STRICT


class Ensure(BaseModel):
    """Start the sandbox if it is not running and return how to reach it (or its queue position)."""

    model_config = _STRICT
    #: Hold the sandbox under this lease id (renew it; release it when done).
    lease: str | None = Field(default=None, max_length=200)
    lease_seconds: float = Field(default=30.0, gt=0, le=3600, alias="leaseSeconds")
    #: Wait in the FIFO queue (and keep the place) when no slot is free.
    wait: bool = True
    #: False: only report a running sandbox (``running: false`` otherwise), never start one.
    start: bool = True


class Lease(BaseModel):
    """Renew or release a lease taken with ``ensure``."""

    model_config = _STRICT
    lease: str = Field(min_length=1, max_length=200)
    lease_seconds: float = Field(default=30.0, gt=0, le=3600, alias="leaseSeconds")


class Reclaim(BaseModel):
    """Stop the sandbox (keeping its directory) unless it is in use."""

    model_config = _STRICT
    reason: str = Field(default="", max_length=500)


class Destroy(BaseModel):
    """Stop the sandbox and delete it with its checkout."""

    model_config = _STRICT
    reason: str = Field(default="", max_length=500)


class RemoteGit(BaseModel):
    """Fetch every branch of ``url`` into the checkout, or push commit ``sha`` to ``branch`` there
    (`foundry.drivers.sandbox.remote_git`)."""

    model_config = _STRICT
    op: Literal["fetch", "push"]
    url: str = Field(min_length=1, max_length=2000)
    token: str | None = Field(default=None, max_length=1000)
    sha: str | None = Field(default=None, pattern=r"^[0-9a-f]{40}([0-9a-f]{24})?$")
    branch: str | None = Field(default=None, max_length=255)
    timeout_ms: int = Field(default=300_000, gt=0, le=3_600_000, alias="timeoutMs")


class Exited(BaseModel):
    """The provider saw the sandbox's server stop on its own (a crash)."""

    model_config = _STRICT
    returncode: int | None = None
    reason: str = Field(max_length=20_000)
    pid: int | None = None
