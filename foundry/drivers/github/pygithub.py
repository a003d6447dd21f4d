"""The real GitHub driver, on PyGithub.

PyGithub is synchronous, so every call runs in a worker thread (`asyncio.to_thread`); the event loop
never waits on GitHub. Around PyGithub this module adds what Foundry needs:

* installation tokens minted with the App JWT and cached per (installation, repository set) until five
  minutes before they expire;
* bounded concurrency per installation (one `asyncio.Semaphore` each), so a full sync of many
  repositories cannot stampede one installation's rate limit;
* rate-limit handling: on 403/429 with ``retry-after`` or an exhausted ``x-ratelimit-remaining``, wait
  (through an injectable ``sleep``, at most ``max_rate_limit_wait`` seconds in total) and retry, then
  raise `RateLimited`. PyGithub's own retry is switched off because it sleeps inside the worker thread
  for as long as GitHub asks, unbounded and invisible to tests;
* one error mapping: 404 → `NotFound`, anything else from GitHub or the network → `DriverError`.

The driver is split by concern: ``_pygithub_calls`` runs each blocking call (threads, concurrency,
rate limits, error mapping), ``_pygithub_auth`` mints and caches installation tokens and keeps the
clients, ``_pygithub_convert`` maps PyGithub's objects and errors to Foundry's; this module holds the
GitHub operations Foundry uses.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from foundry.clock import Clock, SystemClock
from foundry.drivers.github import (
    GitHubUser,
    Installation,
    InstallationToken,
    Member,
    Organization,
    PullRequest,
    Repository,
)
from foundry.drivers.github._pygithub_auth import TOKEN_REFRESH_MARGIN, GitHubAuth, TokenKey
from foundry.drivers.github._pygithub_calls import Sleep
from foundry.drivers.github._pygithub_convert import (
    error_message,
    to_installation,
    to_organization,
    to_pull_request,
    to_repository,
)
from github import Auth, Consts, Github, GithubException, GithubIntegration
from github.NamedUser import NamedUser as GhNamedUser
from github.PaginatedList import PaginatedList
from github.PullRequest import PullRequest as GhPullRequest
from github.Repository import Repository as GhRepository

__all__ = ["TOKEN_REFRESH_MARGIN", "PyGithubDriver"]

_log = logging.getLogger(__name__)


class PyGithubDriver(GitHubAuth):
    """`GitHubDriver` on PyGithub. One instance per process; safe to share between coroutines.

    Args:
        app_id: the GitHub App id (the JWT's ``iss``).
        private_key_pem: the App's RSA private key, PEM.
        client_id / client_secret: the App's OAuth credentials (code exchange).
        base_url: REST API base (``https://api.github.com``, or a fake's URL in tests and mock mode).
        web_url: the web host serving ``/login/oauth/*`` (``https://github.com``).
        throttle: keep PyGithub's pacing between requests (0.25 s, 1 s between writes). Tests and
            benchmarks pass ``False``.
        clock: time source for token freshness and ``x-ratelimit-reset`` arithmetic.
        sleep: how to wait out a rate limit (tests inject a recorder).
        max_concurrency_per_installation: concurrent GitHub calls per installation.
        max_rate_limit_wait: total seconds one call may spend waiting on rate limits.
        max_rate_limit_retries: retries after a rate-limit answer before `RateLimited`.
        timeout: socket timeout per HTTP request, seconds.
    """

    def __init__(
        self,
        app_id: int | str,
        private_key_pem: str,
        client_id: str,
        client_secret: str,
        base_url: str = "https://api.github.com",
        web_url: str = "https://github.com",
        throttle: bool = True,
        clock: Clock | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
        max_concurrency_per_installation: int = 4,
        max_rate_limit_wait: float = 60.0,
        max_rate_limit_retries: int = 3,
        timeout: int = 15,
    ) -> None:
        self._client_id = client_id
        self._client_secret = client_secret
        self._base_url = base_url.rstrip("/")
        self._web_url = web_url.rstrip("/")
        self._clock: Clock = clock or SystemClock()
        self._sleep = sleep
        self._max_concurrency = max_concurrency_per_installation
        self._max_wait = max_rate_limit_wait
        self._max_retries = max_rate_limit_retries
        self._options: dict[str, Any] = {
            "base_url": self._base_url,
            "timeout": timeout,
            "per_page": 100,  # GitHub's maximum: fewest round trips for a full sync
            "retry": None,  # see the module docstring: rate limits are handled here, bounded
            "seconds_between_requests": Consts.DEFAULT_SECONDS_BETWEEN_REQUESTS if throttle else 0,
            "seconds_between_writes": Consts.DEFAULT_SECONDS_BETWEEN_WRITES if throttle else 0,
        }
        # iat = now - 60 s (clock drift), exp = now + 540 s: inside GitHub's 10-minute limit.
        app_auth = Auth.AppAuth(app_id, private_key_pem, jwt_expiry=540, jwt_issued_at=-60)
        self._app = GithubIntegration(auth=app_auth, **self._options)
        self._tokens: dict[TokenKey, InstallationToken] = {}
        self._token_locks: dict[TokenKey, asyncio.Lock] = {}
        self._clients: dict[int, tuple[str, Github]] = {}
        self._slots: dict[int, asyncio.Semaphore] = {}

    # ---------------------------------------------------------------------------------- OAuth URLs

    @property
    def authorize_url(self) -> str:
        """``<web_url>/login/oauth/authorize``."""
        return f"{self._web_url}/login/oauth/authorize"

    @property
    def access_token_url(self) -> str:
        """``<web_url>/login/oauth/access_token``."""
        return f"{self._web_url}/login/oauth/access_token"

    @property
    def api_base_url(self) -> str:
        """The API base with a trailing slash (authlib joins relative paths like ``user`` onto it)."""
        return f"{self._base_url}/"

    # ---------------------------------------------------------------------------------- App level

    async def list_installations(self) -> list[Installation]:
        """Every installation of the App (``GET /app/installations``, all pages). Idempotent.

        Raises:
            DriverError: bad App credentials (401) or any other GitHub failure.
            RateLimited: the rate limit outlasted the bounded wait.
        """
        pages = self._app.get_installations()
        return await self._collect("listing the App's installations", pages, to_installation)

    # ------------------------------------------------------------------------- installation level

    async def list_installation_repositories(self, installation_id: int) -> list[Repository]:
        """Every repository the installation can access (``GET /installation/repositories``).

        Idempotent. Raises `DriverError` / `RateLimited` as every method.
        """

        def pages(gh: Github) -> PaginatedList[GhRepository]:
            return PaginatedList(
                GhRepository, gh.requester, "/installation/repositories", None, list_item="repositories"
            )

        return await self._installation_collect(
            installation_id, f"listing repositories of installation {installation_id}", pages, to_repository
        )

    async def list_org_members(self, installation_id: int, org_login: str) -> list[Member]:
        """Members of ``org_login`` with their GitHub roles. Idempotent.

        Two paginated list calls — ``role=admin`` then every member — instead of one
        ``/users/<login>`` call per member.

        Raises:
            NotFound: no such organization.
            DriverError: the installation may not read the organization's members (403), or other.
        """
        doing = f"listing members of {org_login}"

        def admins(gh: Github) -> PaginatedList[GhNamedUser]:
            return gh.get_organization(org_login).get_members(role="admin")

        def everyone(gh: Github) -> PaginatedList[GhNamedUser]:
            return gh.get_organization(org_login).get_members(role="all")

        admin_logins = set(
            await self._installation_collect(installation_id, doing, admins, lambda u: str(u.login))
        )
        members = await self._installation_collect(installation_id, doing, everyone, lambda u: u)
        return [
            Member(
                id=u.id,
                login=u.login,
                avatar_url=u.avatar_url,
                role="admin" if u.login in admin_logins else "member",
            )
            for u in members
        ]

    async def list_open_pull_requests(self, installation_id: int, repo_full_name: str) -> list[PullRequest]:
        """Open pull requests of ``repo_full_name``, most recently updated first, every page. Idempotent.

        Raises:
            NotFound: no such repository, or the installation cannot see it.
        """

        def pages(gh: Github) -> PaginatedList[GhPullRequest]:
            return gh.get_repo(repo_full_name).get_pulls(state="open", sort="updated", direction="desc")

        return await self._installation_collect(
            installation_id, f"listing open pull requests of {repo_full_name}", pages, to_pull_request
        )

    async def get_pull_request(self, installation_id: int, repo_full_name: str, number: int) -> PullRequest:
        """Pull request ``number`` of ``repo_full_name``. Idempotent.

        Raises:
            NotFound: no such repository or pull request.
        """

        def fetch(gh: Github) -> PullRequest:
            return to_pull_request(gh.get_repo(repo_full_name).get_pull(number).complete())

        return await self._on_installation(
            installation_id, f"reading pull request {repo_full_name}#{number}", fetch
        )

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
        """Open a pull request from ``head`` into ``base`` as the App's bot.

        Not idempotent: a second call for the same head and base fails with GitHub's 422 ("A pull
        request already exists"). Retrying after a rate-limit answer is safe: GitHub rejected that
        request before creating anything.

        Raises:
            NotFound: no such repository.
            DriverError: validation failure (422: no commits, duplicate, unknown branch) or other.
        """

        def create(gh: Github) -> PullRequest:
            created = gh.get_repo(repo_full_name).create_pull(
                base=base, head=head, title=title, body=body, draft=draft
            )
            return to_pull_request(created)

        return await self._on_installation(
            installation_id, f"creating a pull request {head} → {base} on {repo_full_name}", create
        )

    async def get_repository(self, installation_id: int, full_name: str) -> Repository:
        """Repository ``owner/name``. Idempotent.

        Raises:
            NotFound: no such repository, or the installation cannot see it.
        """

        def fetch(gh: Github) -> Repository:
            return to_repository(gh.get_repo(full_name).complete())

        return await self._on_installation(installation_id, f"reading repository {full_name}", fetch)

    # --------------------------------------------------------------------------------- user level

    async def exchange_oauth_code(self, code: str) -> str:
        """Exchange an OAuth web-flow ``code`` for the user's access token. Not idempotent: codes are
        single use.

        Raises:
            DriverError: status 401 when GitHub refuses the code (``bad_verification_code``: unknown,
                used or expired) or the client credentials; other statuses for other failures.
        """

        def exchange() -> str:
            gh = Github(**self._options)
            try:
                app = gh.get_oauth_application(self._client_id, self._client_secret)
                return str(app.get_access_token(code).token)
            finally:
                gh.close()

        return await self._call("exchanging an OAuth code", exchange)

    async def get_authenticated_user(self, token: str) -> GitHubUser:
        """The account behind a user token. Idempotent.

        When the profile email is private (``null``), the primary verified address from
        ``/user/emails`` is used; if the token may not read emails, ``email`` is ``None``.

        Raises:
            DriverError: status 401 for a bad or revoked token; other failures.
        """

        def fetch(gh: Github) -> GitHubUser:
            me = gh.get_user()
            email = me.email or self._primary_email(me)
            return GitHubUser(id=me.id, login=me.login, name=me.name, avatar_url=me.avatar_url, email=email)

        return await self._as_user(token, "reading the signed-in GitHub user", fetch)

    async def list_user_orgs(self, token: str) -> list[Organization]:
        """Organizations the user belongs to (``GET /user/orgs``, all pages). Idempotent."""
        return await self._user_collect(
            token, "listing the user's organizations", lambda gh: gh.get_user().get_orgs(), to_organization
        )

    async def list_user_installations(self, token: str) -> list[Installation]:
        """Installations of this App the user can access (``GET /user/installations``). Idempotent."""
        return await self._user_collect(
            token,
            "listing the user's App installations",
            lambda gh: gh.get_user().get_installations(),
            to_installation,
        )

    async def aclose(self) -> None:
        """Close every HTTP connection pool. Idempotent; the driver must not be used afterwards."""
        clients = [client for _, client in self._clients.values()]
        self._clients.clear()
        self._tokens.clear()

        def close_all() -> None:
            self._app.close()
            for client in clients:
                client.close()

        await asyncio.to_thread(close_all)

    # ---------------------------------------------------------------------------------- internals

    def _primary_email(self, me: Any) -> str | None:
        """The primary verified address from ``/user/emails`` (worker thread).

        A 403/404 means the token may not read emails (the App lacks the "Email addresses"
        permission): sign-in still works without an email, so that is logged, not raised.
        """
        try:
            emails: Iterable[Any] = me.get_emails()
        except GithubException as exc:
            if exc.status not in (403, 404) or self._rate_limit_delay(exc) is not None:
                raise
            _log.warning(
                "github: cannot read /user/emails of %s (status=%s: %s); continuing without email",
                me.login,
                exc.status,
                error_message(exc),
            )
            return None
        for entry in emails:
            if entry.primary and entry.verified:
                return str(entry.email)
        return None
