"""Mock mode: a seeded fake GitHub in this process, spoken to by the real driver.

Besides the fake GitHub API, mock mode needs somewhere to clone from and push to: every seeded
repository gets a local bare git repository under ``<data_dir>/mock-remotes/`` (one commit on its
default branch) and the fake's ``clone_url`` points at it (``file://``), so tasks clone, push and open
pull requests end to end without the network. Sandboxes get Foundry's demo agent as ``mock``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from foundry.config import GitHubSettings, Settings
from foundry.drivers.github.fake import FakeGitHub, seed_mock
from foundry.drivers.stripe.fake import FakeStripe

log = logging.getLogger(__name__)

#: A fixed identity and date, so a mock remote's first commit is the same on every machine.
_MOCK_COMMIT_AUTHOR = "Foundry Mock <mock@foundry.invalid> 1767605400 +0000"


def start_fake_github(settings: Settings) -> tuple[FakeGitHub, Settings]:
    """Start the seeded fake GitHub and return settings pointing every GitHub call at it.

    Seed: organizations ``acme`` and ``globex`` with the App installed, users ``alice`` (acme),
    ``bob`` (globex) and ``carol`` (both; admin of acme), a few repositories and open PRs. Every
    repository's clone URL is a local bare repository (`seed_mock_remotes`).
    """
    fake = seed_mock(FakeGitHub()).start()
    seed_mock_remotes(fake, settings.data_dir / "mock-remotes")
    keep_opened_pulls(fake, settings.data_dir / "mock-remotes" / OPENED_PULLS)
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


def start_fake_stripe(settings: Settings) -> tuple[FakeStripe, Settings]:
    """Start the fake Stripe and return settings pointing the Stripe driver at it.

    Its webhooks go to this Foundry's ``/v1/webhooks/stripe``, signed with a fresh secret; its hosted
    checkout page completes a payment with the test card ``Visa •••• 4242``.
    """
    fake = FakeStripe(webhook_secret=f"whsec_{secrets.token_hex(16)}").start()
    fake.webhook_url = f"{settings.base_url}/v1/webhooks/stripe"
    stripe = settings.stripe.model_copy(
        update={
            "secret_key": SecretStr(fake.api_key),
            "webhook_secrets": [SecretStr(fake.webhook_secret)],
            "price_team": fake.price_team,
            "api_base": fake.base_url,
        }
    )
    return fake, settings.model_copy(update={"stripe": stripe})


def github_app_env(fake: FakeGitHub, webhook_secret: str) -> dict[str, str]:
    """``FOUNDRY_GITHUB__*`` variables that configure ``fake`` as this deployment's GitHub App.

    For several Foundry processes that must share one GitHub (mock mode's built-in fake is one per
    process): each is started with these, as it would be with a real App's credentials.
    """
    return {
        "FOUNDRY_GITHUB__APP_ID": str(fake.app_id),
        # One line, as env files hold it; the settings turn the escapes back into line breaks.
        "FOUNDRY_GITHUB__PRIVATE_KEY": fake.private_key_pem.replace("\n", "\\n"),
        "FOUNDRY_GITHUB__CLIENT_ID": fake.client_id,
        "FOUNDRY_GITHUB__CLIENT_SECRET": fake.client_secret,
        "FOUNDRY_GITHUB__WEBHOOK_SECRET": webhook_secret,
        "FOUNDRY_GITHUB__API_URL": fake.base_url,
        "FOUNDRY_GITHUB__WEB_URL": fake.base_url,
        "FOUNDRY_GITHUB__THROTTLE": "false",
    }


#: Pull requests that tasks opened on the fake GitHub, one JSON object per line (outside every
#: account's directory: no sandbox sees it).
OPENED_PULLS = "opened-pulls.jsonl"


def keep_opened_pulls(fake: FakeGitHub, path: Path) -> None:
    """Give back to ``fake`` the pull requests opened through it before a restart, and record new ones.

    The fake's world is in memory; a task's pull request must keep its number across restarts (a
    new one numbered like it would be taken for it). A line that cannot be read is skipped with a
    warning, as is one of a repository the seed no longer has.
    """
    if path.exists():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            try:
                pull = json.loads(line)
                fake.add_pull(
                    pull["repo"],
                    int(pull["number"]),
                    str(pull["title"]),
                    str(pull["head"]),
                    base_ref=str(pull["base"]),
                    body=pull.get("body"),
                    author=pull.get("author"),
                    draft=bool(pull.get("draft")),
                )
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("mock GitHub: line %d of %s skipped: %s", number, path, exc)

    def record(pull: dict[str, Any]) -> None:
        with path.open("a") as out:
            out.write(json.dumps(pull) + "\n")

    fake.on_pull_created = record


def seed_mock_remotes(fake: FakeGitHub, root: Path) -> dict[str, str]:
    """Give every repository of ``fake`` a local bare remote under ``root`` and point its clone URL there.

    Idempotent: an existing remote is kept as it is (with whatever branches tasks pushed to it), so a
    restarted mock server finds its pushed work again. Returns ``{full_name: clone_url}``.
    """
    # The fake has no listing API for its own state: read its world under its lock.
    with fake._lock:
        repos = list(fake._world.repos.values())
    urls: dict[str, str] = {}
    for repo in repos:
        bare = root / repo.owner / f"{repo.name}.git"
        if not (bare / "HEAD").exists():
            readme = f"# {repo.full_name}\n\n{repo.description or 'A mock repository.'}\n"
            _create_bare_repo(bare, repo.default_branch, readme)
        url = bare.resolve().as_uri()
        fake.add_repo(
            repo.installation_id,
            repo.owner,
            repo.name,
            private=repo.private,
            default_branch=repo.default_branch,
            archived=repo.archived,
            description=repo.description,
            updated_at=repo.updated_at,
            id=repo.id,
            clone_url=url,
        )
        urls[repo.full_name] = url
    return urls


def _create_bare_repo(bare: Path, branch: str, readme: str) -> None:
    """``git init --bare`` plus one commit holding README.md, written by ``git fast-import``."""
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "LC_ALL": "C",
    }
    bare.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["git", "init", "-q", "--bare", "-b", branch, str(bare)], env=env, check=True, capture_output=True
    )
    content = readme.encode()
    message = b"Initial commit\n"
    stream = (
        f"commit refs/heads/{branch}\n"
        f"author {_MOCK_COMMIT_AUTHOR}\ncommitter {_MOCK_COMMIT_AUTHOR}\n".encode()
        + f"data {len(message)}\n".encode()
        + message
        + f"M 644 inline README.md\ndata {len(content)}\n".encode()
        + content
        + b"\n"
    )
    done = subprocess.run(
        ["git", "fast-import", "--quiet"], cwd=bare, env=env, input=stream, capture_output=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"could not seed mock remote {bare}: {done.stderr.decode(errors='replace')}")
    log.info("mock remote created path=%s branch=%s", bare, branch)
