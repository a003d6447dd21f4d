"""Bad input to the billing routes: each a 4xx JSON body naming the problem, and nothing recorded."""

from __future__ import annotations

from tests.billing.conftest import BillingServer


async def test_bad_bodies_are_4xx_json_naming_the_problem(billing_server: BillingServer) -> None:
    async with billing_server.signed_in("carol") as carol:
        checkout = "/v1/organizations/acme/billing/checkout"
        malformed = await carol.post(
            checkout, content=b'{"plan": ', headers={"content-type": "application/json"}
        )
        assert malformed.status_code == 422
        assert malformed.json()["error"] == "invalid_input"
        missing = await carol.post(checkout, json={})
        assert missing.status_code == 422
        assert "plan" in missing.json()["fields"][0]
        unknown = await carol.post(checkout, json={"plan": "enterprise"})
        assert unknown.status_code == 422
        assert "team" in unknown.json()["detail"]
        extra = await carol.post(checkout, json={"plan": "team", "seats": 5})
        assert extra.status_code == 422
        assert any("seats" in f for f in extra.json()["fields"])
        wrong_plan = await carol.post("/v1/organizations/acme/billing/plan", json={"plan": "team"})
        assert wrong_plan.status_code == 422
        assert "free" in wrong_plan.json()["detail"]
        huge = b'{"plan": "' + b"t" * (1024 * 1024 + 1) + b'"}'
        too_big = await carol.post(checkout, content=huge, headers={"content-type": "application/json"})
        assert too_big.status_code == 413
        assert too_big.json()["error"] == "payload_too_large"
        bad_login = await carol.delete("/v1/organizations/acme/billing/seats/no%20such%20user")
        assert bad_login.status_code == 422
        bad_session = await carol.get("/v1/billing/checkout/complete?organizationId=acme&session_id=cs%20x")
        assert bad_session.status_code == 422
        bad_org = await carol.get("/v1/billing/checkout/complete?organizationId=ACME!&session_id=cs_x")
        assert bad_org.status_code == 422
        portal = await carol.post("/v1/organizations/acme/billing/portal")
        assert portal.status_code == 409  # no Stripe customer before the first checkout
        assert "upgrade to the team plan first" in portal.json()["detail"]
        cancel = await carol.post("/v1/organizations/acme/billing/cancel")
        assert cancel.status_code == 409
        billing = (await carol.get("/v1/organizations/acme/billing")).json()
    assert billing["plan"] == "free"
    assert billing["hasCustomer"] is False
    assert billing_server.stripe.customers == {}
