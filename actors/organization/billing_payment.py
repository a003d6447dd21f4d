"""The payment method shown in billing ("Visa •••• 4242"), kept current from Stripe.

Stripe bills a subscription with its own ``default_payment_method``, else with the customer's
``invoice_settings.default_payment_method``; the label follows the same precedence. A payment method
that left the customer (``payment_method.detached``) no longer counts, so the next source shows.

Webhooks mostly carry payment methods as bare ids (``"pm_…"``): the pointers (subscription default,
customer default) are applied from the events, each under its own ordering guard, and a payment
method known only by its id is read from Stripe by a job of the organization (`run_refresh`), never
in the webhook's acknowledgement path. The job's work is derived from the stored state (a pointer to a
payment method without a label), so it resumes at wake after a restart, and it retries with backoff
while Stripe fails; until it succeeds, the previous label stays.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from actors.organization.billing_state import audit_plan_change, load_billing, publish_billing
from actors.organization.schema import billing, billing_payment_methods
from foundry.errors import DriverError, FoundryError, NotFound
from foundry.ids import APP_SHELL_ID
from foundry.runtime.context import InstanceContext

log = logging.getLogger(__name__)

REFRESH_JOB = "billing-payment-method"
#: A pointer whose source names no payment method (NULL in the column means "not known yet").
NONE = ""

_CARD_BRANDS = {
    "amex": "American Express",
    "cartes_bancaires": "Cartes Bancaires",
    "diners": "Diners Club",
    "discover": "Discover",
    "eftpos_au": "eftpos",
    "interac": "Interac",
    "jcb": "JCB",
    "link": "Link",
    "mastercard": "Mastercard",
    "unionpay": "UnionPay",
    "visa": "Visa",
}
#: Display names of payment method types whose name is not its id title-cased.
_TYPE_NAMES = {
    "acss_debit": "Pre-authorized Debit",
    "au_becs_debit": "BECS Direct Debit",
    "bacs_debit": "Bacs Direct Debit",
    "cashapp": "Cash App Pay",
    "ideal": "iDEAL",
    "link": "Link",
    "nz_bank_account": "NZ Bank Account",
    "paypal": "PayPal",
    "sepa_debit": "SEPA Debit",
    "us_bank_account": "US Bank Account",
}
#: Type-specific fields worth keeping from a payment method (everything a label is made of).
LABEL_FIELDS = ("brand", "display_brand", "last4", "bank_name")


def payment_method_label(pm: Any) -> str | None:
    """``Visa •••• 4242``, ``SEPA Debit •••• 3000``, ``Link``… from an expanded payment method.

    A bare id says nothing to show: None.
    """
    if not isinstance(pm, dict):
        return None
    kind = pm.get("type") if isinstance(pm.get("type"), str) else None
    if kind is None and isinstance(pm.get("card"), dict):
        kind = "card"
    if not kind:
        return None
    details: dict[str, Any] = pm[kind] if isinstance(pm.get(kind), dict) else {}
    last4 = details.get("last4") if isinstance(details.get("last4"), str) else None
    if kind == "card":
        brand = str(details.get("brand") or "card")
        name = _CARD_BRANDS.get(brand, brand.replace("_", " ").title())
        return f"{name} •••• {last4 or '????'}"
    if kind == "us_bank_account" and isinstance(details.get("bank_name"), str) and details["bank_name"]:
        name = str(details["bank_name"])
    else:
        name = _TYPE_NAMES.get(kind, kind.replace("_", " ").title())
    return f"{name} •••• {last4}" if last4 else name


def trim_payment_method(pm: dict[str, Any]) -> dict[str, Any]:
    """The fields of a payment method that the label and the ownership check read."""
    out: dict[str, Any] = {k: pm.get(k) for k in ("id", "object", "type", "customer") if k in pm}
    kind = pm.get("type")
    if isinstance(kind, str) and isinstance(pm.get(kind), dict):
        out[kind] = {k: pm[kind].get(k) for k in LABEL_FIELDS if k in pm[kind]}
    elif isinstance(pm.get("card"), dict):
        out["card"] = {k: pm["card"].get(k) for k in LABEL_FIELDS if k in pm["card"]}
    return out


def pointer_id(value: Any) -> str | None:
    """The id of a payment method given as an id or as an expanded object."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict) and isinstance(value.get("id"), str) and value["id"]:
        return str(value["id"])
    return None


# ------------------------------------------------------------------------------------------ state


async def remember_payment_method(
    conn: AsyncConnection, pm: Any, created: int, now_ms: int, *, detached: bool = False
) -> None:
    """Record what an expanded payment method (or a detachment) says, unless a newer state is known.

    A detachment is final: no later-delivered ``attached`` or read brings the method back.
    """
    pm_id = pointer_id(pm)
    if pm_id is None:
        return
    label = payment_method_label(pm)
    if label is None and not detached:
        return  # an id alone: nothing to remember (the refresh job reads it)
    values: dict[str, Any] = {
        "label": label,
        "detached": detached,
        "unreadable": False,
        "state_created": created,
        "updated_at": now_ms,
    }
    stmt = sqlite_insert(billing_payment_methods).values(payment_method_id=pm_id, **values)
    if detached:
        # Keep the label a detachment does not carry; detached wins whatever its time.
        update: dict[str, Any] = {
            "detached": True,
            "label": sa.func.coalesce(stmt.excluded.label, billing_payment_methods.c.label),
            "state_created": sa.func.max(
                stmt.excluded.state_created, billing_payment_methods.c.state_created
            ),
            "updated_at": now_ms,
        }
        await conn.execute(stmt.on_conflict_do_update(index_elements=["payment_method_id"], set_=update))
        return
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["payment_method_id"],
            set_=values,
            where=sa.and_(
                billing_payment_methods.c.detached.is_(False),
                sa.or_(
                    billing_payment_methods.c.label.is_(None),
                    billing_payment_methods.c.state_created <= created,
                ),
            ),
        )
    )


async def apply_customer_default(
    conn: AsyncConnection, customer: dict[str, Any], created: int, now_ms: int, *, read: bool = False
) -> str:
    """Apply a customer's ``invoice_settings.default_payment_method`` as of Stripe time ``created``
    (``read``: Foundry read it from Stripe at that time, rather than an event saying it).

    Stripe's times are whole seconds, so two events of one second may arrive in either order: when
    one names another default than the state applied at its very second, which one is newer is
    unknown, and the default is read from Stripe again (the label shown stays meanwhile).

    Returns ``applied``, ``stale`` (a newer customer state is applied) or ``ignored`` (the object
    does not say).
    """
    settings = customer.get("invoice_settings")
    if not isinstance(settings, dict) or "default_payment_method" not in settings:
        return "ignored"
    row = await load_billing(conn)
    if row is None:
        return "ignored"
    stored = row.customer_state_created
    # A read settles a default that is not known whatever the times say (a read is Stripe's state
    # now, whatever clock skew stamped the events).
    settles = read and row.customer_payment_method_id is None
    if stored is not None and created < stored and not settles:
        return "stale"
    value = settings["default_payment_method"]
    await remember_payment_method(conn, value, created, now_ms)
    pointer: str | None = pointer_id(value) or NONE
    if not read and created == stored and pointer != row.customer_payment_method_id:
        pointer = None  # not known: read it (see above)
    await conn.execute(
        billing.update()
        .where(billing.c.id == 1)
        .values(customer_payment_method_id=pointer, customer_state_created=max(created, stored or 0))
    )
    return "applied"


@dataclass(frozen=True)
class _Resolution:
    """What the label should be, or what must be read from Stripe first."""

    label: str | None
    read: tuple[str, str] | None = None  # ("subscription" | "customer" | "payment_method", id)


async def _resolve(conn: AsyncConnection) -> _Resolution | None:
    """The label as Stripe bills, from the stored pointers (``NONE``: the source names none; None:
    not known yet, to be read)."""
    row = await load_billing(conn)
    if row is None:
        return None
    keep = row.payment_method
    if row.subscription_id is None:
        return _Resolution(keep)  # no subscription: nothing is billed, nothing to follow
    sources = (("subscription", row.sub_payment_method_id), ("customer", row.customer_payment_method_id))
    for source, pm_id in sources:
        if pm_id is None:  # never seen: ask Stripe (rows from before these pointers were kept, too)
            owner = row.subscription_id if source == "subscription" else row.customer_id
            if owner is None or (source == "subscription" and row.sub_deleted):
                continue
            return _Resolution(keep, (source, str(owner)))
        if pm_id == NONE:
            continue
        known = (
            await conn.execute(
                sa.select(billing_payment_methods).where(billing_payment_methods.c.payment_method_id == pm_id)
            )
        ).first()
        if known is None or (known.label is None and not known.detached and not known.unreadable):
            return _Resolution(keep, ("payment_method", str(pm_id)))
        if known.detached:
            continue  # Stripe falls back to the next source too
        return _Resolution(known.label)
    return _Resolution(None)


async def settle_label(ctx: InstanceContext, conn: AsyncConnection) -> bool:
    """Set the shown label from the pointers (inside a write); start the refresh job when a payment
    method must be read first. Returns True when the shown label changed."""
    resolution = await _resolve(conn)
    if resolution is None:
        return False
    if resolution.read is not None:
        ctx.start_job(REFRESH_JOB, run_refresh, again_if_running=True)
    row = await load_billing(conn)
    if row is None or row.payment_method == resolution.label:
        return False
    now = ctx.now_ms()
    await conn.execute(
        billing.update().where(billing.c.id == 1).values(payment_method=resolution.label, updated_at=now)
    )
    # Changed in Stripe's portal (or by Checkout): who did it is Stripe's to know, not Foundry's.
    audit_plan_change(
        ctx,
        "billing.payment_method_changed",
        {"from": row.payment_method, "to": resolution.label},
        f"payment-method:{now}:{resolution.label}",
        None,
    )
    return True


# ------------------------------------------------------------------------------------------ the job


async def run_refresh(ctx: InstanceContext) -> None:
    """Read from Stripe what the label needs (see the module docstring) until nothing is missing."""
    settings = ctx.services.settings.stripe
    attempts = 0
    done: tuple[str, str] | None = None
    while True:
        async with ctx.read(consistent=True) as conn:
            resolution = await _resolve(conn)
        if resolution is None or resolution.read is None:
            return
        if resolution.read == done:
            # A read that answered yet settled nothing: never a loop of calls to Stripe.
            log.error("billing %s: reading %s from Stripe settled nothing; giving up", ctx.key, done)
            return
        kind, ident = resolution.read
        observed = int(time.time())  # Stripe's clock: the read is Stripe's state as of now
        try:
            driver = ctx.services.driver("stripe")
            if kind == "payment_method":
                found = await driver.retrieve_payment_method(ident)
            elif kind == "subscription":
                found = await driver.retrieve_subscription(ident)
            else:
                found = await driver.retrieve_customer(ident)
        except NotFound as exc:
            log.warning("billing %s: Stripe has no %s %s any more: %s", ctx.key, kind, ident, exc)
            await _record_gone(ctx, kind, ident, observed, unreadable=False)
            continue
        except DriverError as exc:
            if exc.status is not None and 400 <= exc.status < 500 and exc.status not in (408, 409, 429):
                log.error("billing %s: Stripe refused to show %s %s: %s", ctx.key, kind, ident, exc)
                await _record_gone(ctx, kind, ident, observed, unreadable=True)
                continue
            attempts += 1
            await _back_off(ctx, kind, ident, attempts, exc, settings.retry_base_s, settings.retry_cap_s)
            continue
        except (FoundryError, RuntimeError) as exc:
            attempts += 1
            await _back_off(ctx, kind, ident, attempts, exc, settings.retry_base_s, settings.retry_cap_s)
            continue
        attempts = 0
        done = (kind, ident)
        async with ctx.write() as conn:
            current = await load_billing(conn)
            if current is None:
                return
            if kind == "payment_method":
                ours = current.customer_id is not None and found.get("customer") == current.customer_id
                if ours and payment_method_label(found) is not None:
                    await remember_payment_method(conn, found, observed, ctx.now_ms())
                else:
                    # Not the customer's any more (detached meanwhile), or nothing to show.
                    await _record_gone(ctx, kind, ident, observed, unreadable=ours, conn=conn)
                    continue
            elif kind == "subscription":
                await _apply_subscription_default(conn, current, found, observed, ctx.now_ms())
            elif await apply_customer_default(conn, found, observed, ctx.now_ms(), read=True) == "ignored":
                # No invoice settings (a deleted customer, say): its default counts as none.
                await _record_gone(ctx, kind, ident, observed, unreadable=False, conn=conn)
                continue
            if await settle_label(ctx, conn):
                await publish_billing(ctx, conn)


async def _apply_subscription_default(
    conn: AsyncConnection, row: Any, sub: dict[str, Any], observed: int, now_ms: int
) -> None:
    """The subscription's default payment method as read (only the pointer: the rest of the
    subscription follows its own events), unless a newer subscription state was applied meanwhile."""
    value = sub.get("default_payment_method")
    await remember_payment_method(conn, value, observed, now_ms)
    if sub.get("id") != row.subscription_id:
        return
    if row.sub_payment_method_id is not None and (row.sub_state_created or 0) > observed:
        return
    await conn.execute(
        billing.update().where(billing.c.id == 1).values(sub_payment_method_id=pointer_id(value) or NONE)
    )


async def _back_off(
    ctx: InstanceContext, kind: str, ident: str, attempts: int, exc: Exception, base: float, cap: float
) -> None:
    delay = min(cap, base * 2 ** (attempts - 1)) * random.uniform(0.8, 1.2)
    log.warning(
        "billing %s: reading %s %s from Stripe failed (attempt %d), retry in %.1fs: %s",
        ctx.key,
        kind,
        ident,
        attempts,
        delay,
        exc,
    )
    await asyncio.sleep(delay)


async def _record_gone(
    ctx: InstanceContext,
    kind: str,
    ident: str,
    observed: int,
    *,
    unreadable: bool,
    conn: AsyncConnection | None = None,
) -> None:
    """A read that can never give a label: the method counts as detached (or shows nothing)."""

    async def record(c: AsyncConnection) -> None:
        if kind == "customer":
            # Nothing to learn from this customer: its default counts as none until an event says.
            await apply_customer_default(
                c, {"invoice_settings": {"default_payment_method": None}}, observed, ctx.now_ms(), read=True
            )
        elif kind == "subscription":
            await c.execute(billing.update().where(billing.c.id == 1).values(sub_payment_method_id=NONE))
        elif unreadable:
            await c.execute(
                sqlite_insert(billing_payment_methods)
                .values(
                    payment_method_id=ident,
                    label=None,
                    unreadable=True,
                    state_created=observed,
                    updated_at=ctx.now_ms(),
                )
                .on_conflict_do_update(
                    index_elements=["payment_method_id"],
                    set_={"unreadable": True, "updated_at": ctx.now_ms()},
                )
            )
        else:
            await remember_payment_method(c, {"id": ident}, observed, ctx.now_ms(), detached=True)
        if await settle_label(ctx, c):
            await publish_billing(ctx, c)

    if conn is not None:
        await record(conn)
        return
    async with ctx.write() as c:
        await record(c)


async def resume_refresh(ctx: InstanceContext) -> None:
    """At wake: restart the job when a label waits for a read (a restart must not strand it)."""
    if ctx.key == APP_SHELL_ID:
        return
    async with ctx.read() as conn:
        resolution = await _resolve(conn)
    if resolution is not None and resolution.read is not None:
        ctx.start_job(REFRESH_JOB, run_refresh)
