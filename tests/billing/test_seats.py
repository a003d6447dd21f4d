"""Seats: taken once on a member's first prompt, synced to Stripe once per change (durably, through
Stripe outages), and the plan's limits refusing new prompts with 402 bodies that say what to do."""

from __future__ import annotations

import asyncio
import copy
import time

import httpx

from foundry.clock import FakeClock
from foundry.runtime.inprocess import InProcessRuntime
from foundry.services import build_services
from tests.billing.conftest import ACME_ROCKET, BillingServer, eventually, upgrade_to_team

DAY_MS = 86_400_000


async def _prompt(client: httpx.AsyncClient, text: str = "Add a launch checklist") -> httpx.Response:
    return await client.post("/v1/organizations/acme/tasks", json={"repoId": ACME_ROCKET, "prompt": text})


async def _audit(server: BillingServer, kind: str) -> list[dict[str, object]]:
    events: list[dict[str, object]] = await server.runtime.call("audit-log", "acme", "list", {"kind": kind})
    return events


async def _synced(server: BillingServer) -> bool:
    return (await server.billing())["sync"]["pending"] == 0


async def test_twenty_concurrent_first_prompts_take_one_seat_and_one_stripe_call(
    billing_server: BillingServer,
) -> None:
    async with billing_server.signed_in("carol") as carol, billing_server.signed_in("alice") as alice:
        await upgrade_to_team(billing_server, carol)
        answers = await asyncio.gather(*(_prompt(alice, f"task {i}") for i in range(20)))
        assert [a.status_code for a in answers] == [201] * 20, [
            a.text for a in answers if a.status_code != 201
        ]
        await eventually(lambda: _synced(billing_server), what="the seat change synced")
        billing = await billing_server.billing()
        assert billing["seats"]["used"] == 1
        assert [m["login"] for m in billing["seats"]["members"]] == ["alice"]
        assert len(await _audit(billing_server, "billing.seat_taken")) == 1
        # carol's first prompt is the second seat: one more call, quantity 2.
        assert (await _prompt(carol)).status_code == 201
        await eventually(lambda: _synced(billing_server), what="the second seat change synced")
    updates = billing_server.stripe.quantity_updates
    assert [q for _, q, _ in updates] == [1, 2]
    keys = [k for _, _, k in updates]
    assert len(set(keys)) == 2
    assert all(k is not None and k.startswith("acme:seat-change:") for k in keys)
    billing = await billing_server.billing()
    assert billing["seats"]["paid"] == 2
    assert billing["seats"]["used"] == 2


async def test_stripe_down_keeps_the_prompt_and_syncs_the_seat_later_exactly_once(
    billing_server: BillingServer,
) -> None:
    stripe = billing_server.stripe
    async with billing_server.signed_in("carol") as carol, billing_server.signed_in("alice") as alice:
        await upgrade_to_team(billing_server, carol)
        stripe.fail_next(3, status=500)
        stripe.hang_next(1, 3.0)  # past the driver's 2 s timeout: an outcome Foundry never saw
        created = await _prompt(alice)
        assert created.status_code == 201  # the prompt is not held hostage by Stripe
        task_id = created.json()["taskId"]

        async def retried() -> bool:
            return (await billing_server.billing())["sync"]["lastError"] is not None

        await eventually(retried, what="a failed attempt recorded")
        await eventually(
            lambda: _synced(billing_server), timeout=30, what="the seat change synced after the outage"
        )
        summary = await billing_server.runtime.call(
            "organization", "acme", "task_summary", {"taskId": task_id}
        )
        assert summary["taskId"] == task_id
    attempts = [r for r in stripe.requests if r[1].startswith("/v1/subscription_items/")]
    assert len(attempts) >= 5
    assert len({k for _, _, k in attempts}) == 1  # every retry with the seat change's own key
    assert [q for _, q, _ in stripe.quantity_updates] == [1]
    assert (await billing_server.billing())["sync"] == {"pending": 0, "lastError": None}


async def test_the_free_plan_refuses_a_second_member_until_a_seat_is_released(
    billing_server: BillingServer,
) -> None:
    async with billing_server.signed_in("carol") as carol, billing_server.signed_in("alice") as alice:
        first = await _prompt(alice)
        assert first.status_code == 201
        refused = await _prompt(carol)
        assert refused.status_code == 402
        body = refused.json()
        assert body["error"] == "seat_limit"
        assert "free plan" in body["detail"]
        assert "upgrade to the team plan" in body["detail"]
        assert "carol" in body["detail"]
        # A session message on alice's task is a prompt too.
        task_id = first.json()["taskId"]
        session_id = first.json()["sessionId"]
        message = await carol.post(
            f"/v1/organizations/acme/tasks/{task_id}/sessions/{session_id}/messages", json={"text": "hello"}
        )
        assert message.status_code == 402
        assert message.json()["error"] == "seat_limit"
        again = await _prompt(alice)  # alice holds the seat: her prompts go on
        assert again.status_code == 201
        missing = await carol.delete("/v1/organizations/acme/billing/seats/bob")
        assert missing.status_code == 404
        released = await carol.delete("/v1/organizations/acme/billing/seats/alice")
        assert released.status_code == 200
        assert released.json() == {"released": "alice", "seatsUsed": 0}
        assert (await _prompt(carol)).status_code == 201
        assert (await _prompt(alice)).status_code == 402
    billing = await billing_server.billing()
    assert [m["login"] for m in billing["seats"]["members"]] == ["carol"]

    # Audit entries travel through the organization's outbox, so they land shortly after the answer.
    async def audited() -> bool:
        taken = await _audit(billing_server, "billing.seat_taken")
        released = await _audit(billing_server, "billing.seat_released")
        return len(taken) >= 2 and len(released) >= 1

    await eventually(audited, what="the seat audit entries")
    assert len(await _audit(billing_server, "billing.seat_taken")) == 2
    released_audit = await _audit(billing_server, "billing.seat_released")
    assert len(released_audit) == 1
    assert released_audit[0]["actorUserId"] == "gh-5003"


async def test_past_due_beyond_grace_and_canceled_refuse_new_prompts_but_keep_queued_work(
    billing_server: BillingServer,
) -> None:
    stripe = billing_server.stripe
    clock = billing_server.clock
    assert isinstance(clock, FakeClock)
    async with billing_server.signed_in("carol") as carol:
        await upgrade_to_team(billing_server, carol)
        first = await _prompt(carol)
        assert first.status_code == 201
        sub_id = next(iter(stripe.subscriptions))
        stripe.fail_payment(sub_id)

        async def past_due() -> bool:
            return (await billing_server.billing())["status"] == "past_due"

        await eventually(past_due, what="past_due from the webhooks")
        billing = await billing_server.billing()
        assert billing["graceEndsAt"] == billing["pastDueSince"] + 7 * DAY_MS
        assert any(i["status"] == "payment_failed" for i in billing["invoices"])
        assert (await _prompt(carol)).status_code == 201  # within the grace period
        clock.advance(7 * DAY_MS + 1)
        refused = await _prompt(carol)
        assert refused.status_code == 402
        assert refused.json()["error"] == "billing_inactive"
        assert "past due for more than 7 days" in refused.json()["detail"]
        # Canceled: refused too, and the task created before is still there.
        stripe.subscriptions[sub_id]["status"] = "active"
        await carol.post("/v1/organizations/acme/billing/cancel")
        ended = stripe.event(
            "customer.subscription.deleted", {**stripe.subscriptions[sub_id], "status": "canceled"}
        )
        ended["created"] += 60
        assert (await billing_server.post_event(ended)).status_code == 200

        async def canceled() -> bool:
            return (await billing_server.billing())["status"] == "canceled"

        await eventually(canceled, what="canceled")
        refused = await _prompt(carol)
        assert refused.status_code == 402
        assert refused.json()["error"] == "billing_inactive"
        assert "canceled" in refused.json()["detail"]
        kept = await billing_server.runtime.call(
            "organization", "acme", "task_summary", {"taskId": first.json()["taskId"]}
        )
        assert kept["taskId"] == first.json()["taskId"]
        # Back to free: carol holds the one free seat, so she can prompt again.
        assert (
            await carol.post("/v1/organizations/acme/billing/plan", json={"plan": "free"})
        ).status_code == 200
        assert (await _prompt(carol)).status_code == 201


async def test_a_seat_change_pending_across_a_restart_is_synced_after_it(
    billing_server: BillingServer,
) -> None:
    stripe = billing_server.stripe
    async with billing_server.signed_in("carol") as carol:
        await upgrade_to_team(billing_server, carol)
        stripe.fail_next(10_000, status=503)  # Stripe stays down until the restart
        assert (await _prompt(carol)).status_code == 201

        async def attempted() -> bool:
            return (await billing_server.billing())["sync"]["lastError"] is not None

        await eventually(attempted, what="a failed attempt")
    await billing_server.runtime.close()  # the process stops with the seat change still pending
    with stripe._lock:
        stripe._failures.clear()
    services = build_services(billing_server.settings)
    restarted = InProcessRuntime(billing_server.settings.data_dir, services, idle_seconds=3600)
    try:

        async def synced() -> bool:
            billing = await restarted.call("organization", "acme", "billing")
            return bool(billing["sync"]["pending"] == 0 and billing["seats"]["paid"] == 1)

        await eventually(synced, timeout=30, what="the pending seat change synced after the restart")
    finally:
        await restarted.close()
    assert [q for _, q, _ in stripe.quantity_updates] == [1]


async def test_a_webhook_from_before_a_confirmed_seat_change_never_rolls_the_paid_seats_back(
    billing_server: BillingServer,
) -> None:
    """Stripe's event times are whole seconds: the webhook of the first of two seat changes made in
    one second can arrive last. The quantity Stripe confirmed for Foundry's own later change stands."""
    stripe = billing_server.stripe
    async with billing_server.signed_in("carol") as carol, billing_server.signed_in("alice") as alice:
        await upgrade_to_team(billing_server, carol)
        stripe.auto_deliver = False  # from here the test delivers the events, in the worst order
        assert (await _prompt(alice)).status_code == 201
        await eventually(lambda: _synced(billing_server), what="the first seat change synced")
        assert (await _prompt(carol)).status_code == 201
        await eventually(lambda: _synced(billing_server), what="the second seat change synced")
    assert (await billing_server.billing())["seats"]["paid"] == 2
    sub = copy.deepcopy(next(iter(stripe.subscriptions.values())))
    one = copy.deepcopy(sub)
    one["items"]["data"][0]["quantity"] = 1
    # Created in the same second as the second change, and delivered after it.
    now = int(time.time())
    assert (
        await billing_server.post_event(stripe.event("customer.subscription.updated", one, now))
    ).status_code == 200
    assert (await billing_server.billing())["seats"]["paid"] == 2


async def test_a_prompt_refused_for_where_it_goes_takes_no_seat(billing_server: BillingServer) -> None:
    """A message to a session that does not exist (404) or is closed (409), or a session opened
    with a prompt on an archived task (409), is refused before the sender's seat is taken: a
    refused request must not change what the organization pays."""
    async with billing_server.signed_in("carol") as carol, billing_server.signed_in("alice") as alice:
        await upgrade_to_team(billing_server, carol)
        created = (await _prompt(carol)).json()
        base = f"/v1/organizations/acme/tasks/{created['taskId']}"
        await eventually(lambda: _synced(billing_server), what="carol's seat synced")
        missing = await alice.post(f"{base}/sessions/nope/messages", json={"text": "hi"})
        closed_session = (await carol.post(f"{base}/sessions", json={})).json()["sessionId"]
        assert (await carol.delete(f"{base}/sessions/{closed_session}")).status_code == 200
        to_closed = await alice.post(f"{base}/sessions/{closed_session}/messages", json={"text": "hi"})
        bad_model = await alice.post(f"{base}/sessions", json={"prompt": "hi", "model": "no-such-model"})
        bad_agent = await alice.post(f"{base}/sessions", json={"prompt": "hi", "agent": "no-such-agent"})
        assert (await carol.post(f"{base}/archive", json={"force": True})).status_code == 200
        on_archived = await alice.post(f"{base}/sessions", json={"prompt": "hi"})
        seats_after_refusals = (await billing_server.billing())["seats"]
        # A prompt that is accepted still takes the seat.
        assert (await _prompt(alice)).status_code == 201
        seats_after_prompt = (await billing_server.billing())["seats"]
    assert missing.status_code == 404, missing.text
    assert to_closed.status_code == 409, to_closed.text
    assert on_archived.status_code == 409, on_archived.text
    assert (bad_model.status_code, bad_model.json()["fields"]) == (422, ["model"])
    assert (bad_agent.status_code, bad_agent.json()["fields"]) == (422, ["agent"])
    assert [m["login"] for m in seats_after_refusals["members"]] == ["carol"]
    assert sorted(m["login"] for m in seats_after_prompt["members"]) == ["alice", "carol"]

    # Audit entries travel through the organization's outbox: they land shortly after the answers.
    async def taken() -> list[str]:
        entries = await _audit(billing_server, "billing.seat_taken")
        return sorted(str(e["payload"]["login"]) for e in entries)  # type: ignore[index]

    async def both_audited() -> bool:
        return await taken() == ["alice", "carol"]

    await eventually(both_audited, what="both seats in the audit log")
