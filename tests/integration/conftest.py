"""The Ray tier: one local Ray for the whole run, hosts reused, unique keys per test."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from foundry.config import Settings
from foundry.runtime.ray_backend import RayRuntime
from tests.conftest import make_settings

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    import ray

    # Host processes must import test roles (tests.runtime.counter_role) too.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        namespace=f"test-{uuid.uuid4().hex[:8]}",
        object_store_memory=128 * 1024 * 1024,
    )
    yield
    ray.shutdown()


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
