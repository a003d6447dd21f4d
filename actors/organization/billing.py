"""Billing actions of an organization: read, Checkout, portal, cancel/resume, free plan, seats.

Actions that call Stripe do so outside the organization's write lock (a webhook's enqueue must
never wait behind a Stripe round trip), then apply what Stripe answered through the serialized
``apply_subscription`` command, under the same ordering rules as webhooks
(`actors.organization.billing_events`). Authorization (admin or member) is the HTTP layer's.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from actors.organization.billing_events import kick_seat_sync_after_commit
from actors.organization.billing_state import (
    audit_plan_change,
    build_billing,
    ensure_billing,
    load_billing,
    prompt_standing,
    publish_billing,
    record_seat_change,
    seat_count,
    take_seat,
)
from actors.organization.schema import (
    billing,
    billing_events,
    billing_seats,
    stripe_customers,
    stripe_unrouted_events,
)
from actors.organization.state import assert_app_shell, assert_real_organization, require_profile
from foundry.errors import Conflict, FoundryError, InvalidInput, NotConfigured, NotFound
from foundry.ids import APP_SHELL_ID
from foundry.runtime.context import InstanceContext

_STRICT = ConfigDict(extra="forbid", populate_by_name=True)

log = logging.getLogger(__name__)


class BillingRef(BaseModel):
    model_config = _STRICT


class SeatRequest(BaseModel):
    """A member is about to send a prompt: take their seat if they have none."""

    model_config = _STRICT
    user_id: str = Field(alias="userId", max_length=200)


class StartCheckout(BaseModel):
    model_config = _STRICT
    user_id: str = Field(alias="userId", max_length=200)
    plan: Literal["team"]
    success_url: str = Field(alias="successUrl", max_length=2000)
    cancel_url: str = Field(alias="cancelUrl", max_length=2000)


class CompleteCheckout(BaseModel):
    model_config = _STRICT
    user_id: str = Field(alias="userId", max_length=200)
    session_id: str = Field(alias="sessionId", min_length=1, max_length=255)


class PortalRequest(BaseModel):
    model_config = _STRICT
    user_id: str = Field(alias="userId", max_length=200)
    return_url: str = Field(alias="returnUrl", max_length=2000)


class AdminRequest(BaseModel):
    model_config = _STRICT
    user_id: str = Field(alias="userId", max_length=200)


class ReleaseSeat(BaseModel):
    model_config = _STRICT
    user_id: str = Field(alias="userId", max_length=200)
    login: str = Field(min_length=1, max_length=100)


class CustomerRef(BaseModel):
    model_config = _STRICT
    customer_id: str = Field(alias="customerId", min_length=1, max_length=255)
    organization_id: str | None = Field(default=None, alias="organizationId", max_length=200)


class UnroutedEvent(BaseModel):
    model_config = _STRICT
    event_id: str = Field(alias="eventId", min_length=1, max_length=255)
    type: str = Field(max_length=100)
    customer_id: str | None = Field(default=None, alias="customerId", max_length=255)


def _driver(ctx: InstanceContext) -> Any:
    missing = ctx.services.settings.stripe.missing()
    if missing:
        raise NotConfigured(f"billing is not configured: set {', '.join(missing)}")
    return ctx.services.driver("stripe")


async def _apply(ctx: InstanceContext, sub: dict[str, Any], actor: str, reason: str) -> None:
    await ctx.self_ref.send(
        "apply_subscription",
        {"subscription": sub, "observedAt": int(time.time()), "actorUserId": actor, "reason": reason},
        wait=True,
    )


# ------------------------------------------------------------------------------------------ reads


async def get_billing(ctx: InstanceContext, _: BillingRef) -> dict[str, Any]:
    """The ``billing`` field (see `build_billing`)."""
    assert_real_organization(ctx.key)
    async with ctx.read() as conn:
        await require_profile(conn, ctx.key)
        return await build_billing(conn, ctx.services.settings.stripe)


async def stripe_event_stats(ctx: InstanceContext, _: BillingRef) -> dict[str, Any]:
    """Stripe events this organization received: ``{"received", "byOutcome", "appliedTwice"}``.

    ``appliedTwice`` counts events whose handler ran more than once (it must stay 0: the mailbox
    dedupes deliveries by event id and the handler checks ``billing_events`` again).
    """
    assert_real_organization(ctx.key)
    async with ctx.read() as conn:
        by_outcome: dict[str, int] = dict(
            (
                await conn.execute(
                    sa.select(billing_events.c.outcome, sa.func.count()).group_by(billing_events.c.outcome)
                )
            ).all()
        )
        twice = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(billing_events)
                .where(billing_events.c.applied_count > 1)
            )
        ).scalar()
    return {"received": sum(by_outcome.values()), "byOutcome": by_outcome, "appliedTwice": int(twice or 0)}


# ------------------------------------------------------------------------------------------ seats


async def ensure_seat(ctx: InstanceContext, cmd: SeatRequest) -> dict[str, Any]:
    """Before a session message: the sender's seat (taken once) and the plan's prompt gate."""
    assert_real_organization(ctx.key)
    async with ctx.write() as conn:
        taken = await take_seat(ctx, conn, cmd.user_id)
        if taken:
            await publish_billing(ctx, conn)
            kick_seat_sync_after_commit(ctx)
    return {"taken": taken}


async def seat(ctx: InstanceContext, cmd: SeatRequest) -> dict[str, Any]:
    """``{"held", "refusal"}``: the member's seat, and what their next prompt would get (a read)."""
    assert_real_organization(ctx.key)
    async with ctx.read() as conn:
        return await prompt_standing(ctx, conn, cmd.user_id)


async def release_seat(ctx: InstanceContext, cmd: ReleaseSeat) -> dict[str, Any]:
    """Free ``login``'s seat (admins); their next prompt takes one again. 404 without a seat."""
    assert_real_organization(ctx.key)
    async with ctx.write() as conn:
        seat = (
            # GitHub logins are case-insensitive: ALICE is alice.
            await conn.execute(
                sa.select(billing_seats).where(sa.func.lower(billing_seats.c.login) == cmd.login.lower())
            )
        ).first()
        if seat is None:
            raise NotFound(f"{cmd.login!r} holds no seat in {ctx.key!r}")
        await conn.execute(billing_seats.delete().where(billing_seats.c.user_id == seat.user_id))
        row = await ensure_billing(conn, ctx.now_ms())
        used = await seat_count(conn)
        await record_seat_change(ctx, conn, "released", seat.user_id, seat.login, used, row, cmd.user_id)
        await publish_billing(ctx, conn)
        kick_seat_sync_after_commit(ctx)
    return {"released": seat.login, "seatsUsed": used}


# ------------------------------------------------------------------------------------------ checkout


async def start_checkout(ctx: InstanceContext, cmd: StartCheckout) -> dict[str, Any]:
    """A Stripe Checkout session for the team plan: ``{"url", "sessionId"}`` to redirect to.

    Raises:
        Conflict: the organization already has a team subscription that is not canceled.
        NotConfigured: Stripe settings are missing.
    """
    assert_real_organization(ctx.key)
    driver = _driver(ctx)
    settings = ctx.services.settings.stripe
    async with ctx.read() as conn:
        profile = await require_profile(conn, ctx.key)
        row = await load_billing(conn)
        seats = await seat_count(conn)
    if row is not None and row.plan == "team" and row.status != "canceled":
        raise Conflict(
            f"{ctx.key!r} is already on the team plan ({row.status}); manage it in the billing portal"
        )
    customer = row.customer_id if row is not None else None
    if customer is None:
        created = await driver.create_customer(
            ctx.key, profile.display_name, idempotency_key=f"{ctx.key}:customer"
        )
        customer = str(created["id"])
        # Webhooks are routed by customer: the index must know it before Stripe can send any.
        await ctx.actor("organization", APP_SHELL_ID).call(
            "register_stripe_customer", {"customerId": customer, "organizationId": ctx.key}
        )
        async with ctx.write() as conn:
            await ensure_billing(conn, ctx.now_ms())
            await conn.execute(
                billing.update()
                .where(billing.c.id == 1, billing.c.customer_id.is_(None))
                .values(customer_id=customer, updated_at=ctx.now_ms())
            )
            current = await load_billing(conn)
            assert current is not None
            customer = current.customer_id
            await publish_billing(ctx, conn)
    previous = row.checkout_session_id if row is not None else None
    if previous:
        # One payable checkout at a time: each one paid would start a subscription of its own, and
        # an older page left open in a tab could still be paid after the plan changed.
        try:
            await driver.expire_checkout_session(previous)
        except FoundryError as exc:
            log.info("billing %s: previous checkout session %s not expired: %s", ctx.key, previous, exc)
    session = await driver.create_checkout_session(
        customer=str(customer),
        price=settings.price_team,
        quantity=max(1, seats),
        organization_id=ctx.key,
        success_url=cmd.success_url,
        cancel_url=cmd.cancel_url,
        idempotency_key=f"{ctx.key}:checkout:{uuid.uuid4().hex}",
        started_by=cmd.user_id,
    )
    async with ctx.write() as conn:
        await conn.execute(
            billing.update()
            .where(billing.c.id == 1)
            .values(checkout_session_id=session["id"], updated_at=ctx.now_ms())
        )
        audit_plan_change(
            ctx,
            "billing.checkout_started",
            {"plan": cmd.plan, "seats": max(1, seats)},
            f"checkout:{session['id']}",
            cmd.user_id,
        )
    return {"url": session["url"], "sessionId": session["id"]}


async def complete_checkout(ctx: InstanceContext, cmd: CompleteCheckout) -> dict[str, Any]:
    """After Stripe's redirect: check the session is this organization's and apply its subscription.

    Raises:
        NotFound: Stripe has no such session, or it belongs to another organization.
        Conflict: the session is not paid (yet).
    """
    assert_real_organization(ctx.key)
    driver = _driver(ctx)
    session = await driver.retrieve_checkout_session(cmd.session_id)
    async with ctx.read() as conn:
        row = await load_billing(conn)
    ours = (
        session.get("client_reference_id") == ctx.key
        and row is not None
        and session.get("customer") == row.customer_id
    )
    if not ours:
        raise NotFound(f"checkout session {cmd.session_id!r} does not belong to organization {ctx.key!r}")
    if session.get("status") != "complete" or not session.get("subscription"):
        raise Conflict(
            f"checkout session {cmd.session_id!r} is not complete ({session.get('status')}); "
            "finish the payment first"
        )
    sub_id = (
        session["subscription"] if isinstance(session["subscription"], str) else session["subscription"]["id"]
    )
    sub = await driver.retrieve_subscription(sub_id)
    await _apply(ctx, sub, cmd.user_id, "checkout_completed")
    return {"subscriptionId": sub_id}


async def open_portal(ctx: InstanceContext, cmd: PortalRequest) -> dict[str, Any]:
    """A Billing Portal session: ``{"url"}``. 409 before the organization has a Stripe customer."""
    assert_real_organization(ctx.key)
    driver = _driver(ctx)
    async with ctx.read() as conn:
        row = await load_billing(conn)
    if row is None or row.customer_id is None:
        raise Conflict(f"{ctx.key!r} has no billing account yet: upgrade to the team plan first")
    portal = await driver.create_portal_session(
        customer=row.customer_id,
        return_url=cmd.return_url,
        idempotency_key=f"{ctx.key}:portal:{uuid.uuid4().hex}",
    )
    return {"url": portal["url"]}


async def _subscription(ctx: InstanceContext, wanted: str) -> str:
    async with ctx.read() as conn:
        row = await load_billing(conn)
    if row is None or row.plan != "team" or not row.subscription_id or row.status == "canceled":
        raise Conflict(f"{ctx.key!r} has no active team subscription to {wanted}")
    return str(row.subscription_id)


async def cancel_at_period_end(ctx: InstanceContext, cmd: AdminRequest) -> dict[str, Any]:
    """Schedule the subscription's end at the current period's end (status ``scheduled_cancel``)."""
    sub_id = await _subscription(ctx, "cancel")
    sub = await _driver(ctx).set_cancel_at_period_end(
        sub_id, True, idempotency_key=f"{ctx.key}:cancel:{uuid.uuid4().hex}"
    )
    await _apply(ctx, sub, cmd.user_id, "cancel_scheduled")
    return await get_billing(ctx, BillingRef())


async def resume(ctx: InstanceContext, cmd: AdminRequest) -> dict[str, Any]:
    """Undo a scheduled cancellation."""
    sub_id = await _subscription(ctx, "resume")
    sub = await _driver(ctx).set_cancel_at_period_end(
        sub_id, False, idempotency_key=f"{ctx.key}:resume:{uuid.uuid4().hex}"
    )
    await _apply(ctx, sub, cmd.user_id, "resumed")
    return await get_billing(ctx, BillingRef())


async def switch_to_free(ctx: InstanceContext, cmd: AdminRequest) -> dict[str, Any]:
    """End the team subscription now (if any) and go back to the free plan."""
    assert_real_organization(ctx.key)
    driver = _driver(ctx)
    async with ctx.read() as conn:
        row = await load_billing(conn)
    if row is not None and row.plan == "team" and row.subscription_id and not row.sub_deleted:
        sub = await driver.cancel_subscription(
            row.subscription_id, idempotency_key=f"{ctx.key}:free:{row.subscription_id}"
        )
        await ctx.self_ref.send(
            "apply_subscription",
            {
                "subscription": sub,
                "observedAt": int(time.time()),
                "actorUserId": cmd.user_id,
                "reason": "deleted",
            },
            wait=True,
        )
    async with ctx.write() as conn:
        current = await ensure_billing(conn, ctx.now_ms())
        if current.plan != "free":
            await conn.execute(
                billing.update()
                .where(billing.c.id == 1)
                .values(
                    plan="free", status="active", past_due_since=None, cancel_at=None, updated_at=ctx.now_ms()
                )
            )
            audit_plan_change(
                ctx,
                "billing.plan_changed",
                {
                    "from": {"plan": current.plan, "status": current.status},
                    "to": {"plan": "free", "status": "active"},
                },
                f"free:{uuid.uuid4().hex}",
                cmd.user_id,
            )
            await publish_billing(ctx, conn)
    return await get_billing(ctx, BillingRef())


# ------------------------------------------------------------------------------------------ app shell


async def register_stripe_customer(ctx: InstanceContext, cmd: CustomerRef) -> dict[str, Any]:
    """App shell: remember which organization owns a Stripe customer (webhook routing)."""
    assert_app_shell(ctx.key)
    if cmd.organization_id is None:
        raise InvalidInput("organizationId is required", ["organizationId"])
    async with ctx.write() as conn:
        await conn.execute(
            sqlite_insert(stripe_customers)
            .values(customer_id=cmd.customer_id, organization_id=cmd.organization_id)
            .on_conflict_do_nothing()
        )
    return {"customerId": cmd.customer_id}


async def stripe_customer_organization(ctx: InstanceContext, cmd: CustomerRef) -> dict[str, Any]:
    """App shell: ``{"organizationId": …}`` owning the customer, or null."""
    assert_app_shell(ctx.key)
    async with ctx.read() as conn:
        org = (
            await conn.execute(
                sa.select(stripe_customers.c.organization_id).where(
                    stripe_customers.c.customer_id == cmd.customer_id
                )
            )
        ).scalar()
    return {"organizationId": org}


async def record_unrouted_event(ctx: InstanceContext, cmd: UnroutedEvent) -> dict[str, Any]:
    """App shell: keep a Stripe event no organization owns (unknown customer); it has no effect."""
    assert_app_shell(ctx.key)
    async with ctx.write() as conn:
        await conn.execute(
            sqlite_insert(stripe_unrouted_events)
            .values(
                event_id=cmd.event_id, type=cmd.type, customer_id=cmd.customer_id, received_at=ctx.now_ms()
            )
            .on_conflict_do_nothing()
        )
    return {"eventId": cmd.event_id, "outcome": "unrouted"}
