"""A real Foundry server (uvicorn, in-process runtime) against the fake GitHub, with the App's
settings or the fake's App changed per test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from pydantic import SecretStr

from foundry.config import GitHubSettings, Settings
from foundry.drivers.github.fake import FakeGitHub
from foundry.http.app import create_app
from foundry.mock import start_fake_github
from foundry.runtime.inprocess import InProcessRuntime
from foundry.services import build_services
from tests.http.conftest import Server, free_port


@asynccontextmanager
async def foundry_server(
    tmp_path: Path,
    *,
    app: Callable[[FakeGitHub], None] | None = None,
    github: dict[str, object] | None = None,
    production: bool = False,
) -> AsyncIterator[Server]:
    """A started Foundry whose fake GitHub's App was changed by ``app`` (before start-up) and whose
    GitHub settings were overridden with ``github``; ``production`` runs production mode with the
    fake as its GitHub."""
    port = free_port()
    base = Settings(data_dir=tmp_path / "data", mode="mock", port=port, runtime={"backend": "inprocess"})  # type: ignore[arg-type]
    if production:
        base = base.model_copy(
            update={
                "mode": "production",
                "secret_key": SecretStr("production-secret-key-0123456789"),
                "app_url": f"http://127.0.0.1:{port}",
            }
        )
    fake, settings = start_fake_github(base)
    if app is not None:
        app(fake)
    if github:
        merged = GitHubSettings.model_validate({**settings.github.model_dump(), **github})
        settings = settings.model_copy(update={"github": merged})
    assert not settings.check_production()
    services = build_services(settings)
    runtime = InProcessRuntime(settings.data_dir, services, idle_seconds=3600)
    config = uvicorn.Config(
        create_app(settings, runtime=runtime, fake_github=fake),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
    )
    uv = uvicorn.Server(config)
    task = asyncio.create_task(uv.serve())
    for _ in range(250):
        if uv.started:
            break
        await asyncio.sleep(0.02)
    assert uv.started
    try:
        yield Server(f"http://127.0.0.1:{port}", settings, runtime, fake, services.clock)  # type: ignore[arg-type]
    finally:
        uv.should_exit = True
        await task
        await runtime.close()
        fake.stop()
