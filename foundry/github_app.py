"""What Foundry needs from its GitHub App, in one place, and the App manifest built from it.

`REQUIRED_PERMISSIONS` and `REQUIRED_EVENTS` are the single source for the manifest
(``foundry github-app manifest``), for the start-up check (`foundry.github_app_check`) and for the
fake GitHub's App, so the three cannot drift apart. A test keeps `REQUIRED_EVENTS` equal to the
events the webhook handlers handle.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

Access = Literal["read", "write"]

#: GitHub App permission → the access Foundry needs, and why. GitHub also gates webhook events on
#: permissions: an App only receives an event whose permission it holds.
REQUIRED_PERMISSIONS: dict[str, Access] = {
    # Clone task branches and push the agent's commits (git over HTTPS with an installation token);
    # also what the push, create and delete events need.
    "contents": "write",
    # Every App that reads repositories must have it: the installation's repository list and each
    # repository's name, default branch and visibility; also the repository event.
    "metadata": "read",
    # Open pull requests for tasks and read their state; the pull_request, pull_request_review and
    # pull_request_review_comment events.
    "pull_requests": "write",
    # Comments in a pull request's conversation arrive as issue_comment events, which GitHub sends
    # only to Apps with access to issues.
    "issues": "read",
    # The organization's members and admins (who may sign in, and their roles); the member,
    # membership and organization events.
    "members": "read",
    # The check_suite and check_run events (CI state shown on tasks).
    "checks": "read",
    # The status event (commit statuses, the older CI signal).
    "statuses": "read",
}

#: Requested by the manifest, but Foundry works without them (readiness does not require them).
OPTIONAL_PERMISSIONS: dict[str, Access] = {
    # A signed-in user's primary address when their profile email is private (``/user/emails`` with
    # the user's token), shown on their profile; without it the address stays empty and each such
    # sign-in logs a warning.
    "email_addresses": "read",
}

#: Webhook events Foundry handles and must subscribe to (the App's ``events``).
REQUIRED_EVENTS: list[str] = [
    "check_run",
    "check_suite",
    "create",
    "delete",
    "issue_comment",
    "member",
    "membership",
    "organization",
    "pull_request",
    "pull_request_review",
    "pull_request_review_comment",
    "push",
    "repository",
    "status",
]

#: Events Foundry handles that GitHub sends every App without a subscription (they cannot be
#: listed in an App's events, and ``GET /app`` never reports them).
ALWAYS_DELIVERED_EVENTS: frozenset[str] = frozenset({"ping", "installation", "installation_repositories"})

#: GitHub refuses App names longer than this.
MAX_APP_NAME = 34
#: Where GitHub's manifest flow sends the browser back, with ``?code=`` for ``foundry github-app
#: convert``. No route serves it: the dashboard's page for unknown paths shows, and the code stays in
#: the address bar.
MANIFEST_REDIRECT_PATH = "/github-app/created"

_LEVELS = {"read": 1, "write": 2, "admin": 3}


def webhook_url(app_url: str) -> str:
    """Where GitHub delivers the App's webhooks."""
    return f"{app_url.rstrip('/')}/v1/webhooks/github"


def oauth_callback_url(app_url: str) -> str:
    """Where GitHub sends a user back after sign-in."""
    return f"{app_url.rstrip('/')}/v1/auth/callback/github"


def default_app_name(app_url: str) -> str:
    """``Foundry <host>``, cut to GitHub's limit (App names are unique across GitHub)."""
    return f"Foundry {urlsplit(app_url).hostname or ''}"[:MAX_APP_NAME].rstrip()


def build_manifest(app_url: str, name: str | None = None) -> dict[str, Any]:
    """The GitHub App manifest ("create a GitHub App from a manifest") for a Foundry at ``app_url``.

    Raises:
        ValueError: ``app_url`` is not an http(s) URL, or ``name`` is empty or too long for GitHub.
    """
    base = app_url.strip().rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"FOUNDRY_APP_URL must be the public http(s) URL of Foundry, got {app_url!r}")
    app_name = (name if name is not None else default_app_name(base)).strip()
    if not app_name or len(app_name) > MAX_APP_NAME:
        raise ValueError(f"the App name must be 1 to {MAX_APP_NAME} characters, got {app_name!r}")
    return {
        "name": app_name,
        "url": base,
        "description": "Foundry: coding agents for the team, one branch and one sandbox per task.",
        "hook_attributes": {"url": webhook_url(base), "active": True},
        "redirect_url": base + MANIFEST_REDIRECT_PATH,
        "callback_urls": [oauth_callback_url(base)],
        # Sign-in is Foundry's own OAuth flow, not a step of installing the App.
        "request_oauth_on_install": False,
        # Installable only by the account that owns it: a self-hosted Foundry serves one team.
        "public": False,
        "default_permissions": {**REQUIRED_PERMISSIONS, **OPTIONAL_PERMISSIONS},
        "default_events": list(REQUIRED_EVENTS),
    }


def missing_permissions(granted: dict[str, str]) -> dict[str, str]:
    """Each required permission ``granted`` does not cover → ``"<need> (has <level>)"``.

    A ``write`` need is not met by ``read``; ``admin`` covers both.
    """
    missing: dict[str, str] = {}
    for name, need in REQUIRED_PERMISSIONS.items():
        has = str(granted.get(name) or "none")
        if _LEVELS.get(has, 0) < _LEVELS[need]:
            missing[name] = f"{need} (has {has})"
    return missing


def missing_events(subscribed: list[str]) -> list[str]:
    """The required events not in ``subscribed``, in `REQUIRED_EVENTS` order."""
    have = set(subscribed)
    return [event for event in REQUIRED_EVENTS if event not in have]
