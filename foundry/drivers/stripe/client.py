"""The Stripe driver: the official SDK's ``StripeClient``, async, one idempotency key per write."""

from __future__ import annotations

import logging
from typing import Any

import stripe
from foundry.config import StripeSettings
from foundry.drivers.stripe import VENDOR
from foundry.errors import DriverError, NotFound

log = logging.getLogger(__name__)


def _plain(obj: Any) -> dict[str, Any]:
    """A Stripe object as plain JSON data."""
    out: dict[str, Any] = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
    return out


class StripeDriver:
    """Calls Stripe for one account. Safe to share within a process (one httpx pool)."""

    def __init__(self, settings: StripeSettings) -> None:
        self._client = stripe.StripeClient(
            settings.secret_key.get_secret_value(),
            base_addresses={"api": settings.api_base.rstrip("/")},
            # Retries are Foundry's (durable, with backoff); the SDK's own would multiply calls.
            max_network_retries=0,
            http_client=stripe.HTTPXClient(timeout=settings.timeout_s),
        )

    async def _do(self, what: str, call: Any) -> dict[str, Any]:
        try:
            return _plain(await call)
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 404:
                raise NotFound(f"Stripe has no {what}: {exc.user_message or exc}") from None
            raise DriverError(
                f"Stripe refused {what}: {exc.user_message or exc}", exc.http_status, VENDOR
            ) from None
        except stripe.StripeError as exc:
            log.warning("stripe %s failed: status=%s %s", what, exc.http_status, exc)
            raise DriverError(f"Stripe failed {what}: {exc}", exc.http_status, VENDOR) from None

    async def create_customer(
        self, organization_id: str, name: str, *, idempotency_key: str
    ) -> dict[str, Any]:
        """Create the organization's customer. Idempotent by key."""
        return await self._do(
            "customer creation",
            self._client.v1.customers.create_async(
                params={"name": name, "metadata": {"organizationId": organization_id}},
                options={"idempotency_key": idempotency_key},
            ),
        )

    async def create_checkout_session(
        self,
        *,
        customer: str,
        price: str,
        quantity: int,
        organization_id: str,
        success_url: str,
        cancel_url: str,
        idempotency_key: str,
        started_by: str | None = None,
    ) -> dict[str, Any]:
        """A subscription Checkout session for ``quantity`` seats of ``price``; the subscription it
        creates carries ``startedBy`` (the admin's user id) so its webhooks can name who upgraded."""
        sub_metadata = {"organizationId": organization_id}
        if started_by:
            sub_metadata["startedBy"] = started_by
        return await self._do(
            "checkout session creation",
            self._client.v1.checkout.sessions.create_async(
                params={
                    "mode": "subscription",
                    "customer": customer,
                    "client_reference_id": organization_id,
                    "line_items": [{"price": price, "quantity": quantity}],
                    "success_url": success_url,
                    "cancel_url": cancel_url,
                    "metadata": {"organizationId": organization_id},
                    "subscription_data": {"metadata": sub_metadata},
                },
                options={"idempotency_key": idempotency_key},
            ),
        )

    async def expire_checkout_session(self, session_id: str) -> dict[str, Any]:
        """Close an open Checkout session: it can no longer be paid (`DriverError` unless open)."""
        return await self._do(
            f"checkout session {session_id!r} expiry",
            self._client.v1.checkout.sessions.expire_async(session_id),
        )

    async def retrieve_checkout_session(self, session_id: str) -> dict[str, Any]:
        """A Checkout session (`NotFound` for an unknown id)."""
        return await self._do(
            f"checkout session {session_id!r}", self._client.v1.checkout.sessions.retrieve_async(session_id)
        )

    async def create_portal_session(
        self, *, customer: str, return_url: str, idempotency_key: str
    ) -> dict[str, Any]:
        """A Billing Portal session for ``customer``."""
        return await self._do(
            "billing portal session creation",
            self._client.v1.billing_portal.sessions.create_async(
                params={"customer": customer, "return_url": return_url},
                options={"idempotency_key": idempotency_key},
            ),
        )

    async def retrieve_subscription(self, subscription_id: str) -> dict[str, Any]:
        """A subscription, its default payment method expanded (for the card label)."""
        return await self._do(
            f"subscription {subscription_id!r}",
            self._client.v1.subscriptions.retrieve_async(
                subscription_id, params={"expand": ["default_payment_method"]}
            ),
        )

    async def retrieve_payment_method(self, payment_method_id: str) -> dict[str, Any]:
        """A payment method (its ``customer`` is None once detached)."""
        return await self._do(
            f"payment method {payment_method_id!r}",
            self._client.v1.payment_methods.retrieve_async(payment_method_id),
        )

    async def retrieve_customer(self, customer_id: str) -> dict[str, Any]:
        """A customer, its invoice default payment method expanded (for the card label)."""
        return await self._do(
            f"customer {customer_id!r}",
            self._client.v1.customers.retrieve_async(
                customer_id, params={"expand": ["invoice_settings.default_payment_method"]}
            ),
        )

    async def set_cancel_at_period_end(
        self, subscription_id: str, cancel: bool, *, idempotency_key: str
    ) -> dict[str, Any]:
        """Schedule (or unschedule) the subscription's end at its current period's end."""
        return await self._do(
            f"subscription {subscription_id!r} update",
            self._client.v1.subscriptions.update_async(
                subscription_id,
                params={"cancel_at_period_end": cancel, "expand": ["default_payment_method"]},
                options={"idempotency_key": idempotency_key},
            ),
        )

    async def cancel_subscription(self, subscription_id: str, *, idempotency_key: str) -> dict[str, Any]:
        """End the subscription now."""
        return await self._do(
            f"subscription {subscription_id!r} cancellation",
            self._client.v1.subscriptions.cancel_async(
                subscription_id, options={"idempotency_key": idempotency_key}
            ),
        )

    async def set_quantity(self, item_id: str, quantity: int, *, idempotency_key: str) -> dict[str, Any]:
        """Set a subscription item's seat count (proration as Stripe defaults). Idempotent by key."""
        return await self._do(
            f"subscription item {item_id!r} update",
            self._client.v1.subscription_items.update_async(
                item_id, params={"quantity": quantity}, options={"idempotency_key": idempotency_key}
            ),
        )
