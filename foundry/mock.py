"""Mock mode: a seeded fake GitHub in this process, spoken to by the real driver."""

from __future__ import annotations

import secrets

from foundry.config import GitHubSettings, Settings
from foundry.drivers.github.fake import FakeGitHub, seed_mock


def start_fake_github(settings: Settings) -> tuple[FakeGitHub, Settings]:
    """Start the seeded fake GitHub and return settings pointing every GitHub call at it.

    Seed: organizations ``acme`` and ``globex`` with the App installed, users ``alice`` (acme),
    ``bob`` (globex) and ``carol`` (both; admin of acme), a few repositories and open PRs.
    """
    fake = seed_mock(FakeGitHub()).start()
    github = GitHubSettings(
        app_id=fake.app_id,
        private_key=fake.private_key_pem,  # type: ignore[arg-type]
        client_id=fake.client_id,
        client_secret=fake.client_secret,  # type: ignore[arg-type]
        webhook_secret=settings.github.webhook_secret.get_secret_value() or secrets.token_hex(20),  # type: ignore[arg-type]
        api_url=fake.base_url,
        web_url=fake.base_url,
        throttle=False,
    )
    return fake, settings.model_copy(update={"github": github})
