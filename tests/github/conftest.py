"""GitHub tier: the real HTTP server with the real PyGithub driver against the fake GitHub, real
webhook payloads (@octokit/webhooks-examples) signed like GitHub signs them, and one real-Ray test.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from foundry.config import Settings
from foundry.runtime.events import Event
from foundry.runtime.ray_backend import RayRuntime
from tests.conftest import make_settings
from tests.fakes.webhooks import dumps, signed_headers
from tests.http.conftest import Server, server  # noqa: F401  (the HTTP tier's server fixture)

REPO_ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")

ACME_INSTALLATION = 1001
ACME_LOGIN = "acme"  # the GitHub login of the account behind ACME_INSTALLATION
HELLO_WORLD_ID = "186853002"  # the repository of every @octokit example (Codertocat/Hello-World)


async def eventually(probe: Callable[[], Awaitable[T | None]], timeout: float = 10.0, what: str = "") -> T:
    """Poll ``probe`` until it returns something truthy (or fail after ``timeout`` seconds)."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: T | None = None
    while asyncio.get_running_loop().time() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or probe}; last value: {last!r}")


@dataclass
class Recorder:
    """Events of one organization topic, as the realtime gateway would receive them."""

    topic: str
    events: list[Event] = field(default_factory=list)

    def named(self, name: str) -> list[Event]:
        return [e for e in self.events if e.event == name]

    def clear(self) -> None:
        self.events.clear()


@dataclass
class GitHub:
    """Drives the GitHub side of a running Foundry: deliveries, syncs, reads."""

    server: Server
    _client: httpx.AsyncClient | None = None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    @property
    def secret(self) -> str:
        return self.server.settings.github.webhook_secret.get_secret_value()

    async def deliver(
        self,
        event: str,
        payload: dict[str, Any],
        *,
        delivery_id: str | None = None,
        secret: str | None = None,
        drop: tuple[str, ...] = (),
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> httpx.Response:
        """POST one delivery with GitHub's headers, signed over the exact bytes sent."""
        raw = body if body is not None else dumps(payload)
        sent = signed_headers(secret if secret is not None else self.secret, raw, event, delivery_id)
        sent.update(headers or {})
        for name in drop:
            sent.pop(name, None)
        if self._client is None:
            # One client for the test: building an httpx client costs tens of milliseconds.
            self._client = self.server.client()
        return await self._client.post("/v1/webhooks/github", content=raw, headers=sent)

    async def deliveries(self, key: str = "acme") -> dict[str, dict[str, Any]]:
        rows = await self.server.runtime.call("github-data", key, "deliveries", {"limit": 1000})
        return {r["deliveryId"]: r for r in rows}

    async def recorded(self, delivery_id: str, key: str = "acme") -> dict[str, Any]:
        """The delivery's outcome once it was applied (it is ``queued`` before)."""

        async def probe() -> dict[str, Any] | None:
            row = (await self.deliveries(key)).get(delivery_id)
            return row if row is not None and row["status"] != "queued" else None

        return await eventually(probe, what=f"delivery {delivery_id} on github-data/{key}")

    async def send(self, event: str, payload: dict[str, Any], key: str = "acme") -> dict[str, Any]:
        """Deliver, expect 202, and return the recorded outcome."""
        delivery_id = str(uuid.uuid4())
        response = await self.deliver(event, payload, delivery_id=delivery_id)
        assert response.status_code == 202, response.text
        return await self.recorded(delivery_id, key)

    async def organization(self, org: str = "acme") -> dict[str, Any]:
        result: dict[str, Any] = await self.server.runtime.call("organization", org, "get")
        return result

    async def tasks(self, org: str = "acme") -> dict[str, dict[str, Any]]:
        """Every task row, archived ones included, by id."""
        rows = await self._all_tasks(org)
        return {r["taskId"]: r for r in rows}

    async def _all_tasks(self, org: str) -> list[dict[str, Any]]:
        from actors.organization.state import list_task_summaries

        host = self.server.runtime.host("organization", 0)
        instance = await host._acquire(org)
        try:
            async with instance.engine.connect() as conn:
                return await list_task_summaries(conn, include_archived=True)
        finally:
            host._release(instance)

    async def task(self, task_id: str, org: str = "acme") -> dict[str, Any] | None:
        return (await self.tasks(org)).get(task_id)

    async def sync(self, org: str = "acme") -> dict[str, Any]:
        """Run a full sync and wait for it; returns github-data's status afterwards.

        The ``sync`` command marks the cache ``syncing`` before it returns, so the next status that
        is not ``syncing`` is this sync's outcome (the organization applied it in the same job).
        """
        before = int((await self.server.runtime.call("github-data", org, "status")).get("generation") or 0)
        started = await self.server.runtime.actor("github-data", org).send(
            "sync", {"reason": "test"}, wait=True
        )
        # A sync already running (one a webhook asked for, say) queues this one behind it: wait for
        # both, so that what follows sees a sync that started after this call.
        assert started["started"] or started.get("queued"), started
        # (A failed sync keeps the generation: only a queued one is told apart by it.)
        wanted = before if started["started"] else before + 2

        async def done() -> dict[str, Any] | None:
            status: dict[str, Any] = await self.server.runtime.call("github-data", org, "status")
            finished = status["syncStatus"] in ("synced", "error")
            return status if finished and int(status.get("generation") or 0) >= wanted else None

        return await eventually(done, what=f"a sync of {org}")

    @asynccontextmanager
    async def recording(self, org: str = "acme") -> AsyncIterator[Recorder]:
        """Collect the events published on ``organization:<org>`` while the block runs."""
        recorder = Recorder(f"organization:{org}")
        ready = asyncio.Event()

        async def consume() -> None:
            stream = self.server.runtime.subscribe("organization", 0)
            ready.set()
            async for batch in stream:
                recorder.events.extend(e for e in batch if e.topic == recorder.topic)

        task = asyncio.create_task(consume())
        await ready.wait()
        await asyncio.sleep(0)  # let the subscription attach before anything is published
        try:
            yield recorder
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task


@pytest.fixture
async def github(server: Server) -> AsyncIterator[GitHub]:  # noqa: F811
    harness = GitHub(server)
    yield harness
    await harness.aclose()


@pytest.fixture
async def acme(server: Server, github: GitHub) -> AsyncIterator[httpx.AsyncClient]:  # noqa: F811
    """alice signed in; acme exists, its installation is registered and its first sync is done."""
    async with server.signed_in("alice") as alice:

        async def synced() -> bool:
            status = await server.runtime.call("github-data", "acme", "status")
            return bool(status["syncStatus"] == "synced")

        await eventually(synced, what="the first sync of acme")
        yield alice


# ------------------------------------------------------------------------------------------ Ray tier


@pytest.fixture
def ray_settings(ray_cluster: None, tmp_path: Path) -> Settings:
    """Settings for hosts of this test's own, in the run's shared Ray (`tests.conftest.ray_cluster`)."""
    return make_settings(
        tmp_path / "ray-github",
        runtime={"backend": "ray", "namespace": f"github-{uuid.uuid4().hex[:8]}", "idle_seconds": 3600},
    )


@pytest.fixture
async def ray_runtime(ray_settings: Settings) -> AsyncIterator[RayRuntime]:
    rt = RayRuntime(ray_settings)
    await rt.start()
    yield rt
    await rt.stop_hosts()
    await rt.close()
