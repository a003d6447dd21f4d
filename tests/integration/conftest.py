"""The Ray tier: one local Ray for the whole run, hosts reused, unique keys per test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from foundry.config import Settings
from foundry.runtime.ray_backend import RayRuntime
from tests.conftest import make_settings

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ray_session(ray_cluster: None) -> None:
    """The run's shared local Ray (`tests.conftest.ray_cluster`)."""


@pytest.fixture(scope="session")
def ray_settings(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    import ray

    return make_settings(
        tmp_path_factory.mktemp("ray-data"),
        runtime={
            "backend": "ray",
            "namespace": ray.get_runtime_context().namespace,
            "shards": {"counter": 2},
            "idle_seconds": 3600,
        },
    )


@pytest.fixture
async def ray_runtime(ray_settings: Settings) -> AsyncIterator[RayRuntime]:
    rt = RayRuntime(ray_settings)
    await rt.start()
    yield rt
    await rt.close()
    await asyncio.sleep(0)
