"""Does the configured GitHub App work for Foundry? Checked at start-up and by ``/readyz``.

A wrong App is otherwise found late and far from its cause: a key that does not parse fails the first
sync, a missing permission fails a push hours later, a missing event leaves a pull request's state
stale forever. So the App is checked once at start-up (problems are logged at ERROR, one line each,
saying what to fix) and ``/readyz`` reports the cached result, checking again at most every
`MAX_AGE_S` seconds because GitHub rate-limits App requests.

Checked: the private key parses; ``GET /app`` (as the App, with a JWT signed by that key) answers with
the configured App id; the App's permissions and events cover `REQUIRED_PERMISSIONS` and
`REQUIRED_EVENTS`; the OAuth client id is the App's. The private key never appears in a result or a log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from foundry.config import GitHubSettings
from foundry.github_app import missing_events, missing_permissions

log = logging.getLogger(__name__)

#: Seconds a result is reused before ``/readyz`` asks GitHub again.
MAX_AGE_S = 60.0
#: Seconds ``GET /app`` may take (``/readyz`` waits for it).
TIMEOUT_S = 5.0
_KEY_SETTING = "FOUNDRY_GITHUB__PRIVATE_KEY"


@dataclass
class AppCheckResult:
    """One check of the App: ``problems`` is empty when it is fit for Foundry."""

    problems: list[str] = field(default_factory=list)
    app: dict[str, Any] | None = None
    missing_permissions: dict[str, str] = field(default_factory=dict)
    missing_events: list[str] = field(default_factory=list)
    checked_at: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        """The ``checks.githubApp`` entry of ``/readyz``."""
        out: dict[str, Any] = {
            "ok": self.ok,
            "detail": "; ".join(self.problems) if self.problems else "the GitHub App has what Foundry needs",
        }
        if self.app is not None:
            out["app"] = self.app
        if self.missing_permissions:
            out["missingPermissions"] = self.missing_permissions
        if self.missing_events:
            out["missingEvents"] = self.missing_events
        return out


def _scrub(text: str, secret: str) -> str:
    """``text`` without the key or any of its lines (an error message may quote its input)."""
    for part in [secret, *[line.strip() for line in secret.splitlines() if len(line.strip()) >= 16]]:
        if part:
            text = text.replace(part, "[redacted]")
    return text


def load_app_key(pem: str) -> tuple[rsa.RSAPrivateKey | None, str | None]:
    """The App's RSA private key, or None and a sentence saying why it is unusable (never the key)."""
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        reason = _scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, pem)
        return None, (
            f"the GitHub App private key ({_KEY_SETTING}) does not parse: {reason}; set it to the "
            "whole .pem file GitHub gave for the App, BEGIN and END lines included (on one line, write "
            "its line breaks as \\n)"
        )
    if not isinstance(key, rsa.RSAPrivateKey):
        return None, (
            f"the GitHub App private key ({_KEY_SETTING}) is not an RSA key; GitHub App keys are RSA: "
            "generate one in the App's settings"
        )
    return key, None


def _app_jwt(key: rsa.RSAPrivateKey, app_id: int) -> str:
    now = int(time.time())
    # iat 60 s in the past for clock drift; GitHub refuses a JWT valid for more than 10 minutes.
    return jwt.encode({"iat": now - 60, "exp": now + 540, "iss": str(app_id)}, key, algorithm="RS256")


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    return str(body.get("message", "")) if isinstance(body, dict) else ""


async def check_github_app(github: GitHubSettings, *, timeout: float = TIMEOUT_S) -> AppCheckResult:
    """Check the configured App against GitHub (see the module docstring). Never raises for a
    GitHub or configuration problem: each becomes a sentence in ``problems``."""
    result = AppCheckResult(checked_at=time.monotonic())
    pem = github.private_key.get_secret_value()
    key, problem = load_app_key(pem)
    if key is None:
        result.problems.append(problem or "the GitHub App private key is unusable")
        return result
    url = f"{github.api_url.rstrip('/')}/app"
    headers = {
        "Authorization": f"Bearer {_app_jwt(key, github.app_id)}",
        "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": "2022-11-28",
    }
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.get(url, headers=headers)
    except httpx.HTTPError as exc:
        result.problems.append(f"GitHub's API did not answer GET {url}: {type(exc).__name__}: {exc}")
        return result
    if response.status_code == 401:
        result.problems.append(
            f"GitHub refused the App's JWT on GET /app (401 {_message(response)}): "
            f"FOUNDRY_GITHUB__APP_ID={github.app_id} and {_KEY_SETTING} must belong to the same App, "
            "and the key must not have been deleted in the App's settings"
        )
        return result
    if response.status_code != 200:
        result.problems.append(f"GET {url} answered {response.status_code}: {_message(response)}")
        return result
    try:
        app = response.json()
        app_id = int(app["id"])
    except (ValueError, KeyError, TypeError) as exc:
        result.problems.append(f"GET {url} did not answer a GitHub App: {type(exc).__name__}: {exc}")
        return result
    result.app = {"id": app_id, "slug": app.get("slug"), "name": app.get("name")}
    if app_id != github.app_id:
        result.problems.append(
            f"GET /app answers App id {app_id}, but FOUNDRY_GITHUB__APP_ID is {github.app_id}"
        )
    permissions = app.get("permissions") if isinstance(app.get("permissions"), dict) else {}
    result.missing_permissions = missing_permissions(permissions)
    if result.missing_permissions:
        listed = ", ".join(f"{name}: {need}" for name, need in result.missing_permissions.items())
        result.problems.append(
            f"the GitHub App lacks permissions Foundry needs: {listed}; grant them in the App's settings "
            "(Permissions & events), then accept them on each installation"
        )
    events = app.get("events") if isinstance(app.get("events"), list) else []
    result.missing_events = missing_events([str(e) for e in events])
    if result.missing_events:
        result.problems.append(
            "the GitHub App is not subscribed to webhook events Foundry handles: "
            f"{', '.join(result.missing_events)}; tick them in the App's settings (Permissions & events)"
        )
    client_id = app.get("client_id")
    if client_id and client_id != github.client_id:
        result.problems.append(
            f"FOUNDRY_GITHUB__CLIENT_ID is {github.client_id!r}, but the App's client id is {client_id!r}"
        )
    return result


class GitHubAppCheck:
    """The App check of one Foundry server: run at start-up, cached, refreshed lazily.

    Args:
        github: the App settings; None when no App is configured (nothing to check).
        max_age: seconds a result is reused.
        monotonic: time source for the cache's age (tests advance their own).
    """

    def __init__(
        self,
        github: GitHubSettings | None,
        *,
        max_age: float = MAX_AGE_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._github = github
        self._max_age = max_age
        self._monotonic = monotonic
        self._result: AppCheckResult | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[dict[str, Any]] | None = None

    def start(self) -> None:
        """Check in the background now, so start-up logs what to fix without waiting for it."""
        if self._github is not None and self._task is None:
            self._task = asyncio.create_task(self.status(), name="github-app-check")

    async def close(self) -> None:
        """Stop a check still running (shutdown)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def status(self) -> dict[str, Any]:
        """The ``checks.githubApp`` entry: the cached result, checked again when older than max_age."""
        if self._github is None:
            return {"ok": True, "detail": "no GitHub App configured"}
        async with self._lock:  # concurrent probes share one request to GitHub
            result = self._result
            if result is None or self._monotonic() - result.checked_at >= self._max_age:
                result = await self._check(self._github)
                self._report(self._result, result)
                self._result = result
        return result.as_json()

    async def _check(self, github: GitHubSettings) -> AppCheckResult:
        try:
            result = await check_github_app(github)
        except Exception as exc:
            # A bug here must not take /readyz down with a 500; it is reported as the problem.
            log.exception("GitHub App check crashed")
            reason = _scrub(f"{type(exc).__name__}: {exc}", github.private_key.get_secret_value())
            result = AppCheckResult(problems=[f"the GitHub App check failed: {reason}"])
        result.checked_at = self._monotonic()
        return result

    @staticmethod
    def _report(before: AppCheckResult | None, after: AppCheckResult) -> None:
        """Log what to fix once per change, not at every probe."""
        if before is not None and before.problems == after.problems:
            return
        for problem in after.problems:
            log.error("GitHub App not ready: %s", problem)
        if after.ok:
            log.info("GitHub App check passed: %s", after.app)
