"""Identifier rules shared by every role."""

from __future__ import annotations

import re

APP_SHELL_ID = "app"


def slugify(value: str) -> str:
    """Lowercase; every run of characters outside [a-z0-9] becomes '-'; no leading/trailing '-'."""
    return re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")


def organization_id_for(kind: str, login: str) -> str:
    """``personal-<slug>`` for a GitHub user account, ``<slug>`` for a GitHub organization."""
    slug = slugify(login)
    return f"personal-{slug}" if kind == "personal" else slug


def user_id_for(github_account_id: int) -> str:
    """The one canonical user id: derived from the GitHub account id."""
    return f"gh-{int(github_account_id)}"
