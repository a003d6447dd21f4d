"""Billing tier: a real uvicorn Foundry (in-process runtime), the fake GitHub, and the fake Stripe
that the real ``stripe`` SDK talks to and that sends real signed webhooks to Foundry.

Sandboxes point at a binary that does not exist: tasks are created (the part billing gates) and
then fail to provision at once, so tests can create many without starting sandbox-agent fleets.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr

from foundry.clock import FakeClock
from foundry.config import Settings
from foundry.drivers.stripe.fake import FakeStripe, sign_payload
from foundry.http.app import create_app
from foundry.mock import start_fake_github, start_fake_stripe
from foundry.runtime.inprocess import InProcessRuntime
from foundry.services import build_services
from tests.http.conftest import Server, free_port
from tests.http.conftest import server as server

ACME_ROCKET = "910001"
#: A second configured webhook secret: the one being rotated out.
OLD_SECRET = "whsec_rotated_out"


@dataclass
class BillingServer(Server):
    stripe: FakeStripe = field(default=None)  # type: ignore[assignment]

    async def billing(self, org: str = "acme") -> dict[str, Any]:
        """The organization's whole billing state (what admins see), straight from the actor."""
        billing: dict[str, Any] = await self.runtime.call("organization", org, "billing")
        return billing

    async def post_event(
        self, event: dict[str, Any], *, secret: str | None = None, ts: int | None = None
    ) -> httpx.Response:
        payload = json.dumps(event).encode()
        header = sign_payload(payload, secret or self.stripe.webhook_secret, ts)
        async with self.client() as client:
            return await client.post(
                "/v1/webhooks/stripe",
                content=payload,
                headers={"content-type": "application/json", "stripe-signature": header},
            )


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 15.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def billing_settings(tmp_path: Path, port: int, **stripe: Any) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        mode="mock",
        port=port,
        runtime={"backend": "inprocess"},  # type: ignore[arg-type]
        sandbox={"binary": str(tmp_path / "no-sandbox-agent")},  # type: ignore[arg-type]
        stripe={"retry_base_s": 0.05, "retry_cap_s": 0.5, "timeout_s": 2.0, **stripe},  # type: ignore[arg-type]
    )


@pytest.fixture
async def billing_server(tmp_path: Path) -> AsyncIterator[BillingServer]:
    port = free_port()
    fake_gh, settings = start_fake_github(billing_settings(tmp_path, port))
    fake_stripe, settings = start_fake_stripe(settings)
    secrets = [*settings.stripe.webhook_secrets, SecretStr(OLD_SECRET)]
    settings = settings.model_copy(
        update={"stripe": settings.stripe.model_copy(update={"webhook_secrets": secrets})}
    )
    services = build_services(settings)
    services.clock = FakeClock(int(time.time() * 1000))
    runtime = InProcessRuntime(settings.data_dir, services, idle_seconds=3600)
    app = create_app(settings, runtime=runtime, fake_github=fake_gh, fake_stripe=fake_stripe)
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(uv.serve())
    for _ in range(200):
        if uv.started:
            break
        await asyncio.sleep(0.02)
    assert uv.started
    try:
        yield BillingServer(
            f"http://127.0.0.1:{port}", settings, runtime, fake_gh, services.clock, stripe=fake_stripe
        )  # type: ignore[arg-type]
    finally:
        uv.should_exit = True
        await task
        await runtime.close()
        fake_stripe.stop()
        fake_gh.stop()


async def upgrade_to_team(
    server: BillingServer, admin: httpx.AsyncClient, org: str = "acme"
) -> dict[str, Any]:
    """Checkout → the hosted page → Stripe's redirect back → the billing page; returns billing."""
    started = await admin.post(f"/v1/organizations/{org}/billing/checkout", json={"plan": "team"})
    assert started.status_code == 200, started.text
    async with httpx.AsyncClient(timeout=10) as browser:
        paid = await browser.get(started.json()["url"])  # the hosted checkout stand-in
    assert paid.status_code == 303
    back = await admin.get(paid.headers["location"].removeprefix(server.url))
    assert back.status_code == 302, back.text
    assert back.headers["location"] == f"/o/{org}/billing?checkout=success"

    async def active() -> bool:
        b = await server.billing(org)
        return b["plan"] == "team" and b["status"] == "active" and len(b["invoices"]) >= 1

    await eventually(active, what="team plan active with its first invoice")
    return await server.billing(org)
