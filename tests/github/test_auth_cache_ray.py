"""On real Ray, two API processes on the same hosts: a session cached by both stops working in the
other one as soon as it is signed out through the first (the revocation rides the host stream)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr

from foundry.drivers.github.fake import FakeGitHub
from foundry.errors import Conflict
from foundry.http.app import create_app
from foundry.mock import start_fake_github
from foundry.runtime.host_settings import SECRETS_FILE
from foundry.runtime.ray_backend import RayRuntime
from tests.conftest import make_settings
from tests.github.conftest import eventually
from tests.http.auth_calls import ActorCalls
from tests.http.conftest import free_port
from tests.http.test_auth_cache import ORG_PATH, client_of, cookie_header, within

pytestmark = pytest.mark.ray


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(uv.serve())
    await eventually(lambda: asyncio.sleep(0, uv.started), what="uvicorn")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        await task


@pytest.mark.timeout(300)
async def test_sign_out_reaches_the_other_api_process_on_ray(ray_cluster: None, tmp_path: Path) -> None:
    base = make_settings(
        tmp_path / "ray-auth",
        runtime={"backend": "ray", "namespace": f"auth-{uuid.uuid4().hex[:8]}", "idle_seconds": 3600},
    )
    fake, settings = start_fake_github(base)
    runtime = RayRuntime(settings)
    await runtime.start()
    calls = ActorCalls(runtime)  # type: ignore[arg-type]
    try:
        # A third API process configured with another secret key is refused before it touches the
        # hosts' secrets: cookies signed by one process would not verify on the others.
        secrets_file = settings.data_dir / SECRETS_FILE
        before = secrets_file.read_bytes()
        stranger = RayRuntime(settings.model_copy(update={"secret_key": SecretStr("another-" * 6)}))
        with pytest.raises(Conflict, match="secret key"):
            await stranger.start()
        assert secrets_file.read_bytes() == before
        async with (
            serving(create_app(settings, runtime=runtime, fake_github=fake)) as url_a,
            serving(create_app(settings, runtime=runtime, fake_github=fake)) as url_b,
            httpx.AsyncClient(base_url=url_a, timeout=30) as alice,
        ):
            assert (await alice.post("/v1/auth/mock/sign-in", json={"login": "alice"})).status_code == 200

            async def synced() -> bool:
                return bool((await alice.get("/v1/app")).json()["organizationSync"]["status"] == "synced")

            await eventually(synced, timeout=60, what="alice's organizations")
            cookie = cookie_header(alice)
            async with client_of(url_b, cookie) as b, client_of(url_a, cookie) as a:
                await calls.warm(lambda: a.get(ORG_PATH), timeout=20)
                await calls.warm(lambda: b.get(ORG_PATH), timeout=20)
                assert (await alice.post("/v1/auth/sign-out")).status_code == 200

                async def refused() -> bool:
                    return (await b.get(ORG_PATH)).status_code == 401

                await within(1.0, refused, "process B refusing the signed-out cookie")
                assert (await a.get(ORG_PATH)).status_code == 401
    finally:
        await runtime.stop_hosts()
        await runtime.close()
        await asyncio.to_thread(FakeGitHub.stop, fake)
