"""Stripe's view applied to an organization: subscription states and invoices, never rolled back.

Stripe delivers events at least once and in any order. Each subscription state carries the time
Stripe made it (the event's ``created``, or the moment Foundry read the subscription itself), and a
state older than the one applied is ignored; at the same second a ``created`` never overrides what
an ``updated`` said. A deleted subscription stays deleted: a stale ``updated`` that arrives after
its ``deleted`` is ignored. A newer subscription (after a cancellation and a new checkout) replaces
an older one; events of the older one are then ignored. The payment method shown is kept by
`actors.organization.billing_payment` from the subscription, customer and payment method events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from actors.organization.billing_payment import (
    NONE,
    apply_customer_default,
    pointer_id,
    remember_payment_method,
    settle_label,
)
from actors.organization.billing_state import (
    SEAT_SYNC_JOB,
    audit_plan_change,
    ensure_billing,
    publish_billing,
    seat_count,
)
from actors.organization.schema import billing, billing_events, billing_invoices, billing_seat_changes
from actors.organization.state import assert_real_organization
from foundry.runtime.context import CommandContext, InstanceContext

log = logging.getLogger(__name__)

#: How long after a seat change a webhook about an earlier one may still arrive (Stripe retries
#: deliveries for days, but a late one beyond minutes is about a change long superseded anyway).
LATE_WEBHOOK_WINDOW_MS = 10 * 60 * 1000

_STRICT = ConfigDict(extra="forbid", populate_by_name=True)

HANDLED_EVENTS = frozenset(
    {
        "checkout.session.completed",
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "invoice.paid",
        "invoice.payment_failed",
        "invoice.finalized",
        # The payment method shown (actors/organization/billing_payment.py).
        "customer.updated",
        "payment_method.attached",
        "payment_method.detached",
        "payment_method.updated",
        "payment_method.automatically_updated",
    }
)
#: At the same second, a later kind of change wins over an earlier one.
_SUB_RANK = {"created": 0, "updated": 1, "observed": 1, "deleted": 2}
_INVOICE_RANK = {"invoice.finalized": 0, "invoice.payment_failed": 1, "invoice.paid": 2}
_STATUS = {
    "active": "active",
    "trialing": "trialing",
    "past_due": "past_due",
    "unpaid": "past_due",
    "incomplete": "past_due",
    "canceled": "canceled",
    "incomplete_expired": "canceled",
    "paused": "past_due",
}


class StripeEvent(BaseModel):
    """A verified Stripe event for this organization (trimmed by the webhook ingest)."""

    model_config = _STRICT
    event_id: str = Field(alias="eventId", min_length=1, max_length=255)
    type: str = Field(max_length=100)
    created: int = Field(ge=0)
    object: dict[str, Any]
    #: The customer the event is about, when the object does not name it itself (a detached
    #: payment method's was in ``previous_attributes``; a customer's is its id).
    customer_id: str | None = Field(default=None, alias="customerId", max_length=255)


class ApplySubscription(BaseModel):
    """A subscription Foundry read from Stripe itself (after checkout, cancel, resume)."""

    model_config = _STRICT
    subscription: dict[str, Any]
    observed_at: int = Field(alias="observedAt", ge=0)  # seconds
    actor_user_id: str | None = Field(default=None, alias="actorUserId")
    reason: str = Field(default="observed", max_length=50)


def _ms(seconds: Any) -> int | None:
    return int(seconds) * 1000 if isinstance(seconds, int | float) and seconds else None


def _item(sub: dict[str, Any]) -> dict[str, Any]:
    data = ((sub.get("items") or {}).get("data")) or [{}]
    first: dict[str, Any] = data[0] if isinstance(data[0], dict) else {}
    return first


async def apply_subscription(
    ctx: InstanceContext,
    conn: AsyncConnection,
    sub: dict[str, Any],
    created: int,
    kind: str,
    actor: str | None,
) -> str:
    """Apply one subscription state; returns ``applied``, ``stale`` or ``ignored``."""
    row = await ensure_billing(conn, ctx.now_ms())
    sub_id = str(sub.get("id") or "")
    if not sub_id:
        return "ignored"
    if row.customer_id and sub.get("customer") and sub["customer"] != row.customer_id:
        log.warning(
            "billing %s: subscription %s belongs to customer %s, not ours",
            ctx.key,
            sub_id,
            sub.get("customer"),
        )
        return "ignored"
    sub_created = int(sub.get("created") or 0)
    # A subscription Foundry has not applied yet (the first, or a new one after a cancellation).
    new_subscription = sub_id != row.subscription_id
    if row.subscription_id and sub_id != row.subscription_id:
        if row.sub_created is not None and sub_created < row.sub_created:
            return "stale"  # an older subscription than the one in force
        if kind == "deleted":
            return "stale"
    elif row.subscription_id == sub_id:
        if row.sub_deleted:
            return "stale"  # deleted is final for this subscription
        stored = row.sub_state_created or 0
        if created < stored or (created == stored and kind == "created"):
            return "stale"
    if actor is None and new_subscription:
        # Stripe's webhook of a new subscription comes before the admin's browser is back from
        # Checkout: the admin who started it is named in the subscription itself.
        metadata = sub.get("metadata")
        started_by = metadata.get("startedBy") if isinstance(metadata, dict) else None
        actor = started_by if isinstance(started_by, str) and len(started_by) <= 200 else None
    stripe_status = str(sub.get("status") or "active")
    status = _STATUS.get(stripe_status, "past_due")
    if kind == "deleted":
        status = "canceled"
    elif status in ("active", "trialing") and sub.get("cancel_at_period_end"):
        status = "scheduled_cancel"
    cancel_at = _ms(sub.get("cancel_at")) if status != "canceled" else None
    # (A deletion is final whatever else that second said.)
    stored_second = row.sub_state_created or 0
    same_second = not new_subscription and kind not in ("observed", "deleted") and created == stored_second
    if same_second and (status, cancel_at) != (row.status, row.cancel_at):
        # Two states of one second (Stripe's times are whole seconds) that disagree, say a cancel
        # and its undo: which is newer is unknown, so Stripe is asked for the subscription as it is.
        reread_subscription_soon(ctx, sub_id)
        return "ambiguous"
    item = _item(sub)
    now = ctx.now_ms()
    values: dict[str, Any] = {
        "plan": "team",
        "status": status,
        "subscription_id": sub_id,
        "subscription_item_id": item.get("id") or row.subscription_item_id,
        "price_id": (item.get("price") or {}).get("id")
        if isinstance(item.get("price"), dict)
        else row.price_id,
        "paid_seats": await _paid_seats(conn, now, row, item, new_subscription),
        "current_period_end": _ms(item.get("current_period_end") or sub.get("current_period_end")),
        "trial_end": _ms(sub.get("trial_end")),
        "cancel_at": cancel_at,
        "sub_state_created": created,
        "sub_created": sub_created,
        # A canceled subscription never comes back (Stripe starts a new one), whoever reported it.
        "sub_deleted": status == "canceled",
        "updated_at": now,
    }
    if row.customer_id is None and isinstance(sub.get("customer"), str):
        values["customer_id"] = sub["customer"]
    if "default_payment_method" in sub:
        # An id (what webhooks carry) or an expanded object (Foundry's own reads).
        pm = sub["default_payment_method"]
        await remember_payment_method(conn, pm, created, now)
        pointer: str | None = pointer_id(pm) or NONE
        same_second = row.subscription_id == sub_id and created == row.sub_state_created
        if kind != "observed" and same_second and pointer != row.sub_payment_method_id:
            # Two states of one second (Stripe's times are whole seconds) naming other payment
            # methods: which is newer is unknown, so the subscription is read again.
            pointer = None
        values["sub_payment_method_id"] = pointer
    if status == "past_due":
        values["past_due_since"] = row.past_due_since or now
    else:
        values["past_due_since"] = None
    await conn.execute(billing.update().where(billing.c.id == 1).values(**values))
    await settle_label(ctx, conn)
    if (row.plan, row.status) != ("team", status):
        audit_plan_change(
            ctx,
            "billing.plan_changed",
            {
                "from": {"plan": row.plan, "status": row.status},
                "to": {"plan": "team", "status": status},
                "subscriptionId": sub_id,
            },
            f"plan:{sub_id}:{created}:{kind}:{status}",
            actor,
        )
    if new_subscription and values["subscription_item_id"] and status != "canceled":
        # A subscription's first state: seats taken since its checkout started need Stripe's quantity.
        await _catch_up_quantity(ctx, conn, values)
    return "applied"


async def _catch_up_quantity(ctx: InstanceContext, conn: AsyncConnection, values: dict[str, Any]) -> None:
    from actors.organization.billing_state import record_seat_change

    used = await seat_count(conn)
    if values["paid_seats"] is not None and used > values["paid_seats"]:
        row = await ensure_billing(conn, ctx.now_ms())
        await record_seat_change(ctx, conn, "reconciled", "", "", used, row)


async def apply_invoice(
    conn: AsyncConnection, inv: dict[str, Any], created: int, event_type: str, customer: str | None
) -> str:
    """Upsert an invoice; a later state never gives way to an earlier one (paid stays paid)."""
    inv_id = str(inv.get("id") or "")
    if not inv_id:
        return "ignored"
    if customer and inv.get("customer") and inv["customer"] != customer:
        return "ignored"
    rank = _INVOICE_RANK.get(event_type, 0)
    status = {"invoice.paid": "paid", "invoice.payment_failed": "payment_failed"}.get(
        event_type, str(inv.get("status") or "open")
    )
    row = {
        "number": inv.get("number"),
        "status": status,
        "amount_due": int(inv.get("amount_due") or 0),
        "amount_paid": int(inv.get("amount_paid") or 0),
        "currency": str(inv.get("currency") or "usd"),
        "hosted_invoice_url": inv.get("hosted_invoice_url"),
        "created": int(inv.get("created") or created),
        "period_end": inv.get("period_end") if isinstance(inv.get("period_end"), int) else None,
        "event_created": created,
        "event_rank": rank,
    }
    stmt = sqlite_insert(billing_invoices).values(invoice_id=inv_id, **row)
    # One statement: the stored state is replaced only by a later one (rank first: paid is final).
    done = await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["invoice_id"],
            set_=row,
            where=sa.or_(
                billing_invoices.c.event_rank < rank,
                sa.and_(billing_invoices.c.event_rank == rank, billing_invoices.c.event_created <= created),
            ),
        )
    )
    return "applied" if done.rowcount else "stale"


async def _paid_seats(
    conn: AsyncConnection, now_ms: int, row: Any, item: dict[str, Any], new_subscription: bool
) -> int | None:
    """The seat count to keep after a subscription event.

    Stripe's event times are whole seconds, so the webhooks of two seat changes made in one second
    can arrive in either order, and the first change's event can come last. An event whose quantity
    is that of an earlier recent seat change of Foundry's, not of its latest confirmed one, is that
    late event: the quantity Stripe confirmed to the latest change stands. Any other quantity (a
    change made in Stripe's dashboard, say) is applied, and so is any quantity of a subscription
    not applied before: the seat changes were synced to an older one.
    """
    quantity = item.get("quantity")
    if not isinstance(quantity, int):
        return None if new_subscription else row.paid_seats
    if new_subscription:
        return quantity
    recent = (
        (
            await conn.execute(
                sa.select(billing_seat_changes.c.seats_after)
                .where(
                    billing_seat_changes.c.status == "synced",
                    billing_seat_changes.c.synced_at >= now_ms - LATE_WEBHOOK_WINDOW_MS,
                )
                .order_by(billing_seat_changes.c.id.desc())
            )
        )
        .scalars()
        .all()
    )
    if recent and row.paid_seats == recent[0] and quantity != recent[0] and quantity in recent[1:]:
        return row.paid_seats  # type: ignore[no-any-return]
    return quantity


async def handle_stripe_event(ctx: CommandContext, cmd: StripeEvent) -> dict[str, Any]:
    """Apply one verified Stripe event, at most once per event id (the mailbox dedupes by command id,
    ``billing_events`` by event id)."""
    assert_real_organization(ctx.key)
    conn = ctx.conn
    now = ctx.now_ms()
    # The billing row and "seen before?" in one statement: this handler runs once per webhook, and
    # Stripe's acknowledgements wait behind it in the mailbox.
    found = (
        await conn.execute(
            sa.select(
                billing, sa.exists().where(billing_events.c.event_id == cmd.event_id).label("seen")
            ).where(billing.c.id == 1)
        )
    ).first()
    if found is not None and found.seen:
        # A second delivery under another command id: counted, never applied again.
        await conn.execute(
            billing_events.update()
            .where(billing_events.c.event_id == cmd.event_id)
            .values(applied_count=billing_events.c.applied_count + 1)
        )
        return {"eventId": cmd.event_id, "outcome": "duplicate"}
    row = found if found is not None else await ensure_billing(conn, now)
    try:
        async with ctx.savepoint():
            outcome = await _apply_event(ctx, conn, cmd, row, now)
    except Exception:
        # Recorded as failed (visible in billing_events, with the traceback in the log) rather than
        # lost: the event's id is taken, so Stripe's redelivery would be a duplicate.
        log.exception(
            "billing %s: Stripe event %s (%s) could not be applied", ctx.key, cmd.event_id, cmd.type
        )
        outcome = "failed"
    await conn.execute(
        billing_events.insert().values(
            event_id=cmd.event_id, type=cmd.type, created=cmd.created, outcome=outcome, received_at=now
        )
    )
    if outcome == "applied":
        publish_billing_soon(ctx)
        kick_seat_sync_after_commit(ctx)
    return {"eventId": cmd.event_id, "outcome": outcome}


async def _apply_event(
    ctx: CommandContext, conn: AsyncConnection, cmd: StripeEvent, row: Any, now: int
) -> str:
    """Apply one new event to the billing state; returns its outcome."""
    obj = cmd.object
    customer = cmd.customer_id or (obj.get("customer") if isinstance(obj.get("customer"), str) else None)
    outcome = "ignored"
    if row.customer_id and customer and customer != row.customer_id:
        log.warning(
            "billing %s: event %s is for customer %s, not ours; ignored", ctx.key, cmd.event_id, customer
        )
    elif cmd.type == "checkout.session.completed":
        if obj.get("client_reference_id") in (None, ctx.key):
            values: dict[str, Any] = {"checkout_session_id": obj.get("id"), "updated_at": now}
            if row.customer_id is None and customer:
                values["customer_id"] = customer
            await conn.execute(billing.update().where(billing.c.id == 1).values(**values))
            outcome = "applied"
    elif cmd.type.startswith("customer.subscription."):
        kind = cmd.type.rsplit(".", 1)[1]
        outcome = await apply_subscription(ctx, conn, obj, cmd.created, kind, None)
    elif cmd.type == "customer.updated":
        outcome = await apply_customer_default(conn, obj, cmd.created, now)
        if outcome == "applied":
            await settle_label(ctx, conn)
    elif cmd.type.startswith("payment_method."):
        detached = cmd.type == "payment_method.detached"
        await remember_payment_method(conn, obj, cmd.created, now, detached=detached)
        await settle_label(ctx, conn)
        outcome = "applied"
    elif cmd.type.startswith("invoice."):
        outcome = await apply_invoice(conn, obj, cmd.created, cmd.type, row.customer_id)
        if (
            outcome == "applied"
            and cmd.type == "invoice.payment_failed"
            and row.past_due_since is None
            and row.plan == "team"
        ):
            await conn.execute(
                billing.update().where(billing.c.id == 1).values(past_due_since=now, updated_at=now)
            )
    return outcome


async def handle_apply_subscription(ctx: CommandContext, cmd: ApplySubscription) -> dict[str, Any]:
    """Apply a subscription that Foundry read from Stripe (same ordering rules as events)."""
    assert_real_organization(ctx.key)
    outcome = await apply_subscription(
        ctx, ctx.conn, cmd.subscription, cmd.observed_at, "observed", cmd.actor_user_id
    )
    if outcome == "applied":
        await publish_billing(ctx, ctx.conn)
        kick_seat_sync_after_commit(ctx)
    return {"outcome": outcome}


#: Webhook bursts publish one ``billingUpdated`` per this many seconds instead of one per event:
#: building the billing JSON costs more than applying an event, and the organization's mailbox (where
#: Stripe's acknowledgements wait) must stay fast.
PUBLISH_DELAY_S = 0.05


def publish_billing_soon(ctx: InstanceContext) -> None:
    """Publish ``billingUpdated`` shortly, once for all the events applied meanwhile."""

    async def publish(job: InstanceContext) -> None:
        await asyncio.sleep(PUBLISH_DELAY_S)
        async with job.write() as conn:
            await publish_billing(job, conn)

    ctx.start_job("billing-publish", publish, again_if_running=True)


#: Attempts to read a subscription whose same-second states disagreed, and the first wait between.
REREAD_ATTEMPTS = 6
REREAD_FIRST_WAIT_S = 1.0


def reread_subscription_soon(ctx: InstanceContext, sub_id: str) -> None:
    """Read ``sub_id`` from Stripe in a job and apply it as observed now (retrying while Stripe
    fails; the state in force stays meanwhile)."""

    async def reread(job: InstanceContext) -> None:
        wait = REREAD_FIRST_WAIT_S
        for attempt in range(1, REREAD_ATTEMPTS + 1):
            try:
                sub = await job.services.driver("stripe").retrieve_subscription(sub_id)
                await job.self_ref.send(
                    "apply_subscription",
                    {"subscription": sub, "observedAt": int(time.time()), "reason": "reread"},
                    wait=True,
                )
                return
            except Exception as exc:
                log.warning(
                    "billing %s: reading subscription %s again failed (attempt %d of %d): %s",
                    job.key,
                    sub_id,
                    attempt,
                    REREAD_ATTEMPTS,
                    exc,
                )
                await asyncio.sleep(wait)
                wait *= 2
        log.error(
            "billing %s: subscription %s could not be read again; its state may be stale", job.key, sub_id
        )

    ctx.start_job(f"billing-reread:{sub_id}", reread, again_if_running=True)


def kick_seat_sync_after_commit(ctx: InstanceContext) -> None:
    """Start the seat sync job (it waits for this transaction: it reads under the write lock)."""
    from actors.organization.billing_sync import run_seat_sync

    ctx.start_job(SEAT_SYNC_JOB, run_seat_sync, again_if_running=True)
