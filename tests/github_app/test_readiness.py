"""``/readyz`` checks the GitHub App: its key, its id, its permissions, its events, its client id."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from foundry.drivers.github.fake import FakeGitHub
from foundry.github_app import OPTIONAL_PERMISSIONS, REQUIRED_EVENTS, REQUIRED_PERMISSIONS
from tests.github_app.conftest import foundry_server

CHECK_LOGGER = "foundry.github_app_check"


def _key_lines(pem: str) -> list[str]:
    """The lines of a key that would give it away if they appeared anywhere."""
    return [line for line in pem.splitlines() if len(line) >= 16 and "-----" not in line]


def _assert_no_key(text: str, pem: str) -> None:
    for line in _key_lines(pem):
        assert line not in text, "the private key leaked"


async def test_a_correct_app_is_ready(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=CHECK_LOGGER)
    async with foundry_server(tmp_path, production=True) as server, server.client() as client:
        response = await client.get("/readyz")
        body = response.json()
        assert body["checks"]["githubApp"]["ok"] is True, body
        assert body["checks"]["githubApp"]["app"]["id"] == server.github.app_id
        assert response.status_code == 200, body
        _assert_no_key(response.text + caplog.text, server.settings.github.private_key.get_secret_value())
    assert not [r for r in caplog.records if r.name == CHECK_LOGGER and r.levelno >= logging.ERROR]


async def test_a_key_that_does_not_parse_is_not_ready_and_says_which_setting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=CHECK_LOGGER)
    real = FakeGitHub().private_key_pem
    lines = real.splitlines()
    broken = "\n".join(lines[:6] + lines[-1:])  # a PEM cut short, as a bad copy-paste leaves it
    async with (
        foundry_server(tmp_path, github={"private_key": broken}, production=True) as server,
        server.client() as client,
    ):
        response = await client.get("/readyz")
        check = response.json()["checks"]["githubApp"]
        assert response.status_code == 503
        assert check["ok"] is False
        assert "the GitHub App private key (FOUNDRY_GITHUB__PRIVATE_KEY) does not parse" in check["detail"]
        errors = [
            r.getMessage() for r in caplog.records if r.name == CHECK_LOGGER and r.levelno == logging.ERROR
        ]
        assert any("FOUNDRY_GITHUB__PRIVATE_KEY" in e and "does not parse" in e for e in errors), errors
        _assert_no_key(response.text + caplog.text, broken)
        assert not server.github.requests_to("/app"), "a key that does not parse cannot sign a JWT"


async def test_a_key_on_one_line_with_escaped_line_breaks_works(tmp_path: Path) -> None:
    # docker run --env-file and systemd's EnvironmentFile hold one line per variable.
    escaped = FakeGitHub().private_key_pem.strip().replace("\n", "\\n")
    assert "\n" not in escaped
    async with foundry_server(tmp_path, github={"private_key": escaped}) as server, server.client() as client:
        response = await client.get("/readyz")
        check = response.json()["checks"]["githubApp"]
        assert check["ok"] is True, check
        assert response.status_code == 200
        assert server.github.requests_to("/app", "GET")


async def test_another_apps_key_is_refused_by_github(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=CHECK_LOGGER)
    # A valid RSA key, but not one GitHub knows for this App (another App's, or a deleted one).
    other = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        .decode()
    )
    async with foundry_server(tmp_path, github={"private_key": other}) as server, server.client() as client:
        response = await client.get("/readyz")
        detail = response.json()["checks"]["githubApp"]["detail"]
        assert response.status_code == 503
        assert "401" in detail
        assert "FOUNDRY_GITHUB__APP_ID" in detail
        assert "FOUNDRY_GITHUB__PRIVATE_KEY" in detail
        _assert_no_key(response.text + caplog.text, other)


async def test_an_app_missing_permissions_and_events_lists_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=CHECK_LOGGER)

    def weaker(fake: FakeGitHub) -> None:
        fake.app_permissions["contents"] = "read"  # a write need is not met by read
        del fake.app_permissions["members"]
        fake.app_events = [e for e in fake.app_events if e not in ("check_run", "issue_comment")]

    async with foundry_server(tmp_path, app=weaker, production=True) as server, server.client() as client:
        response = await client.get("/readyz")
        check = response.json()["checks"]["githubApp"]
        assert response.status_code == 503
        assert check["missingPermissions"] == {"contents": "write (has read)", "members": "read (has none)"}
        assert check["missingEvents"] == ["check_run", "issue_comment"]
        assert "contents: write (has read), members: read (has none)" in check["detail"]
        assert "check_run, issue_comment" in check["detail"]
    errors = [r.getMessage() for r in caplog.records if r.name == CHECK_LOGGER and r.levelno == logging.ERROR]
    assert len(errors) == 2, errors  # one line per problem
    assert any("contents: write" in e for e in errors)
    assert any("check_run" in e for e in errors)


async def test_a_wrong_app_id_or_client_id_is_named(tmp_path: Path) -> None:
    def other_identity(fake: FakeGitHub) -> None:
        fake.client_id = "Iv1.someotherapp0001"

    async with foundry_server(tmp_path, app=other_identity) as server, server.client() as client:
        # The settings were taken before the App's client id changed: they no longer match.
        response = await client.get("/readyz")
        detail = response.json()["checks"]["githubApp"]["detail"]
        assert response.status_code == 503
        assert "FOUNDRY_GITHUB__CLIENT_ID" in detail
        assert "Iv1.someotherapp0001" in detail


async def test_readiness_asks_github_once_a_minute_at_most(tmp_path: Path) -> None:
    async with foundry_server(tmp_path) as server, server.client() as client:
        for _ in range(5):
            assert (await client.get("/readyz")).status_code == 200
        # The start-up check's answer is reused.
        assert len(server.github.requests_to("/app", "GET")) == 1


def test_the_fake_app_holds_exactly_what_foundry_requires() -> None:
    fake = FakeGitHub()
    assert fake.app_permissions == {**REQUIRED_PERMISSIONS, **OPTIONAL_PERMISSIONS}
    assert fake.app_events == REQUIRED_EVENTS


async def test_an_app_without_the_optional_email_permission_is_still_ready(tmp_path: Path) -> None:
    def without_email(fake: FakeGitHub) -> None:
        del fake.app_permissions["email_addresses"]

    async with foundry_server(tmp_path, app=without_email) as server, server.client() as client:
        response = await client.get("/readyz")
        assert response.json()["checks"]["githubApp"]["ok"] is True
        assert response.status_code == 200
