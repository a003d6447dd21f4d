"""The payment method shown in billing follows Stripe's webhooks, which name payment methods by id:
a card changed in the Billing Portal, an id-only subscription event (read from Stripe, retried while
Stripe is down, never in the webhook's acknowledgement), out-of-order and duplicate customer updates,
detached methods (fallback to the next default, or none) and unknown customers."""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from actors.organization.billing_payment import payment_method_label
from foundry.runtime.inprocess import InProcessRuntime
from foundry.services import build_services
from tests.billing.conftest import BillingServer, eventually, upgrade_to_team
from tests.tasks.conftest import WsClient

VISA = "Visa •••• 4242"
MASTERCARD = "Mastercard •••• 4444"
AMEX = "American Express •••• 8431"
SEPA = "SEPA Debit •••• 3000"


async def _label(server: BillingServer) -> str | None:
    label = (await server.billing())["paymentMethod"]
    return str(label) if label is not None else None


async def _until_label(server: BillingServer, expected: str | None, timeout: float = 15.0) -> None:
    async def shown() -> bool:
        return await _label(server) == expected

    await eventually(shown, timeout=timeout, what=f"payment method {expected!r}")


async def _processed(server: BillingServer) -> None:
    """Every event posted so far is applied (the organization's mailbox runs them in order)."""
    stripe = server.stripe
    marker = stripe.event("invoice.finalized", {**next(iter(stripe.invoices.values())), "id": "in_marker"})
    marker["data"]["object"]["id"] = f"in_marker_{marker['id']}"
    assert (await server.post_event(marker)).status_code == 200

    async def applied() -> bool:
        ids = {i["id"] for i in (await server.billing())["invoices"]}
        return f"in_marker_{marker['id']}" in ids

    await eventually(applied, what="the marker event")


def _held(server: BillingServer, start: int, event_type: str) -> list[dict[str, Any]]:
    return [e for e in server.stripe.events[start:] if e["type"] == event_type]


def _customer_id(server: BillingServer) -> str:
    return str(next(iter(server.stripe.customers)))


async def test_a_card_changed_in_the_billing_portal_shows_live_and_in_the_billing_route(
    billing_server: BillingServer,
) -> None:
    async with billing_server.signed_in("carol") as carol:
        cookie = "; ".join(f"{k}={v}" for k, v in carol.cookies.items())
        ws_url = billing_server.url.replace("http://", "ws://") + "/v1/realtime"
        async with connect(ws_url, additional_headers={"Cookie": cookie}, max_queue=None) as raw:
            ws = WsClient(raw)
            await ws.subscribe("billing:acme")
            await ws.until(lambda f: f.get("event") == "snapshot")
            await upgrade_to_team(billing_server, carol)
            await _until_label(billing_server, VISA)
            portal = await carol.post("/v1/organizations/acme/billing/portal")
            assert portal.status_code == 200, portal.text
            async with httpx.AsyncClient(timeout=10) as browser:
                page = await browser.get(portal.json()["url"])
                assert page.status_code == 200
                assert f'href="{billing_server.url}/o/acme/billing"' in page.text
                changed = await browser.post(portal.json()["url"], data={"add": "mastercard"})
            assert changed.status_code == 303
            assert changed.headers["location"] == f"{billing_server.url}/o/acme/billing"
            live = await ws.until(
                lambda f: f.get("event") == "billingUpdated" and f["data"]["paymentMethod"] == MASTERCARD
            )
        billing = (await carol.get("/v1/organizations/acme/billing")).json()
        snapshot = (await carol.get("/v1/organizations/acme")).json()
    assert billing["paymentMethod"] == MASTERCARD
    assert snapshot["billing"]["paymentMethod"] == MASTERCARD
    assert live["data"]["plan"] == "team"
    # The webhooks named the new card by id only, as Stripe's do.
    sub_events = [e for e in billing_server.stripe.events if e["type"] == "customer.subscription.updated"]
    assert isinstance(sub_events[-1]["data"]["object"]["default_payment_method"], str)


async def test_an_id_only_subscription_event_gets_its_label_from_stripe(
    billing_server: BillingServer,
) -> None:
    async with billing_server.signed_in("carol") as carol:
        await upgrade_to_team(billing_server, carol)
    await _until_label(billing_server, VISA)
    stripe = billing_server.stripe
    stripe.auto_deliver = False
    start = len(stripe.events)
    pm = stripe.change_payment_method(_customer_id(billing_server), "sepa_debit")
    (event,) = _held(billing_server, start, "customer.subscription.updated")
    assert event["data"]["object"]["default_payment_method"] == pm["id"]
    event["created"] += 50  # clearly after checkout's states (see the same-second case below)
    response = await billing_server.post_event(event)  # only this one: no attached, no customer.updated
    assert response.status_code == 200
    await _until_label(billing_server, SEPA)
    assert ("GET", f"/v1/payment_methods/{pm['id']}", None) in stripe.requests
    # Two subscription states of one second naming other methods, delivered in the wrong order:
    # Stripe is asked which one holds (the SEPA Debit), rather than the last delivered winning.
    visa_id = next(p for p in stripe.payment_methods if p != pm["id"])
    now = int(time.time()) + 100
    sub = next(iter(stripe.subscriptions.values()))
    for default in (pm["id"], visa_id):
        state = stripe.event("customer.subscription.updated", {**sub, "default_payment_method": default}, now)
        assert (await billing_server.post_event(state)).status_code == 200
    await _processed(billing_server)
    await _until_label(billing_server, SEPA)
    sub_reads = [r for r in stripe.requests if r[:2] == ("GET", f"/v1/subscriptions/{sub['id']}")]
    assert len(sub_reads) >= 1


async def test_stripe_down_during_the_read_is_retried_while_the_webhook_is_acknowledged_at_once(
    billing_server: BillingServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with billing_server.signed_in("carol") as carol:
        await upgrade_to_team(billing_server, carol)
    await _until_label(billing_server, VISA)
    stripe = billing_server.stripe
    stripe.auto_deliver = False
    start = len(stripe.events)
    pm = stripe.change_payment_method(_customer_id(billing_server), "mastercard")
    (event,) = _held(billing_server, start, "customer.subscription.updated")
    event["created"] += 50  # clearly after checkout's states
    caplog.set_level(logging.WARNING, logger="actors.organization.billing_payment")
    # The first read hangs past the client's timeout (2 s), the next two fail with 500.
    stripe.hang_next(1, 3.0)
    stripe.fail_next(2)
    began = time.monotonic()
    response = await billing_server.post_event(event)
    acked_in = time.monotonic() - began
    assert response.status_code == 200
    assert response.json()["status"] == "queued"
    assert acked_in < 1.0, f"the webhook waited {acked_in:.2f}s for Stripe"
    # Meanwhile the card Stripe last confirmed stays shown (never none).
    assert await _label(billing_server) == VISA
    await _until_label(billing_server, MASTERCARD, timeout=30)
    reads = [r for r in stripe.requests if r[:2] == ("GET", f"/v1/payment_methods/{pm['id']}")]
    assert len(reads) >= 4  # one hung, two refused, one answered
    assert any("retry in" in r.getMessage() and pm["id"] in r.getMessage() for r in caplog.records)


async def test_a_read_pending_across_a_restart_is_done_after_it(billing_server: BillingServer) -> None:
    async with billing_server.signed_in("carol") as carol:
        await upgrade_to_team(billing_server, carol)
    await _until_label(billing_server, VISA)
    stripe = billing_server.stripe
    stripe.auto_deliver = False
    start = len(stripe.events)
    pm = stripe.change_payment_method(_customer_id(billing_server), "amex")
    (event,) = _held(billing_server, start, "customer.subscription.updated")
    event["created"] += 50  # clearly after checkout's states
    stripe.fail_next(10_000, status=503)  # Stripe stays down until the restart
    assert (await billing_server.post_event(event)).status_code == 200
    read = ("GET", f"/v1/payment_methods/{pm['id']}", None)

    async def attempted() -> bool:
        return read in stripe.requests

    await eventually(attempted, what="a failed read")
    await billing_server.runtime.close()  # the process stops with the read still to do
    with stripe._lock:
        stripe._failures.clear()
    restarted = InProcessRuntime(
        billing_server.settings.data_dir, build_services(billing_server.settings), idle_seconds=3600
    )
    try:

        async def shown() -> bool:
            billing = await restarted.call("organization", "acme", "billing")
            return bool(billing["paymentMethod"] == AMEX)

        await eventually(shown, timeout=30, what="the label read after the restart")
    finally:
        await restarted.close()


async def test_older_customer_updates_delivered_late_never_roll_back_and_duplicates_change_nothing(
    billing_server: BillingServer,
) -> None:
    async with billing_server.signed_in("carol") as carol:
        await upgrade_to_team(billing_server, carol)
    await _until_label(billing_server, VISA)
    stripe = billing_server.stripe
    stripe.auto_deliver = False
    customer_id = _customer_id(billing_server)
    older = stripe.add_payment_method(customer_id, "mastercard")
    newer = stripe.add_payment_method(customer_id, "amex")
    sub = copy.deepcopy(next(iter(stripe.subscriptions.values())))
    customer = copy.deepcopy(stripe.customers[customer_id])
    base = int(time.time()) + 100
    # The subscription stops naming a payment method: the customer's invoice default applies.
    no_default = stripe.event("customer.subscription.updated", {**sub, "default_payment_method": None}, base)
    assert (await billing_server.post_event(no_default)).status_code == 200
    to_newer = stripe.event(
        "customer.updated",
        {
            **customer,
            "invoice_settings": {**customer["invoice_settings"], "default_payment_method": newer["id"]},
        },
        base + 10,
    )
    to_older = stripe.event(
        "customer.updated",
        {
            **customer,
            "invoice_settings": {**customer["invoice_settings"], "default_payment_method": older["id"]},
        },
        base + 5,
    )
    assert (await billing_server.post_event(to_newer)).status_code == 200
    await _until_label(billing_server, AMEX)
    late = await billing_server.post_event(to_older)  # made before to_newer, delivered after it
    assert late.status_code == 200
    await _processed(billing_server)
    assert await _label(billing_server) == AMEX
    reads_before = len(stripe.requests)
    again = await billing_server.post_event(to_newer)
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    await _processed(billing_server)
    assert await _label(billing_server) == AMEX
    assert len(stripe.requests) == reads_before
    stats = await billing_server.runtime.call("organization", "acme", "stripe_event_stats", {})
    assert stats["appliedTwice"] == 0
    assert stats["byOutcome"].get("stale") == 1  # the late customer.updated
    # Two changes in one second (Stripe's times are whole seconds), delivered in the wrong order:
    # which came last is unknown from the events, so Stripe is asked; the customer's default there
    # (the Mastercard) is shown, not the last delivered one.
    stripe.customers[customer_id]["invoice_settings"]["default_payment_method"] = older["id"]
    to_older_now = copy.deepcopy(to_older)
    to_older_now.update(id=f"{to_older['id']}b", created=base + 20)
    to_newer_now = copy.deepcopy(to_newer)
    to_newer_now.update(id=f"{to_newer['id']}b", created=base + 20)
    assert (await billing_server.post_event(to_older_now)).status_code == 200
    assert (await billing_server.post_event(to_newer_now)).status_code == 200
    await _until_label(billing_server, MASTERCARD)
    assert ("GET", f"/v1/customers/{customer_id}", None) in stripe.requests


async def test_detaching_the_card_in_use_falls_back_to_the_customer_default_then_shows_none(
    billing_server: BillingServer,
) -> None:
    async with billing_server.signed_in("carol") as carol:
        await upgrade_to_team(billing_server, carol)
    await _until_label(billing_server, VISA)
    stripe = billing_server.stripe
    customer_id = _customer_id(billing_server)
    amex = stripe.change_payment_method(customer_id, "amex")  # customer's and subscription's default
    await _until_label(billing_server, AMEX)
    mastercard = stripe.add_payment_method(customer_id, "mastercard")
    sub_id = next(iter(stripe.subscriptions))
    async with httpx.AsyncClient(base_url=stripe.base_url, timeout=10) as api:
        made = await api.post(
            f"/v1/subscriptions/{sub_id}",
            data={"default_payment_method": mastercard["id"]},
            headers={"authorization": f"Bearer {stripe.api_key}"},
        )
    assert made.status_code == 200, made.text
    await _until_label(billing_server, MASTERCARD)  # the subscription's own default wins
    stripe.detach_payment_method(mastercard["id"])  # still the subscription's default at Stripe
    await _until_label(billing_server, AMEX)
    stripe.detach_payment_method(amex["id"])
    await _until_label(billing_server, None)
    # A late `attached` of a detached card does not bring it back.
    late = stripe.event(
        "payment_method.attached", {**stripe.payment_methods[amex["id"]], "customer": customer_id}
    )
    assert (await billing_server.post_event(late)).status_code == 200
    await _processed(billing_server)
    assert await _label(billing_server) is None


async def test_payment_method_events_of_unknown_customers_are_acknowledged_and_ignored(
    billing_server: BillingServer,
) -> None:
    async with billing_server.signed_in("carol") as carol:
        await upgrade_to_team(billing_server, carol)
    await _until_label(billing_server, VISA)
    stripe = billing_server.stripe
    pm = copy.deepcopy(next(iter(stripe.payment_methods.values())))
    alien_customer = {
        **next(iter(stripe.customers.values())),
        "id": "cus_nobody",
        "invoice_settings": {"default_payment_method": pm["id"]},
    }
    events = [
        stripe.event("customer.updated", alien_customer),
        stripe.event("payment_method.attached", {**pm, "id": "pm_alien", "customer": "cus_nobody"}),
        stripe.event(
            "payment_method.detached", {**pm, "customer": None}, previous={"customer": "cus_nobody"}
        ),
    ]
    for event in events:
        response = await billing_server.post_event(event)
        assert response.status_code == 200, response.text
        assert response.json() == {"eventId": event["id"], "status": "unrouted"}
    await _processed(billing_server)
    assert await _label(billing_server) == VISA


@pytest.mark.parametrize(
    ("pm", "label"),
    [
        ({"type": "card", "card": {"brand": "visa", "last4": "4242"}}, "Visa •••• 4242"),
        ({"type": "card", "card": {"brand": "amex", "last4": "8431"}}, "American Express •••• 8431"),
        (
            {"type": "card", "card": {"brand": "cartes_bancaires", "last4": "1001"}},
            "Cartes Bancaires •••• 1001",
        ),
        ({"type": "card", "card": {"brand": "new_brand", "last4": "0000"}}, "New Brand •••• 0000"),
        ({"type": "sepa_debit", "sepa_debit": {"country": "DE", "last4": "3000"}}, "SEPA Debit •••• 3000"),
        (
            {
                "type": "us_bank_account",
                "us_bank_account": {"bank_name": "STRIPE TEST BANK", "last4": "6789"},
            },
            "STRIPE TEST BANK •••• 6789",
        ),
        ({"type": "bacs_debit", "bacs_debit": {"last4": "2345"}}, "Bacs Direct Debit •••• 2345"),
        ({"type": "link", "link": {"email": "jenny@example.com"}}, "Link"),
        ({"type": "paypal", "paypal": {"payer_email": "jenny@example.com"}}, "PayPal"),
        ({"type": "klarna", "klarna": {}}, "Klarna"),
        ("pm_only_an_id", None),
    ],
)
def test_payment_method_labels_name_the_type_and_its_last_four(pm: Any, label: str | None) -> None:
    # The fake's objects are Stripe's fixture with these details; others come from Stripe's API shapes.
    assert payment_method_label(pm) == label
