"""Billing: the plan and seats (admins), Stripe Checkout and portal, and Stripe's webhook.

Authorization as everywhere: signed out 401, another organization 404, a member who is not an
admin 403 (except ``…/billing/seat``, each member's own standing). Without Stripe settings every
admin billing route answers 503 naming the missing variables; the rest of the product keeps working
(seats are still counted, nothing is limited).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel, Field

from foundry import metrics
from foundry.config import Settings
from foundry.errors import Forbidden, NotConfigured
from foundry.http.deps import (
    Admin,
    CurrentCaller,
    Member,
    RuntimeDep,
    SameSiteWrite,
    SettingsDep,
    require_member,
)
from foundry.http.errors import error_body
from foundry.http.strict_body import BODY_CONFIG, StrictJsonRoute
from foundry.webhooks.stripe import MAX_WEBHOOK_BYTES, StripeWebhookIngest, StripeWebhookRejected

router = APIRouter(tags=["billing"], route_class=StrictJsonRoute)
_STRICT = BODY_CONFIG
ORG = "/v1/organizations/{org}/billing"


class CheckoutBody(BaseModel):
    model_config = _STRICT
    plan: Literal["team"] = Field(description="the paid plan to subscribe to; only `team` exists")


class PlanBody(BaseModel):
    model_config = _STRICT
    plan: Literal["free"] = Field(
        description="`free`: end the team subscription now; upgrades go through checkout"
    )


def _configured(settings: Settings) -> None:
    missing = settings.stripe.missing()
    if missing:
        raise NotConfigured(f"billing is not configured: set {', '.join(missing)}")


def _billing_page(settings: Settings, org: str) -> str:
    return f"{settings.base_url}/o/{quote(org)}/billing"


@router.get(ORG, summary="Plan, status, seats and invoices (admins)")
async def get_billing(admin: Admin, runtime: RuntimeDep, settings: SettingsDep) -> dict[str, Any]:
    _configured(settings)
    result: dict[str, Any] = await runtime.call("organization", admin.organization_id, "billing")
    return result


@router.post(
    ORG + "/checkout",
    summary="Start Stripe Checkout for the team plan (admins)",
    dependencies=[SameSiteWrite],
)
async def start_checkout(
    body: CheckoutBody, admin: Admin, runtime: RuntimeDep, settings: SettingsDep
) -> dict[str, Any]:
    """``{"url", "sessionId"}``: send the browser to ``url``; Stripe returns it to
    ``/v1/billing/checkout/complete``, which lands on the dashboard's billing page."""
    _configured(settings)
    org = admin.organization_id
    success = (
        f"{settings.base_url}/v1/billing/checkout/complete"
        f"?organizationId={quote(org)}&session_id={{CHECKOUT_SESSION_ID}}"
    )
    result: dict[str, Any] = await runtime.call(
        "organization",
        org,
        "start_checkout",
        {
            "userId": admin.caller.user_id,
            "plan": body.plan,
            "successUrl": success,
            "cancelUrl": _billing_page(settings, org) + "?checkout=canceled",
        },
    )
    return result


@router.get(
    "/v1/billing/checkout/complete", summary="Stripe Checkout's return: apply, then go to the billing page"
)
async def complete_checkout(
    caller: CurrentCaller,
    runtime: RuntimeDep,
    settings: SettingsDep,
    organization_id: Annotated[
        str, Query(alias="organizationId", min_length=1, max_length=200, pattern=r"^[a-z0-9][a-z0-9-]*$")
    ],
    session_id: Annotated[str, Query(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_]+$")],
) -> RedirectResponse:
    """Re-checks membership and the admin role (the URL can be replayed by anyone), checks the
    session is this organization's, applies its subscription, then 302 to ``/o/<org>/billing``."""
    member = await require_member(organization_id, caller, runtime)
    if not member.is_admin:
        raise Forbidden(f"only admins of {organization_id!r} may do this")
    _configured(settings)
    await runtime.call(
        "organization",
        organization_id,
        "complete_checkout",
        {"userId": caller.user_id, "sessionId": session_id},
    )
    return RedirectResponse(f"/o/{quote(organization_id)}/billing?checkout=success", status_code=302)


@router.post(ORG + "/portal", summary="Open the Stripe Billing Portal (admins)", dependencies=[SameSiteWrite])
async def open_portal(admin: Admin, runtime: RuntimeDep, settings: SettingsDep) -> dict[str, Any]:
    """``{"url"}`` of a portal session (payment method, invoices); it returns to the billing page."""
    _configured(settings)
    result: dict[str, Any] = await runtime.call(
        "organization",
        admin.organization_id,
        "open_billing_portal",
        {"userId": admin.caller.user_id, "returnUrl": _billing_page(settings, admin.organization_id)},
    )
    return result


@router.post(
    ORG + "/cancel", summary="Cancel the team plan at the period's end (admins)", dependencies=[SameSiteWrite]
)
async def cancel(admin: Admin, runtime: RuntimeDep, settings: SettingsDep) -> dict[str, Any]:
    _configured(settings)
    result: dict[str, Any] = await runtime.call(
        "organization", admin.organization_id, "cancel_subscription", {"userId": admin.caller.user_id}
    )
    return result


@router.post(ORG + "/resume", summary="Undo a scheduled cancellation (admins)", dependencies=[SameSiteWrite])
async def resume(admin: Admin, runtime: RuntimeDep, settings: SettingsDep) -> dict[str, Any]:
    _configured(settings)
    result: dict[str, Any] = await runtime.call(
        "organization", admin.organization_id, "resume_subscription", {"userId": admin.caller.user_id}
    )
    return result


@router.post(ORG + "/plan", summary="Switch to the free plan (admins)", dependencies=[SameSiteWrite])
async def switch_plan(
    body: PlanBody, admin: Admin, runtime: RuntimeDep, settings: SettingsDep
) -> dict[str, Any]:
    _configured(settings)
    result: dict[str, Any] = await runtime.call(
        "organization", admin.organization_id, "switch_to_free", {"userId": admin.caller.user_id}
    )
    return result


@router.get(ORG + "/seat", summary="The caller's own seat and prompt standing (any member)")
async def own_seat(member: Member, runtime: RuntimeDep) -> dict[str, Any]:
    """``{"held": bool, "refusal": {"error", "detail"} | null}``: what a prompt of the caller would
    get now (402 ``seat_limit`` or ``billing_inactive``), asked before they write one. Answers
    ``refusal: null`` when billing is not configured (nothing is limited)."""
    result: dict[str, Any] = await runtime.call(
        "organization", member.organization_id, "seat", {"userId": member.caller.user_id}
    )
    return result


@router.delete(
    ORG + "/seats/{login}", summary="Release a member's seat (admins)", dependencies=[SameSiteWrite]
)
async def release_seat(
    login: Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9-]+$")],
    admin: Admin,
    runtime: RuntimeDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    """``{"released", "seatsUsed"}``; 404 when ``login`` holds no seat."""
    _configured(settings)
    result: dict[str, Any] = await runtime.call(
        "organization",
        admin.organization_id,
        "release_seat",
        {"userId": admin.caller.user_id, "login": login},
    )
    return result


def _ingest(request: Request) -> StripeWebhookIngest:
    ingest: StripeWebhookIngest | None = getattr(request.app.state, "stripe_webhooks", None)
    if ingest is None:
        settings: Settings = request.app.state.settings
        secrets = [s.get_secret_value() for s in settings.stripe.webhook_secrets]
        ingest = StripeWebhookIngest(request.app.state.runtime, secrets)
        request.app.state.stripe_webhooks = ingest
    return ingest


@router.post(
    "/v1/webhooks/stripe",
    summary="Stripe webhook: verify, record, enqueue",
    max_body_size=MAX_WEBHOOK_BYTES,
    responses={400: {"description": "missing or bad signature, stale timestamp, malformed JSON"}},
)
async def stripe_webhook(request: Request) -> JSONResponse:
    """200 once the event is durably queued on its organization (processed afterwards); a
    redelivery is acknowledged again and has no second effect."""
    body = await request.body()
    try:
        result = await _ingest(request).ingest(body, request.headers)
    except StripeWebhookRejected as exc:
        metrics.WEBHOOKS_RECEIVED.labels("stripe", "rejected").inc()
        return JSONResponse(error_body(exc.code, exc.detail), status_code=exc.status)
    metrics.WEBHOOKS_RECEIVED.labels("stripe", "accepted").inc()
    return JSONResponse(result, status_code=200)
