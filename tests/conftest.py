"""Shared fixtures. Tiers: unit (in-process runtime), ``ray`` (one local Ray per run), ``e2e``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from foundry.clock import FakeClock
from foundry.config import Settings
from foundry.runtime.inprocess import InProcessRuntime
from foundry.services import Services

COUNTER_MODULE = "tests.runtime.counter_role"


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    runtime = {"backend": "inprocess", "extra_roles": {"counter": COUNTER_MODULE}}
    runtime.update(overrides.pop("runtime", {}))  # type: ignore[arg-type]
    return Settings(data_dir=data_dir, runtime=runtime, **overrides)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[InProcessRuntime]:
    rt = InProcessRuntime(
        settings.data_dir,
        Services(settings=settings, clock=FakeClock()),
        idle_seconds=3600,
        extra_role_modules={"counter": COUNTER_MODULE},
    )
    yield rt
    await rt.close()
