"""Every billing route: signed out 401, another organization 404, a member 403, an admin passes;
and without Stripe settings the billing routes answer 503 naming them while the rest works."""

from __future__ import annotations

import httpx

from tests.billing.conftest import BillingServer
from tests.http.conftest import Server

#: (method, path, JSON body) of every organization billing route.
ROUTES = [
    ("GET", "/v1/organizations/acme/billing", None),
    ("POST", "/v1/organizations/acme/billing/checkout", {"plan": "team"}),
    ("POST", "/v1/organizations/acme/billing/portal", None),
    ("POST", "/v1/organizations/acme/billing/cancel", None),
    ("POST", "/v1/organizations/acme/billing/resume", None),
    ("POST", "/v1/organizations/acme/billing/plan", {"plan": "free"}),
    ("DELETE", "/v1/organizations/acme/billing/seats/alice", None),
]


async def _call(client: httpx.AsyncClient, method: str, path: str, body: object) -> httpx.Response:
    return (
        await client.request(method, path, json=body)
        if body is not None
        else await client.request(method, path)
    )


async def test_signed_out_callers_get_401_json(billing_server: BillingServer) -> None:
    async with billing_server.client() as anonymous:
        for method, path, body in ROUTES:
            response = await _call(anonymous, method, path, body)
            assert response.status_code == 401, (method, path, response.text)
            assert response.json()["error"] == "unauthorized"
        done = await anonymous.get("/v1/billing/checkout/complete?organizationId=acme&session_id=cs_test_x")
        assert done.status_code == 401
        assert done.json()["error"] == "unauthorized"


async def test_members_of_another_organization_get_404_like_a_missing_one(
    billing_server: BillingServer,
) -> None:
    async with billing_server.signed_in("bob") as bob:  # member of globex only
        for method, path, body in ROUTES:
            response = await _call(bob, method, path, body)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error"] == "not_found"
        done = await bob.get("/v1/billing/checkout/complete?organizationId=acme&session_id=cs_test_x")
        assert done.status_code == 404
        made_up = await bob.get("/v1/organizations/no-such-org/billing")
        assert made_up.status_code == 404


async def test_members_who_are_not_admins_get_403_json(billing_server: BillingServer) -> None:
    async with billing_server.signed_in("alice") as alice:  # member of acme
        for method, path, body in ROUTES:
            response = await _call(alice, method, path, body)
            assert response.status_code == 403, (method, path, response.text)
            assert response.json() == {"error": "forbidden", "detail": "only admins of 'acme' may do this"}
        done = await alice.get("/v1/billing/checkout/complete?organizationId=acme&session_id=cs_test_x")
        assert done.status_code == 403
        assert done.json()["error"] == "forbidden"
        # Nothing was created at Stripe by any of these.
        assert billing_server.stripe.requests == []


async def test_admins_read_billing_and_the_snapshot_carries_it(billing_server: BillingServer) -> None:
    async with billing_server.signed_in("carol") as carol:
        response = await carol.get("/v1/organizations/acme/billing")
        assert response.status_code == 200, response.text
        billing = response.json()
        assert billing["plan"] == "free"
        assert billing["status"] == "active"
        assert billing["seats"] == {"used": 0, "paid": None, "limit": 1, "members": []}
        assert billing["invoices"] == []
        snapshot = (await carol.get("/v1/organizations/acme")).json()
        assert snapshot["billing"] == billing


async def test_without_stripe_settings_billing_answers_503_naming_them_and_the_rest_works(
    server: Server,
) -> None:
    async with server.signed_in("carol") as carol:
        for method, path, body in ROUTES:
            response = await _call(carol, method, path, body)
            assert response.status_code == 503, (method, path, response.text)
            body_json = response.json()
            assert body_json["error"] == "not_configured"
            assert "FOUNDRY_STRIPE__SECRET_KEY" in body_json["detail"]
            assert "FOUNDRY_STRIPE__PRICE_TEAM" in body_json["detail"]
        hook = await carol.post(
            "/v1/webhooks/stripe", content=b"{}", headers={"stripe-signature": "t=1,v1=00"}
        )
        assert hook.status_code == 503
        assert "FOUNDRY_STRIPE__WEBHOOK_SECRETS" in hook.json()["detail"]
        assert (await carol.get("/v1/organizations/acme")).status_code == 200
