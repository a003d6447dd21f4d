"""The first requests after start-up cost what later ones do: the server does its one-time work
(FastAPI's route tables) before it takes traffic, not while the first webhook senders wait."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import routing

from tests.billing.conftest import BillingServer


@pytest.fixture
def route_builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Paths of the routes whose request handling FastAPI builds from now on."""
    built: list[str] = []
    original = routing._EffectiveRouteContext.from_api_route

    def counting(*args: Any, **kwargs: Any) -> Any:
        built.append(kwargs["original_route"].path)
        return original(*args, **kwargs)

    monkeypatch.setattr(routing._EffectiveRouteContext, "from_api_route", counting)
    return built


async def test_the_first_webhook_and_read_after_start_build_nothing(
    billing_server: BillingServer, route_builds: list[str]
):
    response = await billing_server.post_event(
        billing_server.stripe.event("customer.created", {"id": "cus_nobody", "object": "customer"}, 1)
    )
    assert response.status_code == 200, response.text
    async with billing_server.client() as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/v1/no-such-route")).status_code == 404
    assert route_builds == []
