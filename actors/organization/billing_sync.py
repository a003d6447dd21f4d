"""Stripe's seat quantity follows the seat ledger: one call per seat change, retried durably.

Each pending row of ``billing_seat_changes`` becomes exactly one successful
``SubscriptionItem.modify(quantity=seats_after)`` with the idempotency key
``<org>:seat-change:<id>``, in id order, so Stripe ends at the latest count. A failure (Stripe down,
a timeout) keeps the row pending with its attempt count, error and next attempt time, and the job
waits with exponential backoff; the instance stays awake meanwhile, and a restarted instance resumes
the job at wake (`resume_seat_sync`). A refusal that no retry can change (a 4xx) marks the row
``failed``, logged at ERROR and shown in the snapshot's ``billing.sync.lastError``, and the next row
goes on. Stripe is never called while the organization's write lock is held.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import sqlalchemy as sa

from actors.organization.billing_state import SEAT_SYNC_JOB, load_billing, publish_billing
from actors.organization.schema import billing, billing_seat_changes
from foundry.errors import DriverError, FoundryError, NotFound
from foundry.ids import APP_SHELL_ID
from foundry.runtime.context import InstanceContext

log = logging.getLogger(__name__)


def seat_change_key(organization_id: str, change_id: int) -> str:
    """The idempotency key of a seat change's Stripe call (stable across retries and restarts)."""
    return f"{organization_id}:seat-change:{change_id}"


async def _next_pending(ctx: InstanceContext) -> tuple[Any, Any] | None:
    async with ctx.read(consistent=True) as conn:
        change = (
            await conn.execute(
                sa.select(billing_seat_changes)
                .where(billing_seat_changes.c.status == "pending")
                .order_by(billing_seat_changes.c.id)
                .limit(1)
            )
        ).first()
        if change is None:
            return None
        return change, await load_billing(conn)


async def run_seat_sync(ctx: InstanceContext) -> None:
    """Drain the pending seat changes (see the module docstring)."""
    settings = ctx.services.settings.stripe
    while True:
        found = await _next_pending(ctx)
        if found is None:
            return
        change, row = found
        if row is None or not row.subscription_item_id or row.status == "canceled" or row.plan != "team":
            await _finish(ctx, change.id, "skipped", None)
            continue
        try:
            driver = ctx.services.driver("stripe")
            result = await driver.set_quantity(
                row.subscription_item_id,
                change.seats_after,
                idempotency_key=seat_change_key(ctx.key, change.id),
            )
        except (NotFound, DriverError) as exc:
            status = exc.status if isinstance(exc, DriverError) else 404
            if status is not None and 400 <= status < 500 and status not in (408, 409, 429):
                log.error(
                    "billing %s: Stripe refused seat change %s (quantity %s): %s",
                    ctx.key,
                    change.id,
                    change.seats_after,
                    exc,
                )
                await _finish(ctx, change.id, "failed", str(exc))
                continue
            delay = await _retry_later(
                ctx, change.id, change.attempts + 1, str(exc), settings.retry_base_s, settings.retry_cap_s
            )
            log.warning(
                "billing %s: seat change %s not synced (attempt %d), retry in %.1fs: %s",
                ctx.key,
                change.id,
                change.attempts + 1,
                delay,
                exc,
            )
            await asyncio.sleep(delay)
            continue
        except (FoundryError, RuntimeError) as exc:
            delay = await _retry_later(
                ctx, change.id, change.attempts + 1, str(exc), settings.retry_base_s, settings.retry_cap_s
            )
            log.warning(
                "billing %s: seat change %s failed (%s); retry in %.1fs", ctx.key, change.id, exc, delay
            )
            await asyncio.sleep(delay)
            continue
        quantity = result.get("quantity") if isinstance(result, dict) else None
        await _finish(
            ctx, change.id, "synced", None, quantity if isinstance(quantity, int) else change.seats_after
        )


async def _finish(
    ctx: InstanceContext, change_id: int, status: str, error: str | None, quantity: int | None = None
) -> None:
    async with ctx.write() as conn:
        await conn.execute(
            billing_seat_changes.update()
            .where(billing_seat_changes.c.id == change_id)
            .values(status=status, last_error=error, synced_at=ctx.now_ms() if status == "synced" else None)
        )
        if quantity is not None:
            await conn.execute(
                billing.update().where(billing.c.id == 1).values(paid_seats=quantity, updated_at=ctx.now_ms())
            )
        await publish_billing(ctx, conn)


async def _retry_later(
    ctx: InstanceContext, change_id: int, attempts: int, error: str, base: float, cap: float
) -> float:
    delay = min(cap, base * 2 ** (attempts - 1)) * random.uniform(0.8, 1.2)
    async with ctx.write() as conn:
        await conn.execute(
            billing_seat_changes.update()
            .where(billing_seat_changes.c.id == change_id)
            .values(attempts=attempts, last_error=error, next_attempt_at=ctx.now_ms() + int(delay * 1000))
        )
        await publish_billing(ctx, conn)
    return float(delay)


async def resume_seat_sync(ctx: InstanceContext) -> None:
    """At wake: restart the job when seat changes wait (a restart must not strand them)."""
    if ctx.key == APP_SHELL_ID:
        return
    async with ctx.read() as conn:
        pending = (
            await conn.execute(
                sa.select(billing_seat_changes.c.id)
                .where(billing_seat_changes.c.status == "pending")
                .limit(1)
            )
        ).first()
    if pending is not None:
        ctx.start_job(SEAT_SYNC_JOB, run_seat_sync)


async def resume_billing_jobs(ctx: InstanceContext) -> None:
    """At wake: the seat sync and the payment method refresh, when they have work waiting."""
    from actors.organization.billing_payment import resume_refresh

    await resume_seat_sync(ctx)
    await resume_refresh(ctx)
