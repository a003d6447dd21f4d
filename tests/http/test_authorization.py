"""Authorization on every organization route: members only, admins for settings, 401 without a session."""

from __future__ import annotations

from typing import Any

import pytest

from tests.http.conftest import Server

# (method, path template, JSON body) for every /v1/organizations/{org}/... route.
ORG_ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/organizations/{org}", None),
    ("PATCH", "/v1/organizations/{org}/settings", {"displayName": "Renamed"}),
    ("GET", "/v1/organizations/{org}/members", None),
    ("GET", "/v1/organizations/{org}/audit-log", None),
    ("GET", "/v1/organizations/{org}/tasks", None),
    ("GET", "/v1/organizations/{org}/agent-credentials", None),
    ("PUT", "/v1/organizations/{org}/agent-credentials/OPENAI_API_KEY", {"value": "sk-test-0123456789"}),
    ("DELETE", "/v1/organizations/{org}/agent-credentials/OPENAI_API_KEY", None),
]
#: Routes for admins only: a member who is not one gets 403.
ADMIN_ONLY = {("PATCH", "/v1/organizations/{org}/settings")} | {
    (m, t) for m, t, _ in ORG_ROUTES if "/agent-credentials" in t
}
OK = {"PUT": 204, "DELETE": 204}


async def _status(server: Server, login: str | None, method: str, path: str, body: Any) -> int:
    if login is None:
        async with server.client() as client:
            return (await client.request(method, path, json=body)).status_code
    async with server.signed_in(login) as client:
        return (await client.request(method, path, json=body)).status_code


@pytest.mark.parametrize(("method", "template", "body"), ORG_ROUTES)
async def test_members_of_one_organization_never_reach_another(
    server: Server, method: str, template: str, body: Any
) -> None:
    async with (
        server.signed_in("alice") as alice,
        server.signed_in("bob") as bob,
        server.signed_in("carol") as carol,
    ):
        for client, org in ((alice, "globex"), (bob, "acme")):
            response = await client.request(method, template.format(org=org), json=body)
            assert response.status_code == 404, (org, response.text)
            assert response.json() == {"error": "not_found", "detail": f"organization {org!r} not found"}
        if template.endswith("/agent-credentials/OPENAI_API_KEY"):
            # Something to remove, so that carol's DELETE succeeds.
            put = await carol.put(template.format(org="acme"), json={"value": "sk-test-0123456789"})
            assert put.status_code == 204, put.text
        for org in ("acme", "globex"):
            response = await carol.request(method, template.format(org=org), json=body)
            # carol is admin of acme only.
            admin_only = (method, template) in ADMIN_ONLY and org == "globex"
            expected = 403 if admin_only else OK.get(method, 200)
            assert response.status_code == expected, (org, response.text)
        # A made-up organization looks exactly like one you are not in.
        missing = await carol.request(method, template.format(org="initech"), json=body)
        assert missing.status_code == 404
    async with server.client() as anonymous:
        response = await anonymous.request(method, template.format(org="acme"), json=body)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"


async def test_settings_need_an_admin_and_land_in_the_audit_log(server: Server) -> None:
    async with server.signed_in("alice") as alice, server.signed_in("carol") as carol:
        refused = await alice.patch("/v1/organizations/acme/settings", json={"displayName": "Nope"})
        assert refused.status_code == 403
        assert refused.json()["error"] == "forbidden"
        done = await carol.patch(
            "/v1/organizations/acme/settings", json={"displayName": "ACME Rockets", "defaultModel": "opus"}
        )
        assert done.status_code == 200, done.text
        assert done.json() == {"displayName": "ACME Rockets", "defaultModel": "opus"}
        org = (await alice.get("/v1/organizations/acme")).json()
        assert org["settings"] == {"displayName": "ACME Rockets", "defaultModel": "opus"}
        assert org["viewerRole"] == "member"
        events = []
        for _ in range(100):
            events = (
                await alice.get(
                    "/v1/organizations/acme/audit-log", params={"kind": "organization.settings_updated"}
                )
            ).json()
            if events:
                break
        assert events[0]["actorUserId"] == (await carol.get("/v1/app")).json()["user"]["id"]
        assert events[0]["payload"]["changed"] == {"display_name": "ACME Rockets", "default_model": "opus"}
        # A kind's beginning finds its family (what a person types into the filter).
        for prefix in ("organization", "organization.settings", "organization.settings_up"):
            found = (await alice.get("/v1/organizations/acme/audit-log", params={"kind": prefix})).json()
            assert events[0]["id"] in [e["id"] for e in found], prefix
            assert all(e["kind"].startswith(prefix) for e in found)
        literal = (
            await alice.get("/v1/organizations/acme/audit-log", params={"kind": "organization%"})
        ).json()
        assert literal == []  # the filter is text, not a pattern


async def test_members_carry_github_roles(server: Server) -> None:
    async with server.signed_in("alice") as alice:
        members = (await alice.get("/v1/organizations/acme/members")).json()
    assert {m["login"]: m["role"] for m in members} == {"alice": "member", "carol": "admin"}


async def test_cross_site_writes_are_refused(server: Server) -> None:
    async with server.signed_in("carol") as carol:
        evil = await carol.patch(
            "/v1/organizations/acme/settings",
            json={"displayName": "Pwned"},
            headers={"Origin": "https://evil.example"},
        )
        assert evil.status_code == 403
        assert "cross-site" in evil.json()["detail"]
        fetch = await carol.patch(
            "/v1/organizations/acme/settings",
            json={"displayName": "Pwned"},
            headers={"Sec-Fetch-Site": "cross-site"},
        )
        assert fetch.status_code == 403
        same = await carol.patch(
            "/v1/organizations/acme/settings",
            json={"displayName": "Fine"},
            headers={"Origin": server.url, "Sec-Fetch-Site": "same-origin"},
        )
        assert same.status_code == 200


@pytest.mark.parametrize("origin", ["http://[", "https://[::1", "http://foundry.example]"])
async def test_a_write_with_an_unparsable_origin_is_refused_as_cross_site(
    server: Server, origin: str
) -> None:
    async with server.signed_in("carol") as carol:
        answer = await carol.patch(
            "/v1/organizations/acme/settings", json={"displayName": "Pwned"}, headers={"Origin": origin}
        )
    assert answer.status_code == 403, answer.text
    assert "cross-site" in answer.json()["detail"]


async def test_active_organization_only_among_your_own(server: Server) -> None:
    async with server.signed_in("carol") as carol:
        assert (await carol.get("/v1/app")).json()["activeOrganizationId"] is None  # two orgs: no default
        chosen = await carol.post("/v1/app/active-organization", json={"organizationId": "globex"})
        assert chosen.json()["activeOrganizationId"] == "globex"
    async with server.signed_in("alice") as alice:
        refused = await alice.post("/v1/app/active-organization", json={"organizationId": "globex"})
        assert refused.status_code == 404
