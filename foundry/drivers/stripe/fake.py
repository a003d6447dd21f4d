"""A fake Stripe server: the real SDK talks to it over HTTP, and it sends real signed webhooks.

It answers the calls Foundry makes (customers, Checkout sessions, Billing Portal sessions,
subscriptions, subscription items, payment methods) with objects built from Stripe's own fixtures
(``fixtures.json``: a subset of Stripe's MIT-licensed ``openapi/fixtures3.json``), honours idempotency
keys like Stripe (a replayed key answers the stored response and changes nothing) and ``expand`` of
payment methods, and serves stand-in pages: ``GET /checkout/<session id>`` completes a Checkout
session (paying with Visa •••• 4242, creating the subscription and its first paid invoice) and
redirects to the session's ``success_url``; ``GET /portal/<id>`` is the Billing Portal, where a
``POST`` changes the default payment method (or removes one) and redirects to the portal's
``return_url``; ``GET /invoice/<id>`` shows an invoice.

Every state change emits the event Stripe would (``checkout.session.completed``,
``customer.subscription.created|updated|deleted``, ``invoice.finalized|paid|payment_failed``,
``payment_method.attached|detached``, ``customer.updated``), with payment methods as bare ids as in
Stripe's webhooks, signed
``t=<ts>,v1=<hex hmac>`` with ``webhook_secret`` and POSTed to ``webhook_url`` in order from a
delivery thread (``auto_deliver=False`` keeps them in ``events`` for a test to deliver itself).

Failures on demand: `fail_next` answers the next N API requests with an HTTP error, `hang_next`
holds them past the client's timeout.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from foundry.drivers.stripe.fake_payment_methods import TEST_PAYMENT_METHODS, PaymentMethodsMixin
from foundry.drivers.stripe.fake_wire import StripeApiError as _Error
from foundry.drivers.stripe.fake_wire import decode_form, public, sign_payload

__all__ = ["TEST_PAYMENT_METHODS", "FakeStripe", "decode_form", "sign_payload"]

log = logging.getLogger(__name__)

FIXTURES = Path(__file__).with_name("fixtures.json")
#: Unit price of the fake ``team`` price, in cents.
SEAT_PRICE_CENTS = 1500


class FakeStripe(PaymentMethodsMixin):
    """The fake Stripe (see the module docstring). ``start()`` serves on 127.0.0.1."""

    def __init__(
        self, api_key: str = "sk_test_foundry_fake", webhook_secret: str = "whsec_foundry_fake"
    ) -> None:
        self.api_key = api_key
        self.webhook_secret = webhook_secret
        self.webhook_url = ""
        self.price_team = "price_foundry_team"
        self.auto_deliver = True
        fixtures = json.loads(FIXTURES.read_text())["resources"]
        self._fixtures: dict[str, dict[str, Any]] = fixtures
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self.customers: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.invoices: dict[str, dict[str, Any]] = {}
        self.payment_methods: dict[str, dict[str, Any]] = {}
        self._idempotent: dict[str, tuple[int, dict[str, Any]]] = {}
        #: Every API request as (method, path, idempotency key); failed and replayed ones included.
        self.requests: list[tuple[str, str, str | None]] = []
        #: Seat-count writes that took effect: (subscription item id, quantity, idempotency key).
        self.quantity_updates: list[tuple[str, int, str | None]] = []
        #: Every event emitted, in order.
        self.events: list[dict[str, Any]] = []
        self.delivered: list[tuple[str, int]] = []
        self._failures: list[tuple[int, float]] = []
        self._outgoing: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------------------ lifecycle

    def start(self, port: int = 0) -> FakeStripe:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("fake stripe: " + format, *args)

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                status, headers, payload = fake._dispatch(self.command, self.path, dict(self.headers), body)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        serve = threading.Thread(target=self._server.serve_forever, name="fake-stripe", daemon=True)
        deliver = threading.Thread(target=self._deliver_loop, name="fake-stripe-webhooks", daemon=True)
        self._threads = [serve, deliver]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._outgoing.put(None)

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # ------------------------------------------------------------------------------ test controls

    def fail_next(self, count: int, status: int = 500) -> None:
        """Answer the next ``count`` API requests with ``status`` (Stripe's ``api_error`` body)."""
        with self._lock:
            self._failures.extend([(status, 0.0)] * count)

    def hang_next(self, count: int, seconds: float) -> None:
        """Hold the next ``count`` API requests for ``seconds`` before failing them with 500."""
        with self._lock:
            self._failures.extend([(500, seconds)] * count)

    def complete_checkout(self, session_id: str) -> dict[str, Any]:
        """What the hosted checkout page does: pay, create the subscription, emit the events."""
        with self._lock:
            session = self.sessions.get(session_id)
            if session is None:
                raise _Error(404, "invalid_request_error", f"No such checkout.session: '{session_id}'")
            if session["status"] == "complete":
                return session
            if session["status"] != "open":  # as Stripe's page shows for an expired session
                raise _Error(400, "invalid_request_error", "This Checkout Session is no longer active")
            now = int(time.time())
            quantity = int(session["_quantity"])
            sub_id = f"sub_fake{next(self._ids):06d}"
            item = copy.deepcopy(self._fixtures["subscription_item"])
            item.update(
                id=f"si_fake{next(self._ids):06d}",
                quantity=quantity,
                subscription=sub_id,
                created=now,
                current_period_start=now,
                current_period_end=now + 30 * 86400,
                metadata={},
            )
            item["price"].update(id=session["_price"], unit_amount=SEAT_PRICE_CENTS)
            sub = copy.deepcopy(self._fixtures["subscription"])
            sub.update(
                id=sub_id,
                customer=session["customer"],
                status="active",
                created=now,
                start_date=now,
                current_period_start=now,
                current_period_end=now + 30 * 86400,
                cancel_at_period_end=False,
                cancel_at=None,
                canceled_at=None,
                ended_at=None,
                trial_start=None,
                trial_end=None,
                # As Stripe does: the subscription's metadata is Checkout's subscription_data.metadata.
                metadata=dict(session.get("_subscription_metadata") or {}),
                default_payment_method=None,
            )
            sub["items"] = {
                "object": "list",
                "data": [item],
                "has_more": False,
                "url": "/v1/subscription_items",
            }
            self.subscriptions[sub_id] = sub
            session.update(status="complete", payment_status="paid", subscription=sub_id)
            # Checkout saves the card it charged and makes it the subscription's default.
            pm = self._attach_new_payment_method(str(session["customer"]), "visa")
            sub["default_payment_method"] = pm["id"]
            invoice = self._new_invoice(sub, "paid")
            self._emit("checkout.session.completed", session)
            self._emit("customer.subscription.created", sub)
            self._emit("invoice.finalized", {**invoice, "status": "open", "amount_paid": 0})
            self._emit("invoice.paid", invoice)
            return session

    def fail_payment(self, subscription_id: str) -> dict[str, Any]:
        """A renewal whose payment fails: an open invoice, ``invoice.payment_failed``, then past_due."""
        with self._lock:
            sub = self.subscriptions[subscription_id]
            invoice = self._new_invoice(sub, "open")
            self._emit("invoice.payment_failed", invoice)
            sub["status"] = "past_due"
            self._emit("customer.subscription.updated", sub)
            return invoice

    def event(
        self,
        event_type: str,
        obj: dict[str, Any],
        created: int | None = None,
        previous: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A Stripe event of ``event_type`` about ``obj`` (not emitted); ``previous`` becomes
        ``data.previous_attributes``, the fields an update changed and their old values."""
        evt = copy.deepcopy(self._fixtures["event"])
        data: dict[str, Any] = {"object": public(copy.deepcopy(obj))}
        if previous is not None:
            data["previous_attributes"] = copy.deepcopy(previous)
        evt.update(
            id=f"evt_fake{next(self._ids):08d}",
            type=event_type,
            created=int(time.time()) if created is None else created,
            api_version="2025-06-30.basil",
            data=data,
        )
        return evt

    def deliver(self, event: dict[str, Any], url: str | None = None) -> int:
        """POST one signed event to Foundry now; returns the HTTP status."""
        payload = json.dumps(event).encode()
        request = urllib.request.Request(
            url or self.webhook_url,
            data=payload,
            headers={
                "content-type": "application/json",
                "stripe-signature": sign_payload(payload, self.webhook_secret),
            },
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            status = exc.code
        self.delivered.append((event["id"], status))
        return status

    def quantity_of(self, subscription_id: str) -> int:
        with self._lock:
            return int(self.subscriptions[subscription_id]["items"]["data"][0]["quantity"])

    # ------------------------------------------------------------------------------ internals

    def _emit(self, event_type: str, obj: dict[str, Any], previous: dict[str, Any] | None = None) -> None:
        evt = self.event(event_type, obj, previous=previous)
        self.events.append(evt)
        if self.auto_deliver and self.webhook_url:
            self._outgoing.put(evt)

    def _deliver_loop(self) -> None:
        while True:
            evt = self._outgoing.get()
            if evt is None:
                return
            # Stripe retries failed deliveries; a few quick attempts are enough for a local Foundry.
            for attempt in range(5):
                try:
                    if self.deliver(evt) < 500:
                        break
                except OSError as exc:
                    log.warning(
                        "fake stripe: delivering %s failed (attempt %d): %s", evt["id"], attempt + 1, exc
                    )
                time.sleep(0.2 * (attempt + 1))

    def _new_invoice(self, sub: dict[str, Any], status: str) -> dict[str, Any]:
        n = next(self._ids)
        quantity = int(sub["items"]["data"][0]["quantity"])
        invoice = copy.deepcopy(self._fixtures["invoice"])
        invoice.update(
            id=f"in_fake{n:06d}",
            number=f"FOUNDRY-{n:04d}",
            customer=sub["customer"],
            subscription=sub["id"],
            status=status,
            amount_due=quantity * SEAT_PRICE_CENTS,
            amount_paid=quantity * SEAT_PRICE_CENTS if status == "paid" else 0,
            amount_remaining=0 if status == "paid" else quantity * SEAT_PRICE_CENTS,
            currency="usd",
            created=int(time.time()),
            period_start=sub["current_period_start"],
            period_end=sub["current_period_end"],
            hosted_invoice_url=f"{self.base_url}/invoice/in_fake{n:06d}",
        )
        invoice["lines"] = {"object": "list", "data": [], "has_more": False, "url": "/v1/invoices/lines"}
        self.invoices[invoice["id"]] = invoice
        return invoice

    def _dispatch(
        self, method: str, raw_path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        path = urlsplit(raw_path).path
        lower = {k.lower(): v for k, v in headers.items()}
        try:
            if method == "GET" and path.startswith("/checkout/"):
                session = self.complete_checkout(path.removeprefix("/checkout/"))
                target = str(session["success_url"]).replace("{CHECKOUT_SESSION_ID}", session["id"])
                return 303, {"location": target}, b""
            if method == "GET" and path.startswith("/portal/"):
                page = self.portal_page(path.removeprefix("/portal/"))
                return 200, {"content-type": "text/html; charset=utf-8"}, page.encode()
            if method == "POST" and path.startswith("/portal/"):
                return 303, {"location": self._portal_post(path.removeprefix("/portal/"), body)}, b""
            if method == "GET" and path.startswith("/invoice/"):  # the hosted invoice page
                found = self.invoices.get(path.removeprefix("/invoice/"))
                if found is None:
                    raise _Error(404, "invalid_request_error", "No such invoice")
                return 200, {"content-type": "application/json"}, json.dumps(found).encode()
            if not path.startswith("/v1/"):
                raise _Error(404, "invalid_request_error", f"Unrecognized request URL ({method}: {path})")
            key = lower.get("idempotency-key")
            self.requests.append((method, path, key))
            if lower.get("authorization") != f"Bearer {self.api_key}":
                raise _Error(401, "invalid_request_error", "Invalid API Key provided")
            with self._lock:
                failure = self._failures.pop(0) if self._failures else None
            if failure is not None:
                if failure[1]:
                    time.sleep(failure[1])
                raise _Error(failure[0], "api_error", "fake Stripe failure injected by a test")
            params = decode_form(body.decode()) if body else {}
            if method == "GET":
                params.update(decode_form(urlsplit(raw_path).query))
            with self._lock:
                if key and method != "GET" and key in self._idempotent:
                    status, stored = self._idempotent[key]
                    return (
                        status,
                        {"content-type": "application/json", "idempotent-replayed": "true"},
                        json.dumps(stored).encode(),
                    )
                status, obj = 200, self._route(method, path, params, key)
                if key and method != "GET":
                    self._idempotent[key] = (status, obj)
            return status, {"content-type": "application/json"}, json.dumps(obj).encode()
        except _Error as exc:
            err = {
                "error": {
                    "type": exc.kind,
                    "message": exc.message,
                    **({"code": exc.code} if exc.code else {}),
                }
            }
            return exc.status, {"content-type": "application/json"}, json.dumps(err).encode()

    def _route(self, method: str, path: str, params: dict[str, Any], key: str | None) -> dict[str, Any]:
        parts = path.strip("/").split("/")[1:]
        if method == "POST" and parts == ["customers"]:
            customer = copy.deepcopy(self._fixtures["customer"])
            customer.update(
                id=f"cus_fake{next(self._ids):06d}",
                name=params.get("name"),
                metadata=params.get("metadata", {}),
                created=int(time.time()),
            )
            self.customers[customer["id"]] = customer
            return customer
        if method == "POST" and parts == ["checkout", "sessions"]:
            customer_id = params.get("customer")
            if customer_id not in self.customers:
                raise _Error(
                    400, "invalid_request_error", f"No such customer: '{customer_id}'", "resource_missing"
                )
            items = params.get("line_items") or [{}]
            session = copy.deepcopy(self._fixtures["checkout.session"])
            sid = f"cs_test_fake{next(self._ids):06d}"
            session.update(
                id=sid,
                mode="subscription",
                status="open",
                payment_status="unpaid",
                customer=customer_id,
                client_reference_id=params.get("client_reference_id"),
                metadata=params.get("metadata", {}),
                success_url=params.get("success_url"),
                cancel_url=params.get("cancel_url"),
                subscription=None,
                url=f"{self.base_url}/checkout/{sid}",
                created=int(time.time()),
                _quantity=int(items[0].get("quantity", 1)),
                _subscription_metadata=(params.get("subscription_data") or {}).get("metadata") or {},
                _price=items[0].get("price", self.price_team),
            )
            self.sessions[sid] = session
            return public(session)
        if (
            method == "POST"
            and len(parts) == 4
            and parts[:2] == ["checkout", "sessions"]
            and parts[3] == "expire"
        ):
            found = self.sessions.get(parts[2])
            if found is None:
                raise _Error(404, "invalid_request_error", f"No such checkout.session: '{parts[2]}'")
            if found["status"] != "open":
                raise _Error(
                    400,
                    "invalid_request_error",
                    'Only Checkout Sessions with a status in ["open"] can be expired.',
                )
            found["status"] = "expired"
            return public(found)
        if method == "GET" and len(parts) == 3 and parts[:2] == ["checkout", "sessions"]:
            found = self.sessions.get(parts[2])
            if found is None or found.get("object") != "checkout.session":
                raise _Error(
                    404,
                    "invalid_request_error",
                    f"No such checkout.session: '{parts[2]}'",
                    "resource_missing",
                )
            return public(found)
        if method == "POST" and parts == ["billing_portal", "sessions"]:
            portal = copy.deepcopy(self._fixtures["billing_portal.session"])
            pid = f"bps_fake{next(self._ids):06d}"
            portal.update(
                id=pid,
                customer=params.get("customer"),
                return_url=params.get("return_url"),
                url=f"{self.base_url}/portal/{pid}",
            )
            self.sessions[pid] = portal
            return portal
        if len(parts) == 2 and parts[0] == "subscriptions":
            sub = self.subscriptions.get(parts[1])
            if sub is None:
                raise _Error(
                    404, "invalid_request_error", f"No such subscription: '{parts[1]}'", "resource_missing"
                )
            if method == "POST":
                if "default_payment_method" in params:
                    pm_id = params["default_payment_method"] or None
                    found = self.payment_methods.get(pm_id) if pm_id else None
                    if pm_id and (found is None or found.get("customer") != sub["customer"]):
                        raise _Error(
                            400,
                            "invalid_request_error",
                            f"No such PaymentMethod: '{pm_id}'",
                            "resource_missing",
                        )
                    before = sub.get("default_payment_method")
                    sub["default_payment_method"] = pm_id
                    self._emit(
                        "customer.subscription.updated", sub, previous={"default_payment_method": before}
                    )
                if "cancel_at_period_end" in params:
                    flag = params["cancel_at_period_end"] == "true"
                    sub["cancel_at_period_end"] = flag
                    sub["cancel_at"] = sub["current_period_end"] if flag else None
                    self._emit("customer.subscription.updated", sub)
            elif method == "DELETE":
                sub.update(status="canceled", canceled_at=int(time.time()), ended_at=int(time.time()))
                self._emit("customer.subscription.deleted", sub)
            return self._expanded(sub, params)
        if method == "GET" and len(parts) == 2 and parts[0] == "customers":
            return self._expanded(self._customer(parts[1]), params)
        if len(parts) >= 2 and parts[0] == "payment_methods":
            if method == "POST" and len(parts) == 3 and parts[2] == "detach":
                return self.detach_payment_method(parts[1])
            found = self.payment_methods.get(parts[1])
            if method != "GET" or len(parts) != 2 or found is None:
                raise _Error(
                    404, "invalid_request_error", f"No such PaymentMethod: '{parts[1]}'", "resource_missing"
                )
            return copy.deepcopy(found)
        if method == "POST" and len(parts) == 2 and parts[0] == "subscription_items":
            for sub in self.subscriptions.values():
                item = sub["items"]["data"][0]
                if item["id"] == parts[1]:
                    item["quantity"] = int(params.get("quantity", item["quantity"]))
                    self.quantity_updates.append((item["id"], item["quantity"], key))
                    self._emit("customer.subscription.updated", sub)
                    return dict(item)
            raise _Error(
                404, "invalid_request_error", f"No such subscription_item: '{parts[1]}'", "resource_missing"
            )
        raise _Error(404, "invalid_request_error", f"Unrecognized request URL ({method}: {path})")
