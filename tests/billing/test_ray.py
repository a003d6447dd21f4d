"""On real Ray: checkout → signed webhooks → the organization's billing; concurrent first prompts take
one seat, synced to Stripe once from the organization's host process; a redelivery changes nothing;
a payment method named by id only is read from Stripe by that host process."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import connect

from foundry.config import Settings
from foundry.drivers.stripe.fake import FakeStripe
from foundry.http.app import create_app
from foundry.mock import start_fake_github, start_fake_stripe
from foundry.runtime.ray_backend import RayRuntime
from tests.billing.conftest import ACME_ROCKET, BillingServer, eventually, upgrade_to_team
from tests.billing.test_visibility import SUMMARY_KEYS, assert_no_details, cookie_of
from tests.http.conftest import free_port
from tests.tasks.conftest import WsClient

pytestmark = pytest.mark.ray


@pytest.fixture
async def ray_billing_server(ray_cluster: None, tmp_path: Path) -> AsyncIterator[BillingServer]:
    port = free_port()
    base = Settings(
        data_dir=tmp_path / "data",
        mode="mock",
        port=port,
        runtime={"backend": "ray", "namespace": f"billing-{uuid.uuid4().hex[:8]}", "idle_seconds": 3600},  # type: ignore[arg-type]
        sandbox={"binary": str(tmp_path / "no-sandbox-agent")},  # type: ignore[arg-type]
        stripe={"retry_base_s": 0.05, "retry_cap_s": 0.5, "timeout_s": 2.0},  # type: ignore[arg-type]
    )
    fake_gh, settings = start_fake_github(base)
    fake_stripe, settings = start_fake_stripe(settings)
    runtime = RayRuntime(settings)
    await runtime.start()
    app = create_app(settings, runtime=runtime, fake_github=fake_gh, fake_stripe=fake_stripe)
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(uv.serve())
    await eventually(lambda: asyncio.sleep(0, uv.started), what="uvicorn")
    # Host processes start on first use (seconds on a busy machine): wake them before the timed calls.
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as warm:
        assert (await warm.post("/v1/auth/mock/sign-in", json={"login": "bob"})).status_code == 200
        assert (await warm.get("/v1/app")).status_code == 200
    try:
        yield BillingServer(
            f"http://127.0.0.1:{port}",
            settings,
            runtime,  # type: ignore[arg-type]
            fake_gh,
            None,  # type: ignore[arg-type]
            stripe=fake_stripe,
        )
    finally:
        uv.should_exit = True
        await task
        await runtime.stop_hosts()
        await runtime.close()
        await asyncio.to_thread(FakeStripe.stop, fake_stripe)
        fake_gh.stop()


@pytest.mark.timeout(300)
async def test_on_ray_checkout_webhooks_and_seats_apply_exactly_once(
    ray_billing_server: BillingServer,
) -> None:
    server = ray_billing_server
    async with server.signed_in("carol") as carol, server.signed_in("alice") as alice:
        billing = await upgrade_to_team(server, carol)
        assert billing["paymentMethod"] == "Visa •••• 4242"
        answers = await asyncio.gather(
            *(
                alice.post("/v1/organizations/acme/tasks", json={"repoId": ACME_ROCKET, "prompt": f"p{i}"})
                for i in range(20)
            )
        )
        assert [a.status_code for a in answers] == [201] * 20

        async def synced() -> bool:
            b = await server.billing()
            return b["seats"]["used"] == 1 and b["sync"]["pending"] == 0

        await eventually(synced, timeout=60, what="alice's seat synced")
        # Billing details for the admin only, over HTTP and the realtime topics, on Ray too.
        member_view = (await alice.get("/v1/organizations/acme")).json()["billing"]
        assert set(member_view) == SUMMARY_KEYS
        assert_no_details(member_view)
        assert (await carol.get("/v1/organizations/acme")).json()["billing"]["invoices"] != []
        url = server.url.replace("http://", "ws://") + "/v1/realtime"
        async with (
            connect(url, additional_headers={"Cookie": cookie_of(alice)}) as raw_m,
            connect(url, additional_headers={"Cookie": cookie_of(carol)}) as raw_a,
        ):
            member, admin = WsClient(raw_m), WsClient(raw_a)
            await member.subscribe("organization:acme")
            snapshot = await member.until(lambda f: f.get("event") == "snapshot")
            assert set(snapshot["data"]["billing"]) == SUMMARY_KEYS
            await member.subscribe("billing:acme")
            refused = await member.first_about("billing:acme")
            assert (refused.get("error"), refused["topic"]) == ("forbidden", "billing:acme")
            await admin.subscribe("billing:acme")
            full = await admin.until(lambda f: f.get("event") == "snapshot")
            assert full["data"]["seats"]["used"] == 1
        # Every event the fake sent, delivered again: acknowledged as duplicates, nothing changes.
        before = await server.billing()
        for event in list(server.stripe.events):
            again = await server.post_event(event)
            assert again.status_code == 200
            assert again.json()["duplicate"] is True
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        after = await server.billing()
    assert [q for _, q, _ in server.stripe.quantity_updates] == [1]
    assert after["invoices"] == before["invoices"]
    assert after["seats"] == before["seats"]
    # A card changed in the portal, announced only by the id-only subscription event: the
    # organization's host process reads it from Stripe.
    stripe = server.stripe
    stripe.auto_deliver = False
    start = len(stripe.events)
    pm = stripe.change_payment_method(next(iter(stripe.customers)), "sepa_debit")
    (event,) = [e for e in stripe.events[start:] if e["type"] == "customer.subscription.updated"]
    event["created"] += 50  # clearly after the subscription's earlier states
    assert (await server.post_event(event)).status_code == 200

    async def relabelled() -> bool:
        return (await server.billing())["paymentMethod"] == "SEPA Debit •••• 3000"

    await eventually(relabelled, timeout=60, what="the new payment method read from Stripe")
    assert ("GET", f"/v1/payment_methods/{pm['id']}", None) in stripe.requests
