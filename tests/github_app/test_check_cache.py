"""`GitHubAppCheck`: cached for a minute, then asked again, so a fix on GitHub is seen."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from foundry.config import GitHubSettings
from foundry.drivers.github.fake import FakeGitHub
from foundry.github_app_check import GitHubAppCheck


@pytest.fixture
def fake() -> Iterator[FakeGitHub]:
    github = FakeGitHub().start()
    yield github
    github.stop()


def _settings(fake: FakeGitHub) -> GitHubSettings:
    return GitHubSettings(
        app_id=fake.app_id,
        private_key=fake.private_key_pem,  # type: ignore[arg-type]
        client_id=fake.client_id,
        client_secret=fake.client_secret,  # type: ignore[arg-type]
        api_url=fake.base_url,
        web_url=fake.base_url,
    )


async def test_the_result_is_reused_for_a_minute_then_checked_again(fake: FakeGitHub) -> None:
    now = [1000.0]
    fake.app_events.remove("push")
    check = GitHubAppCheck(_settings(fake), monotonic=lambda: now[0])
    first = await check.status()
    assert first["ok"] is False
    assert first["missingEvents"] == ["push"]
    fake.app_events.append("push")  # the owner ticks the event on GitHub
    now[0] += 59
    assert (await check.status())["ok"] is False  # cached: GitHub is not asked again yet
    assert len(fake.requests_to("/app", "GET")) == 1
    now[0] += 2
    assert (await check.status())["ok"] is True
    assert len(fake.requests_to("/app", "GET")) == 2


async def test_github_unreachable_is_a_reason_not_a_crash(fake: FakeGitHub) -> None:
    settings = _settings(fake)
    fake.stop()
    status = await GitHubAppCheck(settings).status()
    assert status["ok"] is False
    assert "did not answer GET" in status["detail"]


async def test_no_app_configured_is_nothing_to_check() -> None:
    assert (await GitHubAppCheck(None).status()) == {"ok": True, "detail": "no GitHub App configured"}
