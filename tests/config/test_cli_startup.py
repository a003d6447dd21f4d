"""Start-up configuration errors of the real command line: one line on stderr, exit code 2."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from foundry.open_files import MINIMUM, open_file_refusal
from tests.ports import free_port


def _foundry(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Runs ``python -m foundry`` with only the given ``FOUNDRY_*`` variables set.

    The in-process backend and a free port: should a refusal be missing, the server that starts
    instead fails the test by its timeout rather than by taking a port or starting a Ray.
    """
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("FOUNDRY_")}
    base.update(
        FOUNDRY_DATA_DIR=str(tmp_path / "data"),
        FOUNDRY_RUNTIME__BACKEND="inprocess",
        FOUNDRY_PORT=str(free_port()),
    )
    base.update(env)
    return subprocess.run(
        [sys.executable, "-m", "foundry", *args],
        env=base,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def _one_line_refusal(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"FOUNDRY_MODE": "prod"},
            "invalid setting FOUNDRY_MODE='prod': input should be 'mock' or 'production'",
        ),
        ({"FOUNDRY_LOG_LEVEL": "loud"}, "invalid setting FOUNDRY_LOG_LEVEL"),
        ({"FOUNDRY_RUNTIME__SHARDS": "{bad"}, "FOUNDRY_RUNTIME__SHARDS must be a JSON object"),
        ({"FOUNDRY_PORTT": "1"}, "unknown setting FOUNDRY_PORTT; did you mean FOUNDRY_PORT?"),
        ({"FOUNDRY_PORT": "99999"}, "invalid setting FOUNDRY_PORT='99999'"),
        ({"FOUNDRY_PORT": "-1"}, "invalid setting FOUNDRY_PORT='-1'"),
        ({"FOUNDRY_AUTH__COOKIE_NAME": "bad name;x"}, "invalid setting FOUNDRY_AUTH__COOKIE_NAME"),
        ({"FOUNDRY_AUTH__COOKIE_NAME": ""}, "invalid setting FOUNDRY_AUTH__COOKIE_NAME"),
        ({"FOUNDRY_AUTH__SESSION_TTL_SECONDS": "-1"}, "invalid setting FOUNDRY_AUTH__SESSION_TTL_SECONDS"),
        ({"FOUNDRY_MAX_BODY_BYTES": "0"}, "invalid setting FOUNDRY_MAX_BODY_BYTES"),
        ({"FOUNDRY_APP_URL": "foundry.example.com"}, "FOUNDRY_APP_URL='foundry.example.com': value error"),
        ({"FOUNDRY_GITHUB__API_URL": "not-a-url"}, "invalid setting FOUNDRY_GITHUB__API_URL"),
        ({"FOUNDRY_STRIPE__API_BASE": "ftp://x"}, "invalid setting FOUNDRY_STRIPE__API_BASE"),
        (
            {
                "FOUNDRY_MODE": "production",
                "FOUNDRY_SECRET_KEY": "x",
                "FOUNDRY_APP_URL": "https://f.example",
                "FOUNDRY_GITHUB__APP_ID": "1",
                "FOUNDRY_GITHUB__PRIVATE_KEY": "k",
                "FOUNDRY_GITHUB__CLIENT_ID": "c",
                "FOUNDRY_GITHUB__CLIENT_SECRET": "   ",
                "FOUNDRY_GITHUB__WEBHOOK_SECRET": "w",
            },
            "production mode needs these settings: FOUNDRY_SECRET_KEY (at least 32 characters), "
            "FOUNDRY_GITHUB__CLIENT_SECRET",
        ),
        (
            # Its own fake GitHub would replace the hosts' GitHub settings with another App's key.
            {"FOUNDRY_RUNTIME__BACKEND": "ray", "FOUNDRY_RUNTIME__RAY_ADDRESS": "127.0.0.1:6399"},
            "a second API process in mock mode cannot share the first one's built-in fake GitHub",
        ),
    ],
    ids=[
        "mode",
        "log-level",
        "bad-json",
        "unknown-variable",
        "port-too-high",
        "port-negative",
        "cookie-name",
        "cookie-name-empty",
        "session-ttl",
        "body-limit",
        "app-url",
        "github-url",
        "stripe-url",
        "weak-production-secrets",
        "mock-join-without-github",
    ],
)
def test_serve_refuses_a_bad_setting_in_one_line_naming_it(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    line = _one_line_refusal(_foundry(tmp_path, "serve", **env))
    assert expected in line
    if "LOG_LEVEL" in expected:
        # The valid levels are listed, so the operator need not look them up.
        assert all(level in line for level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))


def test_every_command_refuses_an_unknown_setting(tmp_path: Path) -> None:
    line = _one_line_refusal(_foundry(tmp_path, "db", "check", FOUNDRY_RUNTIME__SHARD="2"))
    assert "unknown setting FOUNDRY_RUNTIME__SHARD; did you mean FOUNDRY_RUNTIME__SHARDS?" in line


def test_version_prints_the_installed_package_version(tmp_path: Path) -> None:
    result = _foundry(tmp_path, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"foundry {version('foundry')}"


@pytest.mark.parametrize(
    ("args", "env"),
    [(["--host", "0.0.0.0"], {}), ([], {"FOUNDRY_HOST": "::"})],
    ids=["flag-ipv4-any", "env-ipv6-any"],
)
def test_mock_mode_refuses_a_public_interface(tmp_path: Path, args: list[str], env: dict[str, str]) -> None:
    line = _one_line_refusal(_foundry(tmp_path, "serve", *args, FOUNDRY_MODE="mock", **env))
    assert "refusing to serve mock mode on" in line
    assert "--allow-public-mock" in line
    assert "FOUNDRY_ALLOW_PUBLIC_MOCK=true" in line


def test_an_open_file_limit_too_low_to_serve_is_refused_or_raised(tmp_path: Path) -> None:
    """Started after `ulimit -n 1024` (soft and hard): under load the server would run out of files
    everywhere at once. A process allowed to raise its hard limit does so; any other is refused at
    start, in one line naming the limit and how to raise it."""

    def limited() -> None:  # pragma: no cover - runs in the child before exec
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    probe = subprocess.run(
        [sys.executable, "-c", "import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 4096))"],
        preexec_fn=limited,
        check=False,
    )
    if probe.returncode == 0:  # this machine lets Foundry raise its hard limit
        assert open_file_refusal(MINIMUM) is None
        pytest.skip("the hard open-file limit can be raised here; the server raises it")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("FOUNDRY_")}
    env.update(FOUNDRY_DATA_DIR=str(tmp_path / "data"), FOUNDRY_RUNTIME__BACKEND="inprocess")
    result = subprocess.run(
        [sys.executable, "-m", "foundry", "serve"],
        env={**env, "FOUNDRY_PORT": str(free_port())},
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
        preexec_fn=limited,
    )
    line = _one_line_refusal(result)
    assert "the open-file limit is 1024" in line
    assert "ulimit -Hn" in line
    assert not (tmp_path / "data").exists()  # refused before anything was written
