"""Checkout → Stripe's signed webhooks → the organization's billing, live; and the webhook's guards:
duplicates, reordering, signatures, timestamps, rotation, unknown customers, bad bodies."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from foundry.drivers.stripe.fake import sign_payload
from tests.billing.conftest import OLD_SECRET, BillingServer, eventually, upgrade_to_team
from tests.tasks.conftest import WsClient


async def _audit_kinds(server: BillingServer, org: str = "acme") -> list[str]:
    events = await server.runtime.call("audit-log", org, "list", {"limit": 200})
    return [e["kind"] for e in events]


async def test_checkout_then_webhooks_show_the_team_plan_live_and_in_the_billing_route(
    billing_server: BillingServer,
) -> None:
    async with billing_server.signed_in("carol") as carol:
        cookie = "; ".join(f"{k}={v}" for k, v in carol.cookies.items())
        ws_url = billing_server.url.replace("http://", "ws://") + "/v1/realtime"
        async with connect(ws_url, additional_headers={"Cookie": cookie}, max_queue=None) as raw:
            ws = WsClient(raw)
            await ws.subscribe("billing:acme")  # the admins' topic: the whole billing state
            snapshot = await ws.until(lambda f: f.get("event") == "snapshot")
            assert snapshot["data"]["plan"] == "free"
            await upgrade_to_team(billing_server, carol)
            live = await ws.until(
                lambda f: (
                    f.get("event") == "billingUpdated"
                    and f["data"]["plan"] == "team"
                    and f["data"]["invoices"] != []
                )
            )
        billing = (await carol.get("/v1/organizations/acme/billing")).json()
    assert billing == live["data"] or billing["updatedAt"] >= live["data"]["updatedAt"]
    assert billing["plan"] == "team"
    assert billing["status"] == "active"
    assert billing["paymentMethod"] == "Visa •••• 4242"
    assert billing["seats"]["paid"] == 1
    assert billing["currentPeriodEnd"] is not None
    assert [i["status"] for i in billing["invoices"]] == ["paid"]
    assert billing["invoices"][0]["amountPaid"] == 1500
    kinds = await _audit_kinds(billing_server)
    assert "billing.checkout_started" in kinds
    assert "billing.plan_changed" in kinds


async def test_a_redelivered_event_is_acknowledged_and_applied_once(billing_server: BillingServer) -> None:
    async with billing_server.signed_in("carol") as carol:
        await upgrade_to_team(billing_server, carol)
    stripe = billing_server.stripe
    sub = next(iter(stripe.subscriptions.values()))
    invoice = copy.deepcopy(next(iter(stripe.invoices.values())))
    invoice.update(id="in_redelivered", number="FOUNDRY-R1", status="open", created=invoice["created"] + 5)
    event = stripe.event("invoice.finalized", invoice)
    first = await billing_server.post_event(event)
    again = await billing_server.post_event(event)
    assert first.status_code == again.status_code == 200
    assert first.json() == {"eventId": event["id"], "status": "queued", "duplicate": False}
    assert again.json() == {"eventId": event["id"], "status": "queued", "duplicate": True}

    async def listed() -> bool:
        return any(i["id"] == "in_redelivered" for i in (await billing_server.billing())["invoices"])

    await eventually(listed, what="the redelivered invoice")
    invoices = (await billing_server.billing())["invoices"]
    assert [i["id"] for i in invoices].count("in_redelivered") == 1
    assert invoices[0]["id"] == "in_redelivered"  # newest first
    assert sub["id"]


async def test_reordered_subscription_events_never_roll_state_back(billing_server: BillingServer) -> None:
    async with billing_server.signed_in("carol") as carol:
        await upgrade_to_team(billing_server, carol)
    stripe = billing_server.stripe
    sub = copy.deepcopy(next(iter(stripe.subscriptions.values())))
    base = int(time.time()) + 100
    old = copy.deepcopy(sub)
    old["items"]["data"][0]["quantity"] = 1
    newer = copy.deepcopy(sub)
    newer["items"]["data"][0]["quantity"] = 7
    # `updated` (newer) arrives before the `created` it follows.
    assert (
        await billing_server.post_event(stripe.event("customer.subscription.updated", newer, base + 10))
    ).status_code == 200
    assert (
        await billing_server.post_event(stripe.event("customer.subscription.created", old, base))
    ).status_code == 200

    async def seven() -> bool:
        return (await billing_server.billing())["seats"]["paid"] == 7

    await eventually(seven, what="the newer quantity")
    # A `created` at the same second as the applied `updated` does not override it either.
    await billing_server.post_event(stripe.event("customer.subscription.created", old, base + 10))
    # `deleted`, then a stale `updated` delivered late.
    gone = copy.deepcopy(newer)
    gone["status"] = "canceled"
    await billing_server.post_event(stripe.event("customer.subscription.deleted", gone, base + 20))
    stale = copy.deepcopy(newer)
    stale["items"]["data"][0]["quantity"] = 9
    await billing_server.post_event(stripe.event("customer.subscription.updated", stale, base + 15))
    # And an `updated` stamped after the deletion cannot resurrect a deleted subscription.
    await billing_server.post_event(stripe.event("customer.subscription.updated", stale, base + 30))
    marker = stripe.event("invoice.finalized", {**next(iter(stripe.invoices.values())), "id": "in_marker"})
    await billing_server.post_event(marker)

    async def marker_applied() -> bool:
        return any(i["id"] == "in_marker" for i in (await billing_server.billing())["invoices"])

    await eventually(marker_applied, what="the events before the marker")  # one mailbox: in order
    billing = await billing_server.billing()
    assert billing["status"] == "canceled"
    assert billing["seats"]["paid"] == 7


def _sig(server: BillingServer, payload: bytes, secret: str | None = None, ts: int | None = None) -> str:
    return sign_payload(payload, secret or server.stripe.webhook_secret, ts)


async def _raw(server: BillingServer, payload: bytes, header: str | None) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if header is not None:
        headers["stripe-signature"] = header
    async with server.client() as client:
        return await client.post("/v1/webhooks/stripe", content=payload, headers=headers)


async def test_bad_signatures_stale_timestamps_and_tampered_bodies_are_400_with_a_log_line(
    billing_server: BillingServer, caplog: pytest.LogCaptureFixture
) -> None:
    stripe = billing_server.stripe
    event = stripe.event(
        "invoice.paid", {"id": "in_x", "object": "invoice", "customer": "cus_x", "created": 1}
    )
    payload = json.dumps(event).encode()
    caplog.set_level(logging.WARNING, logger="foundry.webhooks.stripe")
    cases = {
        "wrong secret": _sig(billing_server, payload, secret="whsec_wrong"),
        "stale timestamp": _sig(billing_server, payload, ts=int(time.time()) - 301),
        "garbage header": "not-a-signature",
    }
    for case, header in cases.items():
        response = await _raw(billing_server, payload, header)
        assert response.status_code == 400, (case, response.text)
        assert response.json()["error"] == "invalid_signature", case
    tampered = await _raw(billing_server, payload.replace(b"cus_x", b"cus_y"), _sig(billing_server, payload))
    assert tampered.status_code == 400
    assert tampered.json()["error"] == "invalid_signature"
    missing = await _raw(billing_server, payload, None)
    assert missing.status_code == 400
    assert missing.json() == {"error": "invalid_signature", "detail": "missing Stripe-Signature header"}
    not_json = b"{not json"
    malformed = await _raw(billing_server, not_json, _sig(billing_server, not_json))
    assert malformed.status_code == 400
    assert malformed.json()["error"] == "invalid_json"
    no_id = json.dumps({"type": "invoice.paid"}).encode()
    shapeless = await _raw(billing_server, no_id, _sig(billing_server, no_id))
    assert shapeless.status_code == 400
    assert shapeless.json()["error"] == "invalid_event"
    assert sum("stripe webhook refused" in r.getMessage() for r in caplog.records) >= 7
    huge = b'{"id": "evt_big", "pad": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    too_big = await _raw(billing_server, huge, _sig(billing_server, huge))
    assert too_big.status_code == 413
    assert too_big.json()["error"] == "payload_too_large"


async def test_a_rotated_secret_and_several_v1_values_verify(billing_server: BillingServer) -> None:
    async with billing_server.signed_in("carol") as carol:
        await upgrade_to_team(billing_server, carol)
    stripe = billing_server.stripe
    invoice = {**next(iter(stripe.invoices.values())), "id": "in_rotated"}
    event = stripe.event("invoice.finalized", invoice)
    payload = json.dumps(event).encode()
    old_only = sign_payload(payload, OLD_SECRET)
    assert (await _raw(billing_server, payload, old_only)).status_code == 200
    # During a roll, Stripe signs with both secrets: one header, two v1 values, one of them unknown.
    ts = int(time.time())
    event2 = stripe.event("invoice.finalized", {**invoice, "id": "in_rotated_2"})
    payload2 = json.dumps(event2).encode()
    unknown = sign_payload(payload2, "whsec_unknown", ts).split(",v1=")[1]
    both = f"t={ts},v1={unknown}," + sign_payload(payload2, stripe.webhook_secret, ts).split(",", 1)[1]
    assert (await _raw(billing_server, payload2, both)).status_code == 200

    async def both_listed() -> bool:
        ids = {i["id"] for i in (await billing_server.billing())["invoices"]}
        return {"in_rotated", "in_rotated_2"} <= ids

    await eventually(both_listed, what="both rotated-secret events applied")


async def test_events_of_unknown_customers_are_recorded_and_ignored(billing_server: BillingServer) -> None:
    stripe = billing_server.stripe
    event = stripe.event(
        "invoice.paid", {"id": "in_alien", "object": "invoice", "customer": "cus_nobody", "created": 1}
    )
    response = await billing_server.post_event(event)
    assert response.status_code == 200
    assert response.json() == {"eventId": event["id"], "status": "unrouted"}
    again = await billing_server.post_event(event)
    assert again.status_code == 200
    unhandled = await billing_server.post_event(
        stripe.event("customer.created", {"id": "cus_z", "object": "customer"})
    )
    assert unhandled.json()["status"] == "ignored"
    async with billing_server.signed_in("carol") as carol:
        billing = (await carol.get("/v1/organizations/acme/billing")).json()
    assert billing["invoices"] == []


async def test_checkout_completion_checks_the_session_and_the_caller(billing_server: BillingServer) -> None:
    async with billing_server.signed_in("carol") as carol:
        unknown = await carol.get("/v1/billing/checkout/complete?organizationId=acme&session_id=cs_test_nope")
        assert unknown.status_code == 404
        assert "cs_test_nope" in unknown.json()["detail"]
        started = (await carol.post("/v1/organizations/acme/billing/checkout", json={"plan": "team"})).json()
        # carol is only a member of globex: completing there is refused before anything else.
        elsewhere = await carol.get(
            f"/v1/billing/checkout/complete?organizationId=globex&session_id={started['sessionId']}"
        )
        assert elsewhere.status_code == 403
        unpaid = await carol.get(
            f"/v1/billing/checkout/complete?organizationId=acme&session_id={started['sessionId']}"
        )
        assert unpaid.status_code == 409
        assert "not complete" in unpaid.json()["detail"]
        bad = await carol.get("/v1/billing/checkout/complete?organizationId=acme")
        assert bad.status_code == 422
        assert bad.json()["error"] == "invalid_input"
    # Someone else's session, presented to another organization's actor directly.
    with pytest.raises(Exception, match="does not belong to organization 'globex'"):
        await billing_server.runtime.call(
            "organization",
            "globex",
            "complete_checkout",
            {"userId": "gh-5003", "sessionId": started["sessionId"]},
        )


async def test_cancel_resume_portal_and_back_to_free(billing_server: BillingServer) -> None:
    async with billing_server.signed_in("carol") as carol:
        await upgrade_to_team(billing_server, carol)
        cancelled = await carol.post("/v1/organizations/acme/billing/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "scheduled_cancel"
        assert cancelled.json()["cancelAt"] is not None
        resumed = await carol.post("/v1/organizations/acme/billing/resume")
        assert resumed.json()["status"] == "active"
        assert resumed.json()["cancelAt"] is None
        portal = await carol.post("/v1/organizations/acme/billing/portal")
        assert portal.status_code == 200
        async with httpx.AsyncClient() as browser:
            page = await browser.get(portal.json()["url"])  # the portal stand-in links back
        assert page.status_code == 200
        assert f'href="{billing_server.url}/o/acme/billing"' in page.text
        # The webhooks of all this arrive afterwards and change nothing back.
        await eventually(lambda: _delivered_all(billing_server), what="every fake Stripe event delivered")
        billing = (await carol.get("/v1/organizations/acme/billing")).json()
        assert (billing["plan"], billing["status"]) == ("team", "active")
        # Stripe's `deleted` of the subscription that "free" ends is held back, to arrive late.
        stripe = billing_server.stripe
        stripe.auto_deliver = False
        free = await carol.post("/v1/organizations/acme/billing/plan", json={"plan": "free"})
        assert free.status_code == 200, free.text
        assert free.json()["plan"] == "free"
        assert free.json()["status"] == "active"
        again = await carol.post("/v1/organizations/acme/billing/cancel")
        assert again.status_code == 409
        # Stripe's own `deleted` (and a later `updated`) of that subscription, delivered late and
        # stamped after Foundry's read: the free plan stays.
        sub = next(iter(stripe.subscriptions.values()))
        later = int(time.time()) + 100
        await billing_server.post_event(stripe.event("customer.subscription.deleted", sub, later))
        await billing_server.post_event(
            stripe.event("customer.subscription.updated", {**sub, "status": "active"}, later + 1)
        )
        marker = stripe.event(
            "invoice.finalized", {**next(iter(stripe.invoices.values())), "id": "in_after_free"}
        )
        await billing_server.post_event(marker)

        async def marker_applied() -> bool:
            return any(i["id"] == "in_after_free" for i in (await billing_server.billing())["invoices"])

        await eventually(marker_applied, what="the late events processed")
        billing = (await carol.get("/v1/organizations/acme/billing")).json()
        assert (billing["plan"], billing["status"]) == ("free", "active")
    kinds = await _audit_kinds(billing_server)
    assert kinds.count("billing.plan_changed") >= 4  # team, scheduled_cancel, active, canceled/free


async def _delivered_all(server: BillingServer) -> bool:
    delivered = {e for e, status in server.stripe.delivered if status == 200}
    return all(e["id"] in delivered for e in server.stripe.events)


async def test_signed_events_of_the_wrong_shape_are_400_not_500(billing_server: BillingServer) -> None:
    shapes = [
        [1, 2, 3],
        {"id": "evt_1", "type": "invoice.paid", "created": 1, "data": [1]},
        {"id": "evt_2", "type": "invoice.paid", "created": "yesterday", "data": {"object": {}}},
        {"id": "not-an-event-id", "type": "invoice.paid", "created": 1, "data": {"object": {}}},
    ]
    for shape in shapes:
        payload = json.dumps(shape).encode()
        response = await _raw(billing_server, payload, _sig(billing_server, payload))
        assert response.status_code == 400, (shape, response.text)
        assert response.json()["error"] in ("invalid_json", "invalid_event")
    not_utf8 = b'{"id": "\xff"}'
    response = await _raw(billing_server, not_utf8, _sig(billing_server, not_utf8))
    assert response.status_code == 400
    # A subscription event whose items are not a list is trimmed, never a crash.
    odd = billing_server.stripe.event(
        "customer.subscription.updated",
        {"id": "sub_x", "object": "subscription", "customer": "cus_q", "items": [1]},
    )
    assert (await billing_server.post_event(odd)).status_code == 200


async def test_a_burst_for_one_customer_asks_for_its_organization_once(billing_server: BillingServer) -> None:
    runtime = billing_server.runtime
    real = runtime._call
    lookups: list[str] = []

    async def slow_lookup(role: str, key: str, action: str, body: Any) -> tuple[str, Any]:
        if action == "stripe_customer_organization":
            lookups.append(body["customerId"])
            await asyncio.sleep(0.3)  # every request of the burst arrives while the first one asks
        return await real(role, key, action, body)

    runtime._call = slow_lookup  # type: ignore[method-assign]
    stripe = billing_server.stripe
    events = [
        stripe.event(
            "invoice.paid",
            {"id": f"in_crowd_{i}", "object": "invoice", "customer": "cus_crowd", "created": 1},
        )
        for i in range(20)
    ]
    responses = await asyncio.gather(*(billing_server.post_event(event) for event in events))
    assert [r.json()["status"] for r in responses] == ["unrouted"] * 20
    # One lookup for the burst, where each delivery used to ask (and wait behind the others).
    assert lookups == ["cus_crowd"]


async def test_only_the_latest_checkout_can_be_paid(billing_server: BillingServer) -> None:
    """Each paid checkout starts a subscription of its own: with two tabs open, both could be paid
    and the organization charged twice. Starting a checkout expires the previous one."""
    async with billing_server.signed_in("carol") as carol:
        first = await carol.post("/v1/organizations/acme/billing/checkout", json={"plan": "team"})
        second = await carol.post("/v1/organizations/acme/billing/checkout", json={"plan": "team"})
        assert first.status_code == second.status_code == 200, (first.text, second.text)
        async with httpx.AsyncClient(timeout=10) as browser:
            stale = await browser.get(first.json()["url"])
            paid = await browser.get(second.json()["url"])
    assert stale.status_code == 400, stale.text
    assert paid.status_code == 303, paid.text
    live = [s for s in billing_server.stripe.subscriptions.values() if s["status"] != "canceled"]
    assert len(live) == 1
