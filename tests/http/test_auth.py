"""Sign-in with GitHub through the real authlib client and the fake GitHub, sessions, sign-out."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.http.conftest import Server


async def _authorize(server: Server, client: httpx.AsyncClient, login: str) -> str:
    """Walk the browser's part of the OAuth dance; returns the callback URL GitHub redirects to."""
    start = await client.get("/v1/auth/sign-in/github")
    assert start.status_code == 302
    authorize = httpx.URL(start.headers["location"])
    assert authorize.path == "/login/oauth/authorize"
    params = parse_qs(urlsplit(str(authorize)).query)
    assert params["scope"] == ["read:user user:email read:org"]  # never the `repo` scope
    async with httpx.AsyncClient() as browser:
        consent = await browser.get(str(authorize.copy_add_param("login", login)))
    assert consent.status_code == 302
    return consent.headers["location"]


async def test_oauth_round_trip_duplicate_callback_and_sign_out(server: Server) -> None:
    async with server.client() as client:
        callback = await _authorize(server, client, "carol")
        first = await client.get(callback)
        assert first.status_code == 302, first.text
        cookie = first.cookies.get("foundry_session")
        assert cookie
        set_cookie = first.headers["set-cookie"]
        assert "HttpOnly" in set_cookie
        assert "SameSite=lax" in set_cookie or "samesite=lax" in set_cookie.lower()
        session = (await client.get("/v1/auth/session")).json()

        # A proxy retries the same callback: same signed-in result, not an error.
        retry_client = server.client(cookies={"foundry_oauth": client.cookies.get("foundry_oauth") or ""})
        async with retry_client:
            again = await retry_client.get(callback)
        assert again.status_code == 302, again.text
        async with server.client(cookies={"foundry_session": again.cookies["foundry_session"]}) as same:
            assert (await same.get("/v1/auth/session")).json()["sessionId"] == session["sessionId"]

        app = (await client.get("/v1/app")).json()
        assert app["auth"]["status"] == "signed_in"
        assert app["user"]["githubLogin"] == "carol"

        out = await client.post("/v1/auth/sign-out")
        assert out.status_code == 200
        async with server.client(cookies={"foundry_session": cookie}) as stale:
            gone = await stale.get("/v1/auth/session")
            # Signing out again (a double click, a retry, a second tab) is still a success that
            # clears the cookie, not a 401 that leaves the dead cookie in the browser.
            again = await stale.post("/v1/auth/sign-out")
        assert gone.status_code == 401
        assert gone.json()["error"] == "unauthorized"
        assert again.status_code == 200, again.text
        assert again.json()["auth"]["status"] == "signed_out"
        assert "Max-Age=0" in again.headers["set-cookie"]


async def test_concurrent_duplicate_callbacks_share_one_sign_in(server: Server) -> None:
    async with server.client() as client:
        callback = await _authorize(server, client, "alice")
        results = await asyncio.gather(*(client.get(callback) for _ in range(3)))
    sessions = {r.cookies.get("foundry_session") for r in results}
    assert all(r.status_code == 302 for r in results), [r.text for r in results]
    assert len(sessions) == 1


async def test_callback_with_forged_state_is_refused(server: Server) -> None:
    async with server.client() as client:
        callback = await _authorize(server, client, "alice")
    async with server.client() as other_browser:  # no OAuth state cookie
        response = await other_browser.get(callback)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert "foundry_session" not in response.cookies


async def test_expired_session_is_refused(server: Server) -> None:
    async with server.signed_in("alice") as client:
        assert (await client.get("/v1/auth/session")).status_code == 200
        server.clock.advance(server.settings.auth.session_ttl_seconds * 1000 + 1)
        expired = await client.get("/v1/auth/session")
        assert expired.status_code == 401
        assert "expired" in expired.json()["detail"]


async def test_tampered_cookie_is_ignored(server: Server) -> None:
    async with server.signed_in("alice") as client:
        cookie = client.cookies["foundry_session"]
    async with server.client(cookies={"foundry_session": cookie[:-2] + "xx"}) as forged:
        assert (await forged.get("/v1/auth/session")).status_code == 401


async def test_discovery_finds_each_seeded_users_organizations(server: Server) -> None:
    expected = {
        "alice": {"acme": "member"},
        "bob": {"globex": "member"},
        "carol": {"acme": "admin", "globex": "member"},
    }
    for login, orgs in expected.items():
        async with server.signed_in(login) as client:
            app = (await client.get("/v1/app")).json()
        assert {o["id"]: o["role"] for o in app["organizations"]} == orgs, login
        if len(orgs) == 1:
            assert app["activeOrganizationId"] == next(iter(orgs))


async def test_mock_sign_in_of_an_unknown_user(server: Server) -> None:
    async with server.client() as client:
        response = await client.post("/v1/auth/mock/sign-in", json={"login": "mallory"})
    assert response.status_code == 404
    assert "alice" in response.json()["detail"]


async def test_an_organization_is_reachable_the_moment_sign_in_answers(server: Server) -> None:
    """Discovery of the user's organizations runs after sign-in answers; a page that loads the
    organization (or subscribes to it) at once must not be told it does not exist."""
    server.github.latency = 0.15  # GitHub answering as slowly as it does in practice
    async with server.client() as client:
        signed_in = await client.post("/v1/auth/mock/sign-in", json={"login": "carol"})
        assert signed_in.status_code == 200, signed_in.text
        first = await client.get("/v1/organizations/acme")
        assert first.status_code == 200, first.text
        assert first.json()["organizationId"] == "acme"
        # A made-up organization is still not found, once discovery has answered.
        missing = await client.get("/v1/organizations/no-such-org")
        assert missing.status_code == 404
        assert "not found" in missing.json()["detail"]
    server.github.latency = 0.0
    await server.github_settled(["acme", "globex"])


async def test_each_members_organization_list_uses_the_name_chosen_in_settings(server: Server) -> None:
    async with server.signed_in("carol") as carol:
        original = (await carol.get("/v1/organizations/acme")).json()["settings"]["displayName"]
        renamed = await carol.patch("/v1/organizations/acme/settings", json={"displayName": "Acme Rockets"})
        assert renamed.status_code == 200, renamed.text
        try:
            # The next discovery of any member (a sign-in, a refresh) lists the chosen name.
            async with server.signed_in("alice") as alice:
                app = (await alice.get("/v1/app")).json()
            assert {o["id"]: o["displayName"] for o in app["organizations"]} == {"acme": "Acme Rockets"}
        finally:
            await carol.patch("/v1/organizations/acme/settings", json={"displayName": original})
