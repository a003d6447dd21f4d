"""GitHub: the App, its installations, and the signed-in users' OAuth tokens.

Foundry talks to GitHub through the `GitHubDriver` protocol. Three kinds of credentials are in play:

* the **App JWT** (RS256, signed with the App's private key) for ``/app*`` routes: listing
  installations and minting installation tokens;
* **installation tokens** (``ghs_…``, one hour) for everything that reads or writes an organization's
  repositories, members and pull requests — never an arbitrary member's user token;
* a **user OAuth token** for user-attributed calls (who am I, my orgs, my installations).

Implementations:

* `foundry.drivers.github.pygithub.PyGithubDriver`: the real one, on PyGithub, off the event loop.
* `foundry.drivers.github.fake.FakeGitHub`: not a driver but a stateful fake GitHub *server* speaking
  GitHub's wire format; tests and mock mode point the real driver at it (``base_url``).

Every method raises `foundry.errors.NotFound` for a 404, `foundry.errors.RateLimited` when GitHub's
rate limit outlasts the driver's bounded wait, and `foundry.errors.DriverError` (vendor ``"github"``,
``status`` = GitHub's HTTP status or ``None`` for network failures) for anything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "VENDOR",
    "GitHubDriver",
    "GitHubUser",
    "Installation",
    "InstallationToken",
    "Member",
    "Organization",
    "PullRequest",
    "Repository",
]

VENDOR = "github"

AccountType = Literal["Organization", "User"]
MemberRole = Literal["admin", "member"]


@dataclass(frozen=True, slots=True)
class GitHubUser:
    """A GitHub account as seen through its own OAuth token.

    ``email`` is the public profile email, else the primary verified address from ``/user/emails``,
    else ``None``.
    """

    id: int
    login: str
    name: str | None
    avatar_url: str
    email: str | None


@dataclass(frozen=True, slots=True)
class Organization:
    """An organization a user belongs to (``GET /user/orgs``)."""

    id: int
    login: str
    avatar_url: str
    description: str | None


@dataclass(frozen=True, slots=True)
class Installation:
    """An installation of the Foundry GitHub App on an organization or a personal account."""

    id: int
    account_login: str
    account_id: int
    account_type: AccountType
    suspended: bool
    repository_selection: str  # "all" | "selected"


@dataclass(frozen=True, slots=True)
class Repository:
    """A repository an installation can access. ``updated_at`` is GitHub's own timestamp."""

    id: int
    full_name: str
    name: str
    owner_login: str
    private: bool
    default_branch: str
    archived: bool
    clone_url: str
    html_url: str
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class Member:
    """A member of an organization with their real GitHub role."""

    id: int
    login: str
    avatar_url: str
    role: MemberRole


@dataclass(frozen=True, slots=True)
class PullRequest:
    """A pull request. ``updated_at`` is GitHub's, so unchanged PRs diff as unchanged."""

    number: int
    id: int
    title: str
    body: str | None
    state: str  # "open" | "closed"
    draft: bool
    merged: bool
    head_ref: str
    head_sha: str
    base_ref: str
    author_login: str | None  # None for PRs of deleted accounts
    html_url: str
    updated_at: datetime
    closed_at: datetime | None
    merged_at: datetime | None


@dataclass(frozen=True, slots=True)
class InstallationToken:
    """A short-lived installation access token.

    ``repository_ids`` is ``None`` for a token covering every repository of the installation, else the
    ids it was narrowed to.
    """

    token: str
    expires_at: datetime
    repository_ids: tuple[int, ...] | None

    def __repr__(self) -> str:
        # Never print the secret itself (logs, assertion messages, tracebacks).
        return (
            f"InstallationToken(token='{self.token[:4]}…', expires_at={self.expires_at.isoformat()}, "
            f"repository_ids={self.repository_ids})"
        )


@runtime_checkable
class GitHubDriver(Protocol):
    """Everything Foundry asks of GitHub. All methods are coroutines and never block the event loop.

    Reads are idempotent. Raises (every method): `NotFound` (404), `RateLimited` (rate limit outlasting
    the bounded wait), `DriverError` (any other GitHub or network failure).
    """

    @property
    def authorize_url(self) -> str:
        """The OAuth authorize endpoint (``<web>/login/oauth/authorize``) for authlib."""
        ...

    @property
    def access_token_url(self) -> str:
        """The OAuth code-exchange endpoint (``<web>/login/oauth/access_token``) for authlib."""
        ...

    @property
    def api_base_url(self) -> str:
        """The REST API base URL, with a trailing slash, for authlib's relative requests."""
        ...

    # App level (App JWT)
    async def list_installations(self) -> list[Installation]:
        """All installations of the App (``GET /app/installations``, every page)."""
        ...

    async def get_installation_token(
        self, installation_id: int, repository_ids: list[int] | None = None
    ) -> InstallationToken:
        """An installation token, cached per (installation, repository set) until 5 min before expiry."""
        ...

    # Installation level (installation token)
    async def list_installation_repositories(self, installation_id: int) -> list[Repository]:
        """Every repository the installation can access (``GET /installation/repositories``)."""
        ...

    async def list_org_members(self, installation_id: int, org_login: str) -> list[Member]:
        """Members of ``org_login`` with their roles, in two list calls."""
        ...

    async def list_open_pull_requests(self, installation_id: int, repo_full_name: str) -> list[PullRequest]:
        """Open pull requests of a repository, most recently updated first."""
        ...

    async def get_pull_request(self, installation_id: int, repo_full_name: str, number: int) -> PullRequest:
        """One pull request by number."""
        ...

    async def create_pull_request(
        self,
        installation_id: int,
        repo_full_name: str,
        head: str,
        base: str,
        title: str,
        body: str,
        draft: bool = False,
    ) -> PullRequest:
        """Open a pull request from ``head`` into ``base``. Not idempotent: GitHub refuses a duplicate."""
        ...

    async def get_repository(self, installation_id: int, full_name: str) -> Repository:
        """One repository by ``owner/name``."""
        ...

    # User level (user OAuth token)
    async def exchange_oauth_code(self, code: str) -> str:
        """Exchange a web-flow OAuth ``code`` for a user token (an alternative to authlib's exchange).

        Codes are single use: a used, unknown or expired code raises `DriverError` with status 401.
        """
        ...

    async def get_authenticated_user(self, token: str) -> GitHubUser:
        """The account behind ``token`` (``GET /user``, plus ``/user/emails`` when the email is private)."""
        ...

    async def list_user_orgs(self, token: str) -> list[Organization]:
        """Organizations the user belongs to (``GET /user/orgs``)."""
        ...

    async def list_user_installations(self, token: str) -> list[Installation]:
        """Installations of the App the user can access (``GET /user/installations``)."""
        ...

    async def aclose(self) -> None:
        """Release HTTP connections. Idempotent."""
        ...
