"""The fake Stripe's payment methods and its Billing Portal stand-in (a mixin of `FakeStripe`).

A payment method is built from Stripe's ``payment_method`` fixture, with the type-specific details of
one of Stripe's test methods. Subscriptions and customers hold them as ids, as Stripe does, and
answers expand them only when asked (``expand[]``).
"""

from __future__ import annotations

import copy
import html
import itertools
import threading
import time
from typing import Any

from foundry.drivers.stripe.fake_wire import StripeApiError as _Error
from foundry.drivers.stripe.fake_wire import decode_form

#: Stripe's test payment methods the portal offers: (type, type-specific details).
TEST_PAYMENT_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "visa": ("card", {"brand": "visa", "display_brand": "visa", "last4": "4242"}),
    "mastercard": ("card", {"brand": "mastercard", "display_brand": "mastercard", "last4": "4444"}),
    "amex": ("card", {"brand": "amex", "display_brand": "american_express", "last4": "8431"}),
    "sepa_debit": (
        "sepa_debit",
        {"bank_code": "37040044", "branch_code": "", "country": "DE", "last4": "3000"},
    ),
    "link": ("link", {"email": "jenny@example.com"}),
}


class PaymentMethodsMixin:
    """Payment methods, ``expand`` and the portal of `FakeStripe` (which provides the state)."""

    _lock: threading.RLock
    _ids: itertools.count[int]
    _fixtures: dict[str, dict[str, Any]]
    customers: dict[str, dict[str, Any]]
    sessions: dict[str, dict[str, Any]]
    subscriptions: dict[str, dict[str, Any]]
    payment_methods: dict[str, dict[str, Any]]

    def _emit(self, event_type: str, obj: dict[str, Any], previous: dict[str, Any] | None = None) -> None:
        raise NotImplementedError

    def change_payment_method(
        self, customer_id: str, kind: str = "mastercard", *, remove_old: bool = False
    ) -> dict[str, Any]:
        """What a customer does in the Billing Portal: add a payment method and make it the default
        (of the customer's invoices and of its live subscriptions), optionally removing the old one.

        Emits ``payment_method.attached``, ``customer.updated``, ``customer.subscription.updated``
        per subscription (and ``payment_method.detached``), as Stripe does. Returns the new method.
        """
        with self._lock:
            customer = self._customer(customer_id)
            pm = self._attach_new_payment_method(customer_id, kind)
            settings = customer.setdefault("invoice_settings", {})
            old = settings.get("default_payment_method")
            settings["default_payment_method"] = pm["id"]
            self._emit(
                "customer.updated",
                customer,
                previous={"invoice_settings": {"default_payment_method": old}},
            )
            for sub in self.subscriptions.values():
                if sub["customer"] == customer_id and sub["status"] not in ("canceled", "incomplete_expired"):
                    before = sub.get("default_payment_method")
                    old = old or before
                    sub["default_payment_method"] = pm["id"]
                    self._emit(
                        "customer.subscription.updated", sub, previous={"default_payment_method": before}
                    )
            if remove_old and isinstance(old, str) and old != pm["id"]:
                self.detach_payment_method(old)
            return copy.deepcopy(pm)

    def add_payment_method(self, customer_id: str, kind: str) -> dict[str, Any]:
        """A new payment method of ``kind`` (a `TEST_PAYMENT_METHODS` key) saved for the customer,
        without making it a default (``payment_method.attached``)."""
        with self._lock:
            self._customer(customer_id)
            return copy.deepcopy(self._attach_new_payment_method(customer_id, kind))

    def detach_payment_method(self, payment_method_id: str) -> dict[str, Any]:
        """Remove a payment method from its customer (``payment_method.detached``); when it was the
        customer's invoice default, that default is cleared first (``customer.updated``)."""
        with self._lock:
            pm = self.payment_methods.get(payment_method_id)
            if pm is None:
                raise _Error(
                    404,
                    "invalid_request_error",
                    f"No such PaymentMethod: '{payment_method_id}'",
                    "resource_missing",
                )
            customer_id = pm.get("customer")
            if customer_id is None:
                raise _Error(
                    400,
                    "invalid_request_error",
                    f"The payment method {payment_method_id} is not attached to a customer.",
                )
            customer = self._customer(str(customer_id))
            settings = customer.setdefault("invoice_settings", {})
            if settings.get("default_payment_method") == payment_method_id:
                settings["default_payment_method"] = None
                self._emit(
                    "customer.updated",
                    customer,
                    previous={"invoice_settings": {"default_payment_method": payment_method_id}},
                )
            pm["customer"] = None
            self._emit("payment_method.detached", pm, previous={"customer": customer_id})
            return copy.deepcopy(pm)

    def _customer(self, customer_id: str) -> dict[str, Any]:
        customer = self.customers.get(customer_id)
        if customer is None:
            raise _Error(
                404, "invalid_request_error", f"No such customer: '{customer_id}'", "resource_missing"
            )
        return customer

    def _attach_new_payment_method(self, customer_id: str, kind: str) -> dict[str, Any]:
        """A new payment method of ``kind`` (a `TEST_PAYMENT_METHODS` key) attached to the customer."""
        if kind not in TEST_PAYMENT_METHODS:
            raise _Error(400, "invalid_request_error", f"Unknown test payment method: '{kind}'")
        pm_type, details = TEST_PAYMENT_METHODS[kind]
        pm = copy.deepcopy(self._fixtures["payment_method"])
        card = pm.pop("card")
        pm.update(
            id=f"pm_fake{next(self._ids):06d}", type=pm_type, customer=customer_id, created=int(time.time())
        )
        pm[pm_type] = {**card, **details} if pm_type == "card" else dict(details)
        self.payment_methods[pm["id"]] = pm
        self._emit("payment_method.attached", pm)
        return pm

    def _expanded(self, obj: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        """``obj`` with the payment methods named in ``expand[]`` as objects (as Stripe answers)."""
        expand = params.get("expand")
        paths = [p for p in expand if isinstance(p, str)] if isinstance(expand, list) else []
        out = copy.deepcopy(obj)
        for path in paths:
            *parents, leaf = path.split(".")
            node: Any = out
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and isinstance(node.get(leaf), str):
                found = self.payment_methods.get(node[leaf])
                if found is not None:
                    node[leaf] = copy.deepcopy(found)
        return out

    def portal_page(self, portal_id: str) -> str:
        """The Billing Portal stand-in: the customer's payment methods, and forms that change them."""
        portal = self._portal(portal_id)
        customer = self._customer(str(portal["customer"]))
        default = (customer.get("invoice_settings") or {}).get("default_payment_method")
        rows = []
        for pm in self.payment_methods.values():
            if pm.get("customer") == customer["id"]:
                mark = " (default)" if pm["id"] == default else ""
                rows.append(
                    f"<li>{html.escape(pm['type'])} {html.escape(pm['id'])}{mark} "
                    f'<form method="post"><button name="remove" value="{html.escape(pm["id"])}">'
                    "Remove</button></form></li>"
                )
        buttons = "".join(
            f'<button name="add" value="{k}">Use {html.escape(k)} as default</button>'
            for k in TEST_PAYMENT_METHODS
        )
        back = html.escape(str(portal["return_url"]), quote=True)
        return (
            "<!doctype html><title>Billing portal (fake Stripe)</title>"
            f"<h1>Payment methods</h1><ul>{''.join(rows)}</ul>"
            f'<form method="post">{buttons}</form><p><a href="{back}">Return</a></p>'
        )

    def _portal_post(self, portal_id: str, body: bytes) -> str:
        """A portal form: ``add=<test method>`` (the new default) or ``remove=<pm id>``; answers the
        portal's ``return_url``."""
        portal = self._portal(portal_id)
        form = decode_form(body.decode()) if body else {}
        with self._lock:
            if isinstance(form.get("add"), str):
                self.change_payment_method(str(portal["customer"]), form["add"])
            elif isinstance(form.get("remove"), str):
                pm = self.payment_methods.get(form["remove"])
                if pm is None or pm.get("customer") != portal["customer"]:
                    raise _Error(404, "invalid_request_error", f"No such PaymentMethod: '{form['remove']}'")
                self.detach_payment_method(form["remove"])
            else:
                raise _Error(400, "invalid_request_error", "the portal form needs add= or remove=")
        return str(portal["return_url"])

    def _portal(self, portal_id: str) -> dict[str, Any]:
        for session in self.sessions.values():
            if session.get("object") == "billing_portal.session" and session["id"] == portal_id:
                return session
        raise _Error(404, "invalid_request_error", f"No such billing_portal.session: '{portal_id}'")
