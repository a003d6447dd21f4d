"""On real Ray: deliveries acknowledged with 202 survive a kill -9 of the github-data host before they
were processed, and each is applied exactly once (a redelivery afterwards changes nothing)."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn

from foundry.config import Settings
from foundry.drivers.github.fake import FakeGitHub
from foundry.http.app import create_app
from foundry.mock import start_fake_github
from foundry.runtime.ray_backend import RayRuntime
from tests.fakes.webhooks import dumps, example, signed_headers
from tests.github.conftest import eventually
from tests.http.conftest import free_port

pytestmark = pytest.mark.ray

#: Deliveries per burst, and bursts at most (see the test).
BURST = 200
MAX_BURSTS = 4


@pytest.fixture
async def webhook_url(ray_runtime: RayRuntime, ray_settings: Settings) -> AsyncIterator[tuple[str, str]]:
    """The real HTTP app on the Ray runtime; yields (base URL, webhook secret)."""
    base = ray_settings.model_copy(update={"port": free_port()})
    fake, settings = start_fake_github(base)
    app = create_app(settings, runtime=ray_runtime, fake_github=fake)
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_level="warning"))
    task = asyncio.create_task(uv.serve())
    await eventually(lambda: asyncio.sleep(0, uv.started), what="uvicorn")
    try:
        yield f"http://127.0.0.1:{settings.port}", settings.github.webhook_secret.get_secret_value()
    finally:
        uv.should_exit = True
        await task
        await asyncio.to_thread(FakeGitHub.stop, fake)


# Correctness, not speed: a host restart and 200 deliveries on a 2-core machine that other test
# workers keep busy took 105 s (24 s when quiet).
@pytest.mark.timeout(300)
async def test_a_host_killed_between_ack_and_processing_applies_each_delivery_once(
    ray_runtime: RayRuntime, webhook_url: tuple[str, str]
) -> None:
    url, secret = webhook_url
    org = f"acme-{uuid.uuid4().hex[:8]}"
    installation = 700_000 + uuid.uuid4().int % 100_000
    # The organization and its installation in the app shell's index. Suspended: no GitHub sync is
    # needed (the Ray hosts of this tier have no GitHub configured).
    await ray_runtime.actor("organization", org).send(
        "sync_from_github",
        {
            "kind": "organization",
            "githubLogin": org,
            "githubAccountId": 1,
            "displayName": org,
            "installationId": installation,
            "suspended": True,
            "members": [],
        },
        wait=True,
        timeout=30,
    )

    async def registered() -> bool:
        try:
            await ray_runtime.call(
                "organization", "app", "organization_for_installation", {"installationId": installation}
            )
        except Exception:
            return False
        return True

    await eventually(registered, timeout=30, what="the installation index")

    bodies: list[tuple[str, bytes]] = []

    def burst() -> list[tuple[str, bytes]]:
        out = []
        for _ in range(BURST):
            i = len(bodies) + len(out)
            payload: dict[str, Any] = example("pull_request_review_comment", "created")
            payload["installation"] = {"id": installation}
            payload["comment"]["id"] = 10_000 + i  # one review comment per delivery
            out.append((str(uuid.uuid4()), dumps(payload)))
        return out

    limit = asyncio.Semaphore(50)

    # Idle connections are dropped before uvicorn's 5 s keep-alive ends: reusing one the server is
    # closing at that moment fails with a read error that says nothing about the product.
    limits = httpx.Limits(keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def deliver(delivery: str, body: bytes) -> httpx.Response:
            async with limit:
                headers = signed_headers(secret, body, "pull_request_review_comment", delivery)
                return await client.post("/v1/webhooks/github", content=body, headers=headers)

        # Bursts until one leaves deliveries acknowledged but not yet applied (processing keeps up
        # with a single burst on a quiet machine): the kill must land in between.
        for _ in range(MAX_BURSTS):
            sent = burst()
            bodies.extend(sent)
            responses = await asyncio.gather(*(deliver(d, b) for d, b in sent))
            assert [r.status_code for r in responses] == [202] * len(sent)
            recorded = await ray_runtime.call("github-data", org, "deliveries", {"limit": 1000})
            done_before = sum(1 for r in recorded if r["status"] != "queued")
            if done_before < len(bodies):
                break
        deliveries = len(bodies)
        pid = (await ray_runtime.host_info("github-data", 0))["pid"]
        os.kill(pid, signal.SIGKILL)
        assert done_before < deliveries, "every delivery was processed before the kill; nothing was tested"

        async def all_recorded() -> list[dict[str, Any]] | None:
            rows: list[dict[str, Any]] = await ray_runtime.call(
                "github-data", org, "deliveries", {"limit": 1000}
            )
            applied = [r for r in rows if r["status"] == "applied"]
            return rows if len(applied) == deliveries else None

        rows = await eventually(all_recorded, timeout=180, what="every delivery applied after the restart")
        assert (await ray_runtime.host_info("github-data", 0))["pid"] != pid
        assert {r["deliveryId"] for r in rows} == {d for d, _ in bodies}
        assert {r["appliedCount"] for r in rows} == {1}
        items = await ray_runtime.call("github-data", org, "pr_items", {"repoId": "186853002", "number": 2})
        assert sorted(i["githubId"] for i in items) == list(range(10_000, 10_000 + deliveries))

        # GitHub redelivers some of them: acknowledged as duplicates, nothing applied again.
        again = await asyncio.gather(*(deliver(d, b) for d, b in bodies[:20]))
        assert all(r.status_code == 202 and r.json()["duplicate"] for r in again)
    rows = await ray_runtime.call("github-data", org, "deliveries", {"limit": 1000})
    assert len(rows) == deliveries
    assert {r["appliedCount"] for r in rows} == {1}
