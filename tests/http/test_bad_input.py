"""Bad input on every route is a clear 4xx JSON error and changes nothing."""

from __future__ import annotations

import logging

import pytest

from tests.http.conftest import Server

WRITE_ROUTES = [
    ("PATCH", "/v1/organizations/acme/settings"),
    ("POST", "/v1/app/active-organization"),
    ("POST", "/v1/auth/mock/sign-in"),
]


@pytest.mark.parametrize(("method", "path"), WRITE_ROUTES)
async def test_malformed_json_is_422(server: Server, method: str, path: str) -> None:
    async with server.signed_in("carol") as carol:
        response = await carol.request(
            method, path, content=b'{"displayName": ', headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_input"
    assert response.json()["detail"].startswith("request body is not valid JSON: Expecting value")
    assert response.json()["fields"] == ["body"]


@pytest.mark.parametrize(("method", "path"), WRITE_ROUTES[:2])
async def test_who_may_ask_is_checked_before_the_body(server: Server, method: str, path: str) -> None:
    """A malformed body tells a signed-out caller only that they must sign in (401), and a member of
    another organization only that there is nothing there (404): never that the body was wrong."""
    bad = {"content": b'{"displayName": ', "headers": {"Content-Type": "application/json"}}
    async with server.client() as anonymous:
        assert (await anonymous.request(method, path, **bad)).status_code == 401  # type: ignore[arg-type]
    if path.startswith("/v1/organizations/acme"):
        async with server.signed_in("bob") as bob:
            outsider = await bob.request(method, path, **bad)  # type: ignore[arg-type]
        assert outsider.status_code == 404, outsider.text
        async with server.signed_in("alice") as alice:
            member = await alice.request(method, path, **bad)  # type: ignore[arg-type]
        assert member.status_code == 403, member.text  # settings are for admins


async def test_a_repeated_key_is_refused_rather_than_one_value_silently_winning(server: Server) -> None:
    async with server.signed_in("carol") as carol:
        before = (await carol.get("/v1/organizations/acme")).json()
        response = await carol.patch(
            "/v1/organizations/acme/settings",
            content=b'{"displayName": "Decoy", "displayName": "Acme Evil"}',
            headers={"Content-Type": "application/json"},
        )
        after = (await carol.get("/v1/organizations/acme")).json()
    assert response.status_code == 422, response.text
    assert response.json()["fields"] == ["body"]
    assert "'displayName' appears more than once" in response.json()["detail"]
    assert before == after


@pytest.mark.parametrize(
    ("method", "path", "body", "fields"),
    [
        ("PATCH", "/v1/organizations/acme/settings", {"displayName": 5}, ["displayName"]),
        ("PATCH", "/v1/organizations/acme/settings", {"displayName": "x", "bogus": 1}, ["bogus"]),
        ("PATCH", "/v1/organizations/acme/settings", {"defaultModel": "gpt-0"}, ["defaultModel"]),
        ("PATCH", "/v1/organizations/acme/settings", {"displayName": ""}, ["displayName"]),
        ("POST", "/v1/app/active-organization", {"organizationId": ["acme"]}, ["organizationId"]),
        ("POST", "/v1/app/active-organization", {}, ["organizationId"]),
        ("POST", "/v1/auth/mock/sign-in", {"login": "../../etc"}, ["login"]),
        ("POST", "/v1/auth/mock/sign-in", {"login": "alice", "admin": True}, ["admin"]),
    ],
)
async def test_wrong_types_and_unknown_fields_name_the_fields(
    server: Server, method: str, path: str, body: object, fields: list[str]
) -> None:
    async with server.signed_in("carol") as carol:
        before = (await carol.get("/v1/organizations/acme")).json()
        response = await carol.request(method, path, json=body)
        after = (await carol.get("/v1/organizations/acme")).json()
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_input"
    assert response.json()["fields"] == sorted(fields)
    assert before == after


@pytest.mark.parametrize(
    ("path", "params", "fields"),
    [
        ("/v1/organizations/acme/audit-log", {"limit": "lots"}, ["limit"]),
        ("/v1/organizations/acme/audit-log", {"limit": "0"}, ["limit"]),
        ("/v1/organizations/acme/audit-log", {"beforeId": "-1"}, ["beforeId"]),
    ],
)
async def test_bad_query_parameters(
    server: Server, path: str, params: dict[str, str], fields: list[str]
) -> None:
    async with server.signed_in("alice") as alice:
        response = await alice.get(path, params=params)
    assert response.status_code == 422
    assert response.json()["fields"] == fields


@pytest.mark.parametrize(("method", "path"), WRITE_ROUTES)
async def test_oversized_bodies_are_413(
    server: Server, method: str, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """413 in JSON, and no error in the log: an anonymous client sending big bodies must not fill
    the operator's error log (and alerts) with tracebacks."""
    big = b'{"displayName": "' + b"x" * (server.settings.max_body_bytes + 10) + b'"}'
    async with server.signed_in("carol") as carol:
        response = await carol.request(
            method, path, content=big, headers={"Content-Type": "application/json"}
        )

        async def chunks():  # no Content-Length: the limit must hold while streaming
            yield big[:1000]
            yield big[1000:]

        chunked = await carol.request(
            method, path, content=chunks(), headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert chunked.status_code == 413
    assert chunked.json()["error"] == "payload_too_large"
    # Declared or found while reading, the answer names the limit in the same words.
    assert chunked.json()["detail"] == response.json()["detail"]
    assert f"limit of {server.settings.max_body_bytes} bytes" in chunked.json()["detail"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert errors == []


async def test_bad_organization_names_and_unknown_routes(server: Server) -> None:
    async with server.signed_in("alice") as alice:
        assert (await alice.get("/v1/organizations/..%2F..%2Fetc")).status_code in (404, 422)
        weird = await alice.get("/v1/organizations/UPPER_case")
        assert weird.status_code == 422
        assert weird.json()["fields"] == ["org"]
        unknown = await alice.get("/v1/nothing-here")
        assert unknown.status_code == 404
        assert unknown.json()["error"] == "not_found"


async def test_head_answers_like_get_and_a_405_names_every_allowed_method(server: Server) -> None:
    """Uptime checkers probe with HEAD; a client that used the wrong method is told all the right
    ones (the Allow header named only one route's)."""
    async with server.signed_in("carol") as carol:
        health = await carol.head("/healthz")
        org_get = await carol.get("/v1/organizations/acme")
        org_head = await carol.head("/v1/organizations/acme")
        tasks_put = await carol.put("/v1/organizations/acme/tasks", json={})
        settings_get = await carol.get("/v1/organizations/acme/settings")
    assert health.status_code == 200
    assert health.content == b""
    assert org_head.status_code == 200
    assert org_head.content == b""
    assert org_head.headers["content-type"] == org_get.headers["content-type"]
    assert tasks_put.status_code == 405
    assert tasks_put.headers["allow"] == "GET, HEAD, POST"
    assert tasks_put.json()["error"] == "method_not_allowed"
    assert "use GET or HEAD or POST" in tasks_put.json()["detail"]
    assert settings_get.status_code == 405
    assert settings_get.headers["allow"] == "PATCH"
    # An organization's data is never cached on the way nor sniffed as something else, errors
    # included.
    for answer in (org_get, org_head, tasks_put, settings_get):
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["cache-control"] == "no-store"


async def test_a_near_miss_path_gets_a_json_404_naming_the_route_it_meant(server: Server) -> None:
    """A trailing slash or a capital letter away from a route: neither an empty-bodied redirect
    (which a client may not follow, or follow without its body) nor the dashboard's web page."""
    async with server.signed_in("carol") as carol:
        slash_get = await carol.get("/v1/organizations/acme/tasks/")
        slash_post = await carol.post("/v1/organizations/acme/tasks/", json={"repoId": "910001"})
        upper = await carol.get("/V1/app")
        health = await carol.get("/healthz/")
        tasks = (await carol.get("/v1/organizations/acme/tasks")).json()
    for response, meant in [
        (slash_get, "/v1/organizations/acme/tasks"),
        (slash_post, "/v1/organizations/acme/tasks"),
        (upper, "/v1/app"),
        (health, "/healthz"),
    ]:
        assert response.status_code == 404, (meant, response.status_code, response.text[:100])
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"] == "not_found"
        assert response.json()["detail"].endswith(f"did you mean {meant}?")
    assert all(t["taskId"].startswith("pr-") for t in tasks["tasks"])  # the POST created nothing


async def test_error_details_name_the_callers_fields_not_internal_commands(server: Server) -> None:
    async with server.signed_in("carol") as carol:
        model = await carol.patch("/v1/organizations/acme/settings", json={"defaultModel": "nope"})
        status = await carol.get("/v1/organizations/acme/tasks", params={"status": "idle,bogus"})
        blank = await carol.patch("/v1/organizations/acme/settings", json={"displayName": "  "})
    assert model.status_code == 422
    assert model.json()["fields"] == ["defaultModel"]
    assert model.json()["detail"].startswith("invalid input: defaultModel: unknown model 'nope'")
    assert status.status_code == 422
    assert status.json()["fields"] == ["status"]
    assert "unknown status 'bogus'" in status.json()["detail"]
    assert blank.json()["detail"] == "invalid request: displayName: must contain more than whitespace"
    for answer in (model, status, blank):
        text = answer.json()["detail"]
        assert "organization." not in text
        assert "Value error" not in text
        assert "statuses" not in text
