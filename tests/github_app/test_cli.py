"""``foundry github-app``, run as a real process."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from foundry.config import GitHubSettings
from foundry.drivers.github.fake import FakeGitHub
from foundry.github_app import OPTIONAL_PERMISSIONS, REQUIRED_EVENTS, REQUIRED_PERMISSIONS, build_manifest
from foundry.github_app_check import load_app_key


def _foundry(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDRY_")}
    return subprocess.run(
        [sys.executable, "-m", "foundry", "github-app", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def fake() -> Iterator[FakeGitHub]:
    github = FakeGitHub().start()
    yield github
    github.stop()


def test_manifest_prints_the_app_manifest_as_json() -> None:
    result = _foundry("manifest", FOUNDRY_APP_URL="https://foundry.example.com")
    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)
    assert manifest["hook_attributes"]["url"] == "https://foundry.example.com/v1/webhooks/github"
    assert manifest["callback_urls"] == ["https://foundry.example.com/v1/auth/callback/github"]
    assert manifest["default_permissions"] == {**REQUIRED_PERMISSIONS, **OPTIONAL_PERMISSIONS}
    assert manifest["default_events"] == REQUIRED_EVENTS


def test_manifest_without_the_app_url_is_a_one_line_error() -> None:
    result = _foundry("manifest")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "FOUNDRY_APP_URL" in lines[0]


def test_manifest_with_a_bad_name_is_a_one_line_error() -> None:
    result = _foundry("manifest", "--name", "x" * 40, FOUNDRY_APP_URL="https://foundry.example.com")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "34" in result.stderr


def test_manifest_html_posts_the_manifest_to_the_organizations_new_app_form() -> None:
    result = _foundry("manifest", "--html", "--org", "acme", FOUNDRY_APP_URL="https://foundry.example.com")
    assert result.returncode == 0, result.stderr
    assert 'action="https://github.com/organizations/acme/settings/apps/new"' in result.stdout
    assert 'name="manifest"' in result.stdout
    assert "&quot;default_events&quot;" in result.stdout


def test_convert_trades_the_code_for_settings_foundry_accepts(fake: FakeGitHub, tmp_path: Path) -> None:
    code = fake.manifest_code(build_manifest("https://foundry.example.com"))
    out = tmp_path / "github.env"
    result = _foundry("convert", code, "--out", str(out), FOUNDRY_GITHUB__API_URL=fake.base_url)
    assert result.returncode == 0, result.stderr
    assert fake.private_key_pem.splitlines()[1] not in result.stdout  # secrets go to the file only
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    text = out.read_text()
    assert f"FOUNDRY_GITHUB__APP_ID={fake.app_id}\n" in text
    assert f"FOUNDRY_GITHUB__CLIENT_ID={fake.client_id}\n" in text
    assert f"FOUNDRY_GITHUB__CLIENT_SECRET={fake.client_secret}\n" in text
    # The key is one line of the env file, and Foundry's settings read it back as the PEM.
    line = next(x for x in text.splitlines() if x.startswith("FOUNDRY_GITHUB__PRIVATE_KEY="))
    value = line.split("=", 1)[1]
    settings = GitHubSettings(private_key=value)  # type: ignore[arg-type]
    assert settings.private_key.get_secret_value().strip() == fake.private_key_pem.strip()
    key, problem = load_app_key(settings.private_key.get_secret_value())
    assert key is not None, problem
    # A code works once.
    again = _foundry("convert", code, FOUNDRY_GITHUB__API_URL=fake.base_url)
    assert again.returncode == 1
    assert "once" in again.stderr
