"""Stripe: customers, Checkout, the Billing Portal and per-seat subscriptions.

* `foundry.drivers.stripe.client.StripeDriver`: the real driver, on the official ``stripe`` SDK's
  ``StripeClient`` (async methods over httpx). Every create/modify carries an idempotency key.
* `foundry.drivers.stripe.fake.FakeStripe`: not a driver but a fake Stripe *server* speaking Stripe's
  wire format (form-encoded requests, JSON objects built from Stripe's own fixtures), with a hosted
  checkout stand-in page that sends real signed webhook events. Tests and mock mode point the real
  driver at it (``stripe.api_base``).

Every driver method raises `foundry.errors.NotFound` for Stripe's 404 and
`foundry.errors.DriverError` (vendor ``"stripe"``, ``status`` = Stripe's HTTP status, or ``None`` for
a network failure or timeout) for anything else.
"""

from __future__ import annotations

VENDOR = "stripe"
