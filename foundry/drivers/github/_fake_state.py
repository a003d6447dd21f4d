"""The fake GitHub's state: the records it keeps and the API tests use to shape its world.

`FakeGitHub` is assembled from one class per concern (see ``fake.py``); this base holds what every
other part reads — the world (accounts, installations, repositories, pull requests), the issued
credentials and the request log — and the methods that add to or change the world. It speaks no HTTP:
serving, authentication and the routes build on it in their own modules.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from foundry.clock import Clock
from foundry.drivers.github._fake_records import (
    JSON,
    Account,
    AccountType,
    Installation,
    Pull,
    Renderer,
    Repo,
    World,
    sha,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from foundry.drivers.github._fake_http import HttpServer
    from foundry.drivers.github._fake_serving import Handler

__all__ = ["Failure", "FakeState", "InstallationGrant", "OAuthCode", "RecordedRequest"]


@dataclass
class InstallationGrant:
    installation_id: int
    expires_at: datetime
    repository_ids: frozenset[int] | None


@dataclass
class OAuthCode:
    login: str
    redirect_uri: str | None
    issued_at: datetime
    used: bool = False


@dataclass
class Failure:
    path_prefix: str
    status: int
    headers: dict[str, str]
    body: JSON
    method: str | None
    remaining: int
    skip: int


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake served. ``headers`` keys are lower case."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    status: int


class FakeState:
    """The fake's state and the API that shapes its world. Not used alone: see `FakeGitHub`."""

    # Set by `FakeGitHub.__init__`; declared here so every part of the fake is type-checked against
    # the same attributes.
    app_id: int
    app_slug: str
    client_id: str
    client_secret: str
    clock: Clock
    private_key_pem: str
    _public_key: rsa.RSAPublicKey
    app_permissions: dict[str, str]
    app_events: list[str]
    _manifest_codes: dict[str, JSON]
    latency: float
    requests: list[RecordedRequest]
    max_in_flight: int
    on_pull_created: Callable[[dict[str, Any]], None] | None
    _port: int
    _server: HttpServer | None
    _thread: threading.Thread | None
    _lock: threading.RLock
    _in_flight: int
    _ids: itertools.count[int]
    _world: World
    _render: Renderer
    _installation_tokens: dict[str, InstallationGrant]
    _user_tokens: dict[str, str]
    _codes: dict[str, OAuthCode]
    _failures: list[Failure]
    _routes: list[tuple[str, list[str], Handler]]

    # ---------------------------------------------------------------------------------- state API

    def add_org(
        self, login: str, id: int | None = None, name: str | None = None, description: str | None = None
    ) -> int:
        """Create (or update) an organization account; returns its id."""
        with self._lock:
            account = self._account(login, "Organization", id)
            account.name = name if name is not None else account.name
            account.description = description if description is not None else account.description
            self._world.members.setdefault(login, {})
            return account.id

    def add_user(
        self,
        login: str,
        id: int | None = None,
        name: str | None = None,
        email: str | None = None,
        orgs: Iterable[str] = (),
        *,
        emails: list[str] | None = None,
    ) -> int:
        """Create (or update) a user; returns its id.

        Args:
            email: the *public* profile email (``/user`` ``email``); ``None`` keeps it private.
            orgs: organizations to join as ``member`` (use `add_member` for admins).
            emails: the ``/user/emails`` addresses, the first one primary and all verified. Defaults
                to ``email`` or ``<login>@users.example.com``.
        """
        with self._lock:
            account = self._account(login, "User", id)
            account.name = name if name is not None else account.name
            account.email = email
            addresses = emails or [email or f"{login}@users.example.com"]
            account.emails = [
                {
                    "email": addr,
                    "primary": i == 0,
                    "verified": True,
                    "visibility": "public" if addr == email else "private",
                }
                for i, addr in enumerate(addresses)
            ]
            for org in orgs:
                self.add_org(org)
                self._world.members[org].setdefault(login, "member")
            return account.id

    def add_member(self, org: str, login: str, role: str = "member") -> None:
        """Make ``login`` a member of ``org`` with ``role`` (``admin`` | ``member``). Idempotent."""
        if role not in {"admin", "member"}:
            raise ValueError(f"role must be 'admin' or 'member', not {role!r}")
        with self._lock:
            self.add_org(org)
            if login not in self._world.accounts:
                self.add_user(login)
            self._world.members[org][login] = role

    def remove_member(self, org: str, login: str) -> None:
        """Remove ``login`` from ``org`` (as leaving or being removed on GitHub). Idempotent."""
        with self._lock:
            self._world.members.get(org, {}).pop(login, None)

    def add_installation(
        self,
        id: int,
        account_login: str,
        account_type: AccountType = "Organization",
        *,
        account_id: int | None = None,
        suspended: bool = False,
        repository_selection: str = "all",
    ) -> None:
        """Install the App on ``account_login`` (created if unknown) as installation ``id``."""
        with self._lock:
            if account_login not in self._world.accounts:
                if account_type == "Organization":
                    self.add_org(account_login, account_id)
                else:
                    self.add_user(account_login, account_id)
            self._world.installations[id] = Installation(
                id, account_login, suspended, repository_selection, self._now()
            )

    def set_suspended(self, installation_id: int, suspended: bool) -> None:
        """Suspend or unsuspend an installation (its token minting then fails with 403)."""
        with self._lock:
            self._world.installations[installation_id].suspended = suspended

    def add_repo(
        self,
        installation_id: int | None,
        owner: str,
        name: str,
        *,
        private: bool = True,
        default_branch: str = "main",
        archived: bool = False,
        description: str | None = None,
        updated_at: datetime | None = None,
        id: int | None = None,
        clone_url: str | None = None,
    ) -> int:
        """Create a repository visible to ``installation_id`` (``None``: the App cannot see it).

        ``clone_url`` overrides the rendered ``clone_url`` (mock mode points it at a local bare repo).
        Returns the repository id.
        """
        with self._lock:
            if installation_id is not None:
                inst = self._world.installations[installation_id]
                if inst.account_login != owner:
                    raise ValueError(
                        f"installation {installation_id} is on {inst.account_login}, not {owner}"
                    )
            if owner not in self._world.accounts:
                self.add_org(owner)
            now = self._now()
            repo = Repo(
                id=id if id is not None else next(self._ids) * 1000,
                owner=owner,
                name=name,
                installation_id=installation_id,
                private=private,
                default_branch=default_branch,
                archived=archived,
                description=description,
                created_at=now,
                updated_at=updated_at or now,
                clone_url=clone_url,
            )
            self._world.repos[repo.full_name] = repo
            self._world.pulls.setdefault(repo.full_name, {})
            return repo.id

    def set_repo_installation(self, full_name: str, installation_id: int | None) -> None:
        """Give the repository to another installation (``None``: taken out of the App's reach)."""
        with self._lock:
            self._world.repos[full_name].installation_id = installation_id

    def add_pull(
        self,
        repo_full_name: str,
        number: int | None = None,
        title: str = "A pull request",
        head_ref: str | None = None,
        *,
        base_ref: str | None = None,
        body: str | None = "",
        author: str | None = None,
        draft: bool = False,
        state: str = "open",
        merged: bool = False,
        head_sha: str | None = None,
        created_at: datetime | None = None,
        updated_at: datetime | None = None,
    ) -> int:
        """Add a pull request; returns its number (next free one when ``number`` is None)."""
        with self._lock:
            repo = self._world.repos[repo_full_name]
            pulls = self._world.pulls[repo_full_name]
            number = number if number is not None else max(pulls, default=0) + 1
            head_ref = head_ref or f"feature-{number}"
            author = author or repo.owner
            if author not in self._world.accounts:
                self.add_user(author)
            now = self._now()
            created = created_at or updated_at or now
            updated = updated_at or created
            closed = merged or state == "closed"
            pulls[number] = Pull(
                number=number,
                id=next(self._ids) * 1000 + number,
                repo=repo_full_name,
                title=title,
                body=body,
                state="closed" if closed else "open",
                draft=draft,
                merged=merged,
                head_ref=head_ref,
                head_sha=head_sha or sha(repo_full_name, head_ref, number),
                base_ref=base_ref or repo.default_branch,
                author=author,
                created_at=created,
                updated_at=updated,
                closed_at=updated if closed else None,
                merged_at=updated if merged else None,
            )
            return number

    def update_pull(
        self,
        repo_full_name: str,
        number: int,
        *,
        title: str | None = None,
        body: str | None = None,
        state: str | None = None,
        draft: bool | None = None,
        merged: bool | None = None,
        head_sha: str | None = None,
        updated_at: datetime | None = None,
    ) -> None:
        """Change a pull request; ``updated_at`` advances to now unless given (as on GitHub).

        ``merged=True`` also closes it and sets ``merged_at``; ``state="closed"`` sets ``closed_at``.
        """
        with self._lock:
            pull = self._world.pulls[repo_full_name][number]
            when = updated_at or self._now()
            if title is not None:
                pull.title = title
            if body is not None:
                pull.body = body
            if draft is not None:
                pull.draft = draft
            if head_sha is not None:
                pull.head_sha = head_sha
            if merged:
                pull.merged, pull.merged_at, state = True, when, "closed"
            if state is not None:
                pull.state = state
                pull.closed_at = when if state == "closed" else None
            pull.updated_at = when

    # ------------------------------------------------------------------------------ internals

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.now_ms() / 1000, tz=UTC)

    def _account(self, login: str, kind: AccountType, id: int | None) -> Account:
        account = self._world.accounts.get(login)
        if account is None:
            account = Account(login, id if id is not None else next(self._ids), kind)
            self._world.accounts[login] = account
        elif account.type != kind:
            raise ValueError(f"{login!r} is already a {account.type}")
        elif id is not None:
            account.id = id
        return account
