"""Inputs of the sandbox role."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

_STRICT = ConfigDict(extra="forbid", populate_by_name=True)


class Empty(BaseModel):
    model_config = _STRICT


class Ensure(BaseModel):
    """Start the sandbox if it is not running and return how to reach it."""

    model_config = _STRICT


class Destroy(BaseModel):
    """Stop the sandbox and delete it with its checkout."""

    model_config = _STRICT
    reason: str = Field(default="", max_length=500)


class Exited(BaseModel):
    """The provider saw the sandbox's server stop on its own (a crash)."""

    model_config = _STRICT
    returncode: int | None = None
    reason: str = Field(max_length=20_000)
    pid: int | None = None
