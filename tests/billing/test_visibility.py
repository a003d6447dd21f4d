"""Billing details (invoices, payment method, seat holders, dates, Stripe links) reach admins only,
on every path: the organization read, the ``organization:<org>`` snapshot and its events, a resync
with ``since``; members get the member-safe summary and ``billing:<org>`` refuses them."""

from __future__ import annotations

import json
from typing import Any

from websockets.asyncio.client import connect

from tests.billing.conftest import BillingServer, eventually, upgrade_to_team
from tests.github.conftest import GitHub
from tests.github.test_webhook_families import hook
from tests.tasks.conftest import WsClient

#: The whole member-facing billing summary: what a member needs to use the product.
SUMMARY_KEYS = {"enabled", "plan", "status", "seatLimitReached", "freeSeats", "updatedAt"}
#: Words that appear only in billing details (JSON keys and values the fake Stripe produces).
DETAIL_MARKERS = (
    "invoices",
    "hostedInvoiceUrl",
    "paymentMethod",
    "Visa",
    '4242"',  # the card's last digits ending a JSON string ("Visa •••• 4242"); timestamps have them too
    "members",
    "takenAt",
    "currentPeriodEnd",
    "hasCustomer",
    "cus_",
    "in_",
    "sub_",
)


def assert_no_details(value: Any) -> None:
    text = json.dumps(value)
    leaked = [m for m in DETAIL_MARKERS if m in text]
    assert leaked == [], f"billing details reached a member ({leaked}): {text[:400]}"


def _ws_url(server: BillingServer) -> str:
    return server.url.replace("http://", "ws://") + "/v1/realtime"


def cookie_of(client: Any) -> str:
    return "; ".join(f"{k}={v}" for k, v in client.cookies.items())


async def test_the_organization_read_gives_members_the_summary_and_admins_the_details(
    billing_server: BillingServer,
) -> None:
    async with billing_server.signed_in("carol") as carol, billing_server.signed_in("alice") as alice:
        await upgrade_to_team(billing_server, carol)
        member = (await alice.get("/v1/organizations/acme")).json()
        admin = (await carol.get("/v1/organizations/acme")).json()
        full = (await carol.get("/v1/organizations/acme/billing")).json()
    assert member["viewerRole"] == "member"
    assert set(member["billing"]) == SUMMARY_KEYS
    assert member["billing"] == {**member["billing"], "plan": "team", "status": "active", "enabled": True}
    # Everything else of the snapshot is still there; only billing is reduced.
    assert_no_details({k: v for k, v in member.items() if k != "taskSummaries"})
    assert admin["viewerRole"] == "admin"
    assert admin["billing"] == full
    assert admin["billing"]["paymentMethod"] == "Visa •••• 4242"
    assert admin["billing"]["invoices"][0]["hostedInvoiceUrl"]


async def test_a_member_on_the_organization_topic_never_sees_details_live_or_after_a_resync(
    billing_server: BillingServer,
) -> None:
    async with billing_server.signed_in("carol") as carol, billing_server.signed_in("alice") as alice:
        async with (
            connect(_ws_url(billing_server), additional_headers={"Cookie": cookie_of(alice)}) as raw_m,
            connect(_ws_url(billing_server), additional_headers={"Cookie": cookie_of(carol)}) as raw_a,
        ):
            member, admin = WsClient(raw_m), WsClient(raw_a)
            await member.subscribe("organization:acme")
            first = await member.until(lambda f: f.get("event") == "snapshot")
            assert set(first["data"]["billing"]) == SUMMARY_KEYS
            await admin.subscribe("billing:acme")
            admin_snapshot = await admin.until(lambda f: f.get("event") == "snapshot")
            assert admin_snapshot["data"]["plan"] == "free"
            assert admin_snapshot["data"]["invoices"] == []

            # Real signed webhooks from the fake Stripe: checkout completed, subscription, invoice.
            await upgrade_to_team(billing_server, carol)
            live = await admin.until(
                lambda f: f.get("event") == "billingUpdated" and f["data"]["invoices"] != []
            )
            assert live["topic"] == "billing:acme"
            assert live["data"]["paymentMethod"] == "Visa •••• 4242"
            await member.until(lambda f: f.get("event") == "billingUpdated" and f["data"]["plan"] == "team")
            # A failed renewal: invoice.payment_failed, then past_due, again through signed webhooks.
            subscription_id = str(next(iter(billing_server.stripe.subscriptions)))
            billing_server.stripe.fail_payment(subscription_id)
            await member.until(
                lambda f: f.get("event") == "billingUpdated" and f["data"]["status"] == "past_due"
            )
            await admin.until(
                lambda f: (
                    f.get("event") == "billingUpdated"
                    and f["data"]["status"] == "past_due"
                    and any(i["status"] == "payment_failed" for i in f["data"]["invoices"])
                )
            )
            # The admin-only topic refuses a member with the documented error frame.
            await member.subscribe("billing:acme")
            refused = await member.first_about("billing:acme")
            assert (refused.get("error"), refused["topic"]) == ("forbidden", "billing:acme")

        # Reconnect and resync from the first snapshot's seq, as a browser does after a drop.
        async with connect(
            _ws_url(billing_server), additional_headers={"Cookie": cookie_of(alice)}
        ) as raw_again:
            again = WsClient(raw_again)
            await again.subscribe("organization:acme", since=first["seq"])
            resynced = await again.until(lambda f: f.get("event") == "snapshot")
            assert resynced["seq"] > first["seq"]
            assert resynced["data"]["billing"]["status"] == "past_due"
    billing_frames = [
        f
        for f in [*member.frames, *again.frames]
        if f.get("topic") == "organization:acme" and f.get("event") in ("snapshot", "billingUpdated")
    ]
    assert len(billing_frames) >= 4
    for f in billing_frames:
        billing = f["data"] if f["event"] == "billingUpdated" else f["data"]["billing"]
        assert set(billing) == SUMMARY_KEYS, f
        assert_no_details(billing)


async def _refused(server: BillingServer, login: str, topic: str) -> dict[str, Any]:
    async with server.signed_in(login) as client:
        cookie = cookie_of(client)
    async with connect(_ws_url(server), additional_headers={"Cookie": cookie}) as raw:
        ws = WsClient(raw)
        await ws.subscribe(topic)
        return await ws.next_frame()


async def test_the_billing_topic_is_for_admins_of_that_organization_only(
    billing_server: BillingServer,
) -> None:
    # bob: member of globex only; carol: admin of acme, plain member of globex.
    for login, topic in [("bob", "billing:acme"), ("bob", "billing:globex"), ("carol", "billing:globex")]:
        refused = await _refused(billing_server, login, topic)
        assert refused == {**refused, "op": "error", "error": "forbidden", "topic": topic}, login
    async with billing_server.signed_in("carol") as carol:
        cookie = cookie_of(carol)
    async with connect(_ws_url(billing_server), additional_headers={"Cookie": cookie}) as raw:
        ws = WsClient(raw)
        await ws.subscribe("billing:acme")
        snapshot = await ws.until(lambda f: f.get("event") == "snapshot")
    assert snapshot["data"]["seats"]["members"] == []
    assert snapshot["data"]["invoices"] == []


async def test_an_admin_demoted_on_github_loses_the_billing_topic_before_anything_newer(
    billing_server: BillingServer,
) -> None:
    github = GitHub(billing_server)
    try:
        async with billing_server.signed_in("carol") as carol:
            await github.sync()  # acme's mirror is ready: its webhooks apply from now on
        # dave becomes a second admin (GitHub's member list is re-read on a membership event).
        billing_server.github.add_member("acme", "dave", "admin")
        await github.send("membership", hook("membership", "added"))
        async with billing_server.signed_in("carol") as carol, billing_server.signed_in("dave") as dave:
            assert (await dave.get("/v1/organizations/acme")).json()["viewerRole"] == "admin"
            async with (
                connect(_ws_url(billing_server), additional_headers={"Cookie": cookie_of(carol)}) as raw_c,
                connect(_ws_url(billing_server), additional_headers={"Cookie": cookie_of(dave)}) as raw_d,
            ):
                demoted, stays = WsClient(raw_c), WsClient(raw_d)
                for ws in (demoted, stays):
                    await ws.subscribe("billing:acme")
                    await ws.until(lambda f: f.get("event") == "snapshot")
                billing_server.github.add_member("acme", "carol", "member")
                await github.send("membership", hook("membership", "added"))
                ended = await demoted.next_frame()
                while ended.get("op") != "error":
                    ended = await demoted.next_frame()
                assert (ended["error"], ended["topic"]) == ("forbidden", "billing:acme")
                assert (await carol.get("/v1/organizations/acme")).json()["viewerRole"] == "member"

                # The admin who stays keeps the live details; the demoted one gets nothing more.
                await upgrade_to_team(billing_server, dave)
                await stays.until(
                    lambda f: f.get("event") == "billingUpdated" and f["data"]["invoices"] != []
                )
                await raw_c.send(json.dumps({"op": "ping"}))
                while (await demoted.next_frame()).get("op") != "pong":
                    pass
                again = await _refused(billing_server, "carol", "billing:acme")
                assert (again["error"], again["topic"]) == ("forbidden", "billing:acme")
        after_error = demoted.frames[demoted.frames.index(ended) + 1 :]
        assert [f for f in after_error if f.get("topic") == "billing:acme"] == []
        assert_no_details(after_error)
    finally:
        await github.aclose()


async def test_the_audit_log_shows_members_no_billing_or_credential_event(
    billing_server: BillingServer,
) -> None:
    """Seat holders, seat counts, checkouts and agent-credential changes are admin business: the
    audit log a member reads leaves them out (filtered before the limit, so a page is still full)."""
    async with billing_server.signed_in("carol") as carol, billing_server.signed_in("alice") as alice:
        await upgrade_to_team(billing_server, carol)
        put = await carol.put(
            "/v1/organizations/acme/agent-credentials/GEMINI_API_KEY", json={"value": "k" * 24}
        )
        assert put.status_code == 204, put.text
        created = await alice.post("/v1/organizations/acme/tasks", json={"repoId": "910001", "prompt": "go"})
        assert created.status_code == 201, created.text

        async def kinds(client: Any, **params: Any) -> list[str]:
            answer = await client.get("/v1/organizations/acme/audit-log", params={"limit": 1000, **params})
            assert answer.status_code == 200, answer.text
            return [e["kind"] for e in answer.json()]

        async def audited() -> bool:
            return {"billing.seat_taken", "task.created"} <= set(await kinds(carol))

        await eventually(audited, what="alice's seat and task in the audit log")
        admin_kinds = await kinds(carol)
        member_kinds = await kinds(alice)
        # The newest event is an admin-only one now: a member's page of one still holds an event.
        removed = await carol.delete("/v1/organizations/acme/agent-credentials/GEMINI_API_KEY")
        assert removed.status_code == 204, removed.text
        member_page = await kinds(alice, limit=1)
        asked_for = await kinds(alice, kind="billing.seat_taken")
    assert {"billing.checkout_started", "billing.seat_taken", "organization.agent_credential_set"} <= set(
        admin_kinds
    )

    def hidden(kinds: list[str]) -> list[str]:
        return [k for k in kinds if k.startswith(("billing.", "organization.agent_credential"))]

    assert hidden(member_kinds) == [], member_kinds
    assert "task.created" in member_kinds
    assert len(member_page) == 1
    assert hidden(member_page) == []
    assert asked_for == []
