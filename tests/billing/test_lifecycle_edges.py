"""Billing across a subscription's life: a second subscription after the free plan, a member who
leaves, two states of one second, who upgraded, and signed events Foundry cannot apply."""

from __future__ import annotations

import copy
import time
from typing import Any

import httpx

from tests.billing.conftest import BillingServer, eventually, upgrade_to_team
from tests.billing.test_seats import _audit, _prompt, _synced


async def test_a_subscription_started_after_the_free_plan_shows_its_own_paid_seats(
    billing_server: BillingServer,
) -> None:
    stripe = billing_server.stripe
    async with billing_server.signed_in("carol") as carol, billing_server.signed_in("alice") as alice:
        await upgrade_to_team(billing_server, carol)
        # Seat changes synced as 1, 2, 1, 2: recent enough to look like late webhooks later.
        assert (await _prompt(alice)).status_code == 201
        assert (await _prompt(carol)).status_code == 201
        await eventually(lambda: _synced(billing_server), what="two seats synced")
        assert (await carol.delete("/v1/organizations/acme/billing/seats/alice")).status_code == 200
        await eventually(lambda: _synced(billing_server), what="the release synced")
        assert (await _prompt(alice)).status_code == 201
        await eventually(lambda: _synced(billing_server), what="two seats again")
        assert (
            await carol.post("/v1/organizations/acme/billing/plan", json={"plan": "free"})
        ).status_code == 200
        free = (await carol.get("/v1/organizations/acme/billing")).json()
        # The free plan renews nothing: no date of the subscription that ended.
        assert (free["plan"], free["currentPeriodEnd"], free["cancelAt"]) == ("free", None, None)
        assert (await carol.delete("/v1/organizations/acme/billing/seats/CAROL")).json() == {
            "released": "carol",
            "seatsUsed": 1,
        }
        billing = await upgrade_to_team(billing_server, carol)
    newest = max(stripe.subscriptions.values(), key=lambda s: (s["created"], s["id"]))
    assert stripe.quantity_of(newest["id"]) == 1
    assert billing["seats"]["paid"] == 1
    await eventually(lambda: _synced(billing_server), what="nothing left to sync")
    assert (await billing_server.billing())["seats"]["paid"] == stripe.quantity_of(newest["id"]) == 1


async def test_seats_taken_while_checkout_was_open_reach_the_new_subscription(
    billing_server: BillingServer,
) -> None:
    stripe = billing_server.stripe
    async with billing_server.signed_in("carol") as carol, billing_server.signed_in("alice") as alice:
        await upgrade_to_team(billing_server, carol)
        assert (
            await carol.post("/v1/organizations/acme/billing/plan", json={"plan": "free"})
        ).status_code == 200
        assert (await _prompt(carol)).status_code == 201  # the free plan's one seat
        started = await carol.post("/v1/organizations/acme/billing/checkout", json={"plan": "team"})
        assert started.status_code == 200
        # The free seat is taken: alice gets hers once the new subscription is in force...
        assert (await _prompt(alice)).status_code == 402
        async with httpx.AsyncClient(timeout=10) as browser:
            assert (await browser.get(started.json()["url"])).status_code == 303

        async def team() -> bool:
            return (await billing_server.billing())["plan"] == "team"

        await eventually(team, what="the second subscription")
        assert (await _prompt(alice)).status_code == 201
        await eventually(lambda: _synced(billing_server), what="the seat synced")
    newest = max(stripe.subscriptions.values(), key=lambda s: (s["created"], s["id"]))
    assert stripe.quantity_of(newest["id"]) == 2


async def test_a_member_who_leaves_the_organization_frees_their_seat(billing_server: BillingServer) -> None:
    stripe = billing_server.stripe
    async with billing_server.signed_in("carol") as carol, billing_server.signed_in("alice") as alice:
        await upgrade_to_team(billing_server, carol)
        assert (await _prompt(alice)).status_code == 201
        assert (await _prompt(carol)).status_code == 201
        await eventually(lambda: _synced(billing_server), what="two seats synced")
    sub_id = next(iter(stripe.subscriptions))
    assert stripe.quantity_of(sub_id) == 2
    billing_server.github.remove_member("acme", "alice")
    await billing_server.runtime.send("github-data", "acme", "sync", {"reason": "test"})

    async def freed() -> bool:
        seats = (await billing_server.billing())["seats"]
        return [m["login"] for m in seats["members"]] == ["carol"]

    await eventually(freed, what="alice's seat freed")
    await eventually(lambda: _synced(billing_server), what="the release synced")
    assert stripe.quantity_of(sub_id) == 1

    async def audited() -> list[dict[str, Any]]:
        released = await _audit(billing_server, "billing.seat_released")
        return [e for e in released if e["payload"]["login"] == "alice"]  # type: ignore[index]

    await eventually(lambda: _nonempty(audited()), what="the release audited")
    [entry] = await audited()
    assert entry["actorUserId"] is None
    assert entry["payload"]["reason"] == "left the organization"


async def _nonempty(result: Any) -> bool:
    return bool(await result)


async def test_a_late_state_of_the_same_second_is_settled_by_asking_stripe(
    billing_server: BillingServer,
) -> None:
    """Cancel and resume within one second; the cancel's webhook comes last. Which state is newer
    cannot be told from the second: Stripe's subscription as it is now decides."""
    stripe = billing_server.stripe
    async with billing_server.signed_in("carol") as carol:
        await upgrade_to_team(billing_server, carol)
        stripe.auto_deliver = False
        sub = copy.deepcopy(next(iter(stripe.subscriptions.values())))
        assert (await carol.post("/v1/organizations/acme/billing/cancel")).json()[
            "status"
        ] == "scheduled_cancel"
        resumed = (await carol.post("/v1/organizations/acme/billing/resume")).json()
        assert (resumed["status"], resumed["cancelAt"]) == ("active", None)
    # The cancel's state, stamped with the second of the resume Foundry applied.
    cancelled = {**sub, "cancel_at_period_end": True, "cancel_at": int(time.time()) + 30 * 86400}
    row_second = await _stored_second(billing_server)
    answer = await billing_server.post_event(
        stripe.event("customer.subscription.updated", cancelled, row_second)
    )
    assert answer.status_code == 200
    await eventually(lambda: _stripe_events_applied(billing_server), what="the late event handled")
    billing = await billing_server.billing()
    assert (billing["status"], billing["cancelAt"]) == ("active", None)
    assert stripe.subscriptions[sub["id"]]["cancel_at_period_end"] is False


async def _stored_second(server: BillingServer) -> int:
    """The second of the subscription state in force (what a same-second event is compared with)."""
    from actors.organization.billing_state import load_billing

    host = server.runtime.host("organization", 0)  # type: ignore[attr-defined]
    instance = await host._acquire("acme")
    try:
        async with instance.engine.connect() as conn:
            row = await load_billing(conn)
    finally:
        host._release(instance)
    assert row is not None
    return int(row.sub_state_created)


async def _stripe_events_applied(server: BillingServer) -> bool:
    stats: dict[str, Any] = await server.runtime.call("organization", "acme", "stripe_event_stats")
    return bool(stats["byOutcome"].get("ambiguous"))


async def test_an_upgrade_through_checkout_names_the_admin_who_started_it(
    billing_server: BillingServer,
) -> None:
    async with billing_server.signed_in("carol") as carol:
        await upgrade_to_team(billing_server, carol)

    async def upgraded() -> list[dict[str, Any]]:
        return [
            e
            for e in await _audit(billing_server, "billing.plan_changed")
            if e["payload"]["to"] == {"plan": "team", "status": "active"}  # type: ignore[index]
        ]

    await eventually(lambda: _nonempty(upgraded()), what="the upgrade audited")
    assert [e["actorUserId"] for e in await upgraded()] == ["gh-5003"]


async def test_a_signed_event_with_text_where_a_number_goes_is_refused_before_it_is_acknowledged(
    billing_server: BillingServer,
) -> None:
    stripe = billing_server.stripe
    async with billing_server.signed_in("carol") as carol:
        await upgrade_to_team(billing_server, carol)
    sub = copy.deepcopy(next(iter(stripe.subscriptions.values())))
    invoice = copy.deepcopy(next(iter(stripe.invoices.values())))
    cases = [
        ("invoice.paid", {**invoice, "id": "in_lots", "amount_due": "lots"}, "data.object.amount_due"),
        ("customer.subscription.updated", {**sub, "created": "yesterday"}, "data.object.created"),
        ("customer.subscription.updated", {**sub, "cancel_at": True}, "data.object.cancel_at"),
        ("invoice.paid", {**invoice, "id": "in_" + "x" * 300}, "data.object.id"),
        ("invoice.paid", {**invoice, "id": "in_cus", "customer": "cus_" + "x" * 300}, "data.object.customer"),
    ]
    bad_sub = copy.deepcopy(sub)
    bad_sub["items"]["data"][0]["quantity"] = "2"
    cases.append(("customer.subscription.updated", bad_sub, "data.object.items.data[0].quantity"))
    for kind, obj, field in cases:
        answer = await billing_server.post_event(stripe.event(kind, obj))
        assert answer.status_code == 400, (field, answer.text)
        assert answer.json()["error"] == "invalid_event"
        assert field in answer.json()["detail"]
    # Nothing of them was applied, and the organization takes the next good event.
    good = stripe.event("invoice.finalized", {**invoice, "id": "in_after_bad"})
    assert (await billing_server.post_event(good)).status_code == 200

    async def listed() -> bool:
        return any(i["id"] == "in_after_bad" for i in (await billing_server.billing())["invoices"])

    await eventually(listed, what="the good event applied")
    assert not any(i["id"] == "in_lots" for i in (await billing_server.billing())["invoices"])


async def test_a_new_payment_method_is_in_the_audit_log(billing_server: BillingServer) -> None:
    async with billing_server.signed_in("carol") as carol:
        await upgrade_to_team(billing_server, carol)

    async def changed() -> list[dict[str, Any]]:
        return await _audit(billing_server, "billing.payment_method_changed")

    await eventually(lambda: _nonempty(changed()), what="the payment method audited")
    assert [(e["payload"]["from"], e["payload"]["to"]) for e in await changed()] == [  # type: ignore[index]
        (None, "Visa •••• 4242")
    ]


async def test_a_member_learns_before_writing_a_prompt_that_it_would_be_refused(
    billing_server: BillingServer,
) -> None:
    async with billing_server.signed_in("carol") as carol, billing_server.signed_in("alice") as alice:
        assert (await alice.get("/v1/organizations/acme/billing/seat")).json() == {
            "held": False,
            "refusal": None,
        }
        assert (await _prompt(alice)).status_code == 201  # the free plan's one seat
        assert (await alice.get("/v1/organizations/acme/billing/seat")).json() == {
            "held": True,
            "refusal": None,
        }
        standing = (await carol.get("/v1/organizations/acme/billing/seat")).json()
        assert standing["held"] is False
        assert standing["refusal"]["error"] == "seat_limit"
        # What the prompt itself would answer, word for word; asking took no seat.
        refused = await _prompt(carol)
        assert refused.status_code == 402
        assert refused.json()["detail"] == standing["refusal"]["detail"]
        assert [m["login"] for m in (await billing_server.billing())["seats"]["members"]] == ["alice"]
        assert (await carol.delete("/v1/organizations/acme/billing/seats/alice")).status_code == 200
        assert (await carol.get("/v1/organizations/acme/billing/seat")).json() == {
            "held": False,
            "refusal": None,
        }
    async with billing_server.signed_in("bob") as bob:
        assert (await bob.get("/v1/organizations/acme/billing/seat")).status_code == 404


async def test_an_event_that_fails_where_it_is_applied_is_recorded_failed_not_lost(
    billing_server: BillingServer,
) -> None:
    """Past the ingest's checks (sent to the organization directly, as a future Stripe field might
    slip through): the failure is recorded under the event id, with nothing of it applied."""
    stripe = billing_server.stripe
    async with billing_server.signed_in("carol") as carol:
        await upgrade_to_team(billing_server, carol)
    invoice = copy.deepcopy(next(iter(stripe.invoices.values())))
    broken = {
        "eventId": "evt_broken",
        "type": "invoice.paid",
        "created": 1,
        "object": {**invoice, "amount_due": "lots"},
    }
    result = await billing_server.runtime.send("organization", "acme", "stripe_event", broken, wait=True)
    assert result == {"eventId": "evt_broken", "outcome": "failed"}
    stats = await billing_server.runtime.call("organization", "acme", "stripe_event_stats")
    assert stats["byOutcome"]["failed"] == 1
    # A redelivery is a duplicate of the recorded failure, and the organization goes on.
    again = await billing_server.runtime.send("organization", "acme", "stripe_event", broken, wait=True)
    assert again["outcome"] == "duplicate"
    assert (await billing_server.billing())["plan"] == "team"
