"""Builds the runtime a process uses from settings: Ray for ``serve``, in-process for dev and tests."""

from __future__ import annotations

from foundry.config import Settings
from foundry.runtime.client import Runtime
from foundry.services import build_services


def build_runtime(settings: Settings) -> Runtime:
    """The runtime backend named by ``settings.runtime.backend`` (not started yet)."""
    if settings.runtime.backend == "inprocess":
        from foundry.runtime.inprocess import InProcessRuntime

        return InProcessRuntime(
            settings.data_dir,
            build_services(settings),
            shard_counts=dict(settings.runtime.shards),
            default_shards=settings.runtime.default_shards,
            idle_seconds=settings.runtime.idle_seconds,
            extra_role_modules=dict(settings.runtime.extra_roles),
        )
    from foundry.runtime.ray_backend import RayRuntime

    return RayRuntime(settings)
