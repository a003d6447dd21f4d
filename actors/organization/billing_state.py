"""An organization's billing state: the row, its JSON, the prompt gate and the seat ledger.

The plan and status follow Stripe (through webhooks and Foundry's own reads); seats follow members'
first prompts. Everything here runs inside the organization's serialized writes, so a seat is taken
exactly once however many first prompts race.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from actors.organization.schema import billing, billing_invoices, billing_seat_changes, billing_seats, members
from foundry.config import StripeSettings
from foundry.errors import BillingInactive, NotFound, SeatLimitReached
from foundry.runtime.context import InstanceContext

AUDIT_ROLE = "audit-log"
SEAT_SYNC_JOB = "billing-seat-sync"
PLANS = ("free", "team")
#: Invoices listed in the snapshot (newest first).
INVOICE_LIMIT = 24
DAY_MS = 86_400_000


async def load_billing(conn: AsyncConnection) -> sa.Row[Any] | None:
    return (await conn.execute(sa.select(billing).where(billing.c.id == 1))).first()


async def ensure_billing(conn: AsyncConnection, now: int) -> sa.Row[Any]:
    """The billing row, created as ``free``/``active`` on first use (inside a write)."""
    row = await load_billing(conn)
    if row is None:
        await conn.execute(billing.insert().values(id=1, plan="free", status="active", updated_at=now))
        row = await load_billing(conn)
        assert row is not None
    return row


async def seat_count(conn: AsyncConnection) -> int:
    return int((await conn.execute(sa.select(sa.func.count()).select_from(billing_seats))).scalar() or 0)


def seat_limit(plan: str, settings: StripeSettings, paid_seats: int | None) -> int | None:
    """Seats the plan allows before a new member is refused (None: no fixed limit; ``team`` grows)."""
    return settings.free_seats if plan == "free" else None


async def build_billing(conn: AsyncConnection, settings: StripeSettings) -> dict[str, Any]:
    """The whole billing state, for admins: ``GET …/billing``, the ``billing:<org>`` topic and the
    admin's organization read. Members get `billing_summary` of it."""
    row = await load_billing(conn)
    plan = row.plan if row else "free"
    seats = [
        {"userId": r.user_id, "login": r.login, "takenAt": r.taken_at}
        for r in (await conn.execute(sa.select(billing_seats).order_by(billing_seats.c.taken_at))).all()
    ]
    pending = int(
        (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(billing_seat_changes)
                .where(billing_seat_changes.c.status == "pending")
            )
        ).scalar()
        or 0
    )
    last_error = (
        await conn.execute(
            sa.select(billing_seat_changes.c.last_error)
            .where(billing_seat_changes.c.status.in_(["pending", "failed"]))
            .order_by(billing_seat_changes.c.id.desc())
            .limit(1)
        )
    ).scalar()
    invoices = [
        {
            "id": r.invoice_id,
            "number": r.number,
            "status": r.status,
            "amountDue": r.amount_due,
            "amountPaid": r.amount_paid,
            "currency": r.currency,
            "hostedInvoiceUrl": r.hosted_invoice_url,
            "createdAt": r.created * 1000,
            "periodEnd": r.period_end * 1000 if r.period_end else None,
        }
        for r in (
            await conn.execute(
                sa.select(billing_invoices)
                .order_by(billing_invoices.c.created.desc(), billing_invoices.c.invoice_id.desc())
                .limit(INVOICE_LIMIT)
            )
        ).all()
    ]
    grace_ends = None
    if row is not None and row.past_due_since is not None:
        grace_ends = row.past_due_since + settings.grace_days * DAY_MS
    return {
        "enabled": settings.configured,
        "plan": plan,
        "status": row.status if row else "active",
        "seats": {
            "used": len(seats),
            "paid": row.paid_seats if row and plan == "team" else None,
            "limit": seat_limit(plan, settings, row.paid_seats if row else None),
            "members": seats,
        },
        # The free plan renews nothing: the dates of a subscription that ended are not shown.
        "currentPeriodEnd": row.current_period_end if row and plan == "team" else None,
        "trialEnd": row.trial_end if row and plan == "team" else None,
        "cancelAt": row.cancel_at if row and plan == "team" else None,
        "pastDueSince": row.past_due_since if row else None,
        "graceEndsAt": grace_ends,
        "paymentMethod": row.payment_method if row else None,
        "hasCustomer": bool(row and row.customer_id),
        "freeSeats": settings.free_seats,
        "sync": {"pending": pending, "lastError": last_error},
        "invoices": invoices,
        "updatedAt": row.updated_at if row else None,
    }


def check_active(row: sa.Row[Any], settings: StripeSettings, now: int, organization_id: str) -> None:
    """Refuse a new prompt when the subscription is canceled or past due beyond its grace period."""
    if row.plan != "team":
        return
    if row.status == "canceled":
        raise BillingInactive(
            f"the team subscription of {organization_id!r} is canceled: new prompts are paused. "
            "An admin can subscribe again or switch to the free plan on the billing page"
        )
    grace_over = row.past_due_since is not None and now >= row.past_due_since + settings.grace_days * DAY_MS
    if row.status == "past_due" and grace_over:
        raise BillingInactive(
            f"the team subscription of {organization_id!r} is past due for more than "
            f"{settings.grace_days} days: new prompts are paused until an admin updates the "
            "payment method in the billing portal"
        )


async def _seat_check(
    ctx: InstanceContext, conn: AsyncConnection, user_id: str, *, write: bool = True
) -> tuple[bool, str, int, Any]:
    """``(held, login, seats used, billing row)`` for ``user_id``, raising what a prompt would get
    (``write``: inside the write that may take the seat, the billing row is created if missing).

    Raises:
        NotFound: the user is not a member.
        SeatLimitReached: the plan has no seat left for a new member (402 ``seat_limit``).
        BillingInactive: the subscription is canceled or past due beyond grace (402).
    """
    settings = ctx.services.settings.stripe
    enforce = settings.configured
    now = ctx.now_ms()
    row = await ensure_billing(conn, now) if enforce and write else await load_billing(conn)
    if enforce and row is not None:
        check_active(row, settings, now, ctx.key)
    held = (
        await conn.execute(sa.select(billing_seats.c.user_id).where(billing_seats.c.user_id == user_id))
    ).first()
    if held is not None:
        return True, "", 0, row
    member = (await conn.execute(sa.select(members.c.login).where(members.c.user_id == user_id))).first()
    if member is None:
        raise NotFound(f"organization {ctx.key!r} not found")
    used = await seat_count(conn)
    plan = row.plan if row is not None else "free"
    limit = seat_limit(plan, settings, row.paid_seats if row else None)
    if enforce and limit is not None and used >= limit:
        raise SeatLimitReached(
            f"the {plan} plan of {ctx.key!r} includes {limit} seat{'s' if limit != 1 else ''} and "
            f"{'it is' if used == 1 else 'they are'} taken: {member.login} needs a seat to send prompts. "
            "An admin can upgrade to the team plan (paid per seat) on the billing page, or release a seat"
        )
    return False, str(member.login), used, row


async def take_seat(ctx: InstanceContext, conn: AsyncConnection, user_id: str) -> bool:
    """Give ``user_id`` a seat on their first prompt; check the plan allows the prompt at all.

    Runs inside the organization's write transaction (serialized), so concurrent first prompts of one
    member take exactly one seat. Returns True when a seat was taken now. Limits apply only while
    billing is configured; without Stripe, seats are still counted.

    Raises:
        NotFound: the user is not a member.
        SeatLimitReached: the plan has no seat left for a new member (402 ``seat_limit``).
        BillingInactive: the subscription is canceled or past due beyond grace (402).
    """
    held, login, used, row = await _seat_check(ctx, conn, user_id)
    if held:
        return False
    await conn.execute(billing_seats.insert().values(user_id=user_id, login=login, taken_at=ctx.now_ms()))
    await record_seat_change(ctx, conn, "taken", user_id, login, used + 1, row)
    return True


async def prompt_standing(ctx: InstanceContext, conn: AsyncConnection, user_id: str) -> dict[str, Any]:
    """Whether ``user_id`` holds a seat, and what their next prompt would be refused with (None: it
    would be taken), without taking anything: a member learns it before writing a prompt."""
    try:
        held, _, _, _ = await _seat_check(ctx, conn, user_id, write=False)
    except (SeatLimitReached, BillingInactive) as exc:
        held = (
            await conn.execute(sa.select(billing_seats.c.user_id).where(billing_seats.c.user_id == user_id))
        ).first() is not None
        return {"held": held, "refusal": {"error": exc.code, "detail": exc.detail}}
    return {"held": held, "refusal": None}


async def record_seat_change(
    ctx: InstanceContext,
    conn: AsyncConnection,
    kind: str,
    user_id: str,
    login: str,
    seats_after: int,
    row: sa.Row[Any] | None,
    actor_user_id: str | None = None,
    reason: str | None = None,
) -> int:
    """Write the seat change (to be synced to Stripe when a subscription exists) and its audit entry."""
    syncable = (
        row is not None and row.plan == "team" and row.subscription_item_id and row.status != "canceled"
    )
    now = ctx.now_ms()
    inserted = (
        await conn.execute(
            billing_seat_changes.insert().values(
                kind=kind,
                user_id=user_id,
                seats_after=seats_after,
                status="pending" if syncable else "skipped",
                created_at=now,
                next_attempt_at=now if syncable else None,
            )
        )
    ).inserted_primary_key
    assert inserted is not None
    change_id = int(inserted[0])
    # The billing state changed for every member (who may prompt now): its time moves, so pages
    # that ask about their own standing ask again.
    await conn.execute(billing.update().where(billing.c.id == 1).values(updated_at=now))
    ctx.send_after_commit(
        AUDIT_ROLE,
        ctx.key,
        "append",
        {
            "kind": f"billing.seat_{kind}",
            # A seat freed because its holder left is nobody's action.
            "actorUserId": actor_user_id or (None if reason else user_id),
            "payload": {
                "userId": user_id,
                "login": login,
                "seatsAfter": seats_after,
                "seatChangeId": change_id,
                **({"reason": reason} if reason else {}),
            },
        },
        command_id=f"{ctx.key}:billing-seat-change:{change_id}",
    )
    return int(change_id)


async def release_seats_of_departed(ctx: InstanceContext, conn: AsyncConnection, user_ids: list[str]) -> int:
    """Free the seats of people who left the organization, in the open transaction: nobody pays for
    a member who is gone, and on the free plan their seat goes to whoever prompts next. Returns how
    many seats were released."""
    if not user_ids:
        return 0
    held = (await conn.execute(sa.select(billing_seats).where(billing_seats.c.user_id.in_(user_ids)))).all()
    if not held:
        return 0
    await conn.execute(billing_seats.delete().where(billing_seats.c.user_id.in_([s.user_id for s in held])))
    row = await ensure_billing(conn, ctx.now_ms())
    used = await seat_count(conn)
    for seat in sorted(held, key=lambda s: s.user_id):
        # One row per seat for Stripe's sync; the count after all of them is what Stripe ends at.
        await record_seat_change(
            ctx, conn, "released", seat.user_id, seat.login, used, row, reason="left the organization"
        )
    return len(held)


def audit_plan_change(
    ctx: InstanceContext, kind: str, payload: dict[str, Any], dedupe: str, actor: str | None
) -> None:
    """An audit entry for a plan/status change; ``dedupe`` makes a replay harmless."""
    ctx.send_after_commit(
        AUDIT_ROLE,
        ctx.key,
        "append",
        {"kind": kind, "actorUserId": actor, "payload": payload},
        command_id=f"{ctx.key}:billing:{dedupe}",
    )


def billing_topic(organization_id: str) -> str:
    """The admins-only topic carrying the whole billing state (`build_billing`)."""
    return f"billing:{organization_id}"


#: Tells the realtime gateway to check every subscriber's access to a topic again before anything
#: newer (the gateway's ``ACCESS_CHANGED_EVENT``; actors do not import the gateway).
ACCESS_CHANGED = "accessChanged"


def billing_summary(details: dict[str, Any]) -> dict[str, Any]:
    """What every member may see of the billing state: enough to use the product, nothing more.

    Invoices, the payment method, who holds seats, seat counts, dates, Stripe links and ids are for
    admins only (they come with `build_billing`). This is the only function that makes the
    member-facing form: the organization read, the ``organization:<org>`` snapshot and its
    ``billingUpdated`` events all use it.

    ``seatLimitReached``: a member without a seat cannot send a first prompt until an admin upgrades
    or releases a seat. ``freeSeats``: the seats of the free plan (this server's setting).
    """
    seats = details["seats"]
    return {
        "enabled": details["enabled"],
        "plan": details["plan"],
        "status": details["status"],
        "seatLimitReached": seats["limit"] is not None and seats["used"] >= seats["limit"],
        "freeSeats": details["freeSeats"],
        "updatedAt": details["updatedAt"],
    }


async def publish_billing(ctx: InstanceContext, conn: AsyncConnection) -> None:
    """Publish ``billingUpdated``: the whole billing state on ``billing:<org>`` (admins) and its
    member-safe summary on ``organization:<org>`` (every member)."""
    from actors.organization.state import organization_topic

    details = await build_billing(conn, ctx.services.settings.stripe)
    ctx.publish(billing_topic(ctx.key), "billingUpdated", details, plain=True)
    ctx.publish(organization_topic(ctx.key), "billingUpdated", billing_summary(details), plain=True)
