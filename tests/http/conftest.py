"""The HTTP tier: a real uvicorn server on a free port, the in-process runtime, the fake GitHub."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from foundry.clock import FakeClock
from foundry.config import Settings
from foundry.drivers.github.fake import FakeGitHub, seed_mock
from foundry.http.app import create_app
from foundry.mock import start_fake_github
from foundry.runtime.inprocess import InProcessRuntime
from foundry.services import build_services
from tests.ports import free_port


@dataclass
class Server:
    """A running Foundry: its URL, settings, runtime, fake GitHub and runtime clock."""

    url: str
    settings: Settings
    runtime: InProcessRuntime
    github: FakeGitHub
    clock: FakeClock

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10, **kwargs)

    @asynccontextmanager
    async def signed_in(self, login: str) -> AsyncIterator[httpx.AsyncClient]:
        """A client holding ``login``'s session cookie, with organization discovery finished."""
        async with self.client() as client:
            response = await client.post("/v1/auth/mock/sign-in", json={"login": login})
            assert response.status_code == 200, response.text
            for _ in range(500):
                app = (await client.get("/v1/app")).json()
                if app["organizationSync"]["status"] in ("synced", "error"):
                    break
                await asyncio.sleep(0.02)
            assert app["organizationSync"]["status"] == "synced", app
            await self.github_settled([o["id"] for o in app["organizations"]])
            yield client

    async def github_settled(self, organization_ids: list[str]) -> None:
        """Wait until the GitHub sync that a first sign-in starts has finished for these
        organizations, so tests see a stable organization summary."""
        for org in organization_ids:
            for _ in range(500):
                status = await self.runtime.call("organization", org, "github_status")
                if status.get("installationStatus") != "connected" or status.get("syncStatus") in (
                    "synced",
                    "error",
                ):
                    break
                await asyncio.sleep(0.02)


@pytest.fixture
def fake_github() -> Iterator[FakeGitHub]:
    fake = seed_mock(FakeGitHub()).start()
    yield fake
    fake.stop()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    port = free_port()
    base = Settings(data_dir=tmp_path / "data", mode="mock", port=port, runtime={"backend": "inprocess"})  # type: ignore[arg-type]
    fake, settings = start_fake_github(base)
    clock = FakeClock()
    services = build_services(settings)
    services.clock = clock
    runtime = InProcessRuntime(settings.data_dir, services, idle_seconds=3600)
    app = create_app(settings, runtime=runtime, fake_github=fake)
    try:
        async with serving(app, port):
            yield Server(f"http://127.0.0.1:{port}", settings, runtime, fake, clock)
    finally:
        await runtime.close()
        fake.stop()


@asynccontextmanager
async def second_process(server: Server) -> AsyncIterator[str]:
    """Another API process (its own app, gateway and caches) on the same hosts: its base URL."""
    port = free_port()
    app = create_app(server.settings, runtime=server.runtime, fake_github=server.github)
    async with serving(app, port):
        yield f"http://127.0.0.1:{port}"


async def _serve(uv: uvicorn.Server, port: int) -> None:
    """``uv.serve()``, with its exit on a failed start (a port another process took since
    `free_port` chose it) turned into an error of this test. As the SystemExit it is, it broke
    pytest-asyncio's event loop runner, and every later test of the worker failed in setup."""
    try:
        await uv.serve()
    except SystemExit as exc:
        raise RuntimeError(f"uvicorn could not start on 127.0.0.1:{port} (exit {exc.code})") from None


@asynccontextmanager
async def serving(app: Any, port: int) -> AsyncIterator[None]:
    """Serve ``app`` with uvicorn on 127.0.0.1:``port`` (as `foundry serve` does) until the block ends."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", ws="websockets-sansio", lifespan="on"
    )
    uv = uvicorn.Server(config)
    task = asyncio.create_task(_serve(uv, port))
    for _ in range(200):
        if uv.started or task.done():
            break
        await asyncio.sleep(0.02)
    if task.done():
        task.result()  # raises why the server did not start
    assert uv.started
    try:
        yield
    finally:
        uv.should_exit = True
        await task
