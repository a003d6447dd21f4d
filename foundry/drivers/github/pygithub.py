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
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import requests

from foundry.clock import Clock, SystemClock
from foundry.drivers.github import (
    VENDOR,
    GitHubUser,
    Installation,
    InstallationToken,
    Member,
    Organization,
    PullRequest,
    Repository,
)
from foundry.errors import DriverError, NotFound, RateLimited
from github import Auth, Consts, Github, GithubException, GithubIntegration, RateLimitExceededException
from github.GithubObject import GithubObject
from github.Installation import Installation as GhInstallation
from github.NamedUser import NamedUser as GhNamedUser
from github.Organization import Organization as GhOrganization
from github.PaginatedList import PaginatedList
from github.PullRequest import PullRequest as GhPullRequest
from github.Repository import Repository as GhRepository

__all__ = ["TOKEN_REFRESH_MARGIN", "PyGithubDriver"]

_log = logging.getLogger(__name__)

T = TypeVar("T")
Item = TypeVar("Item", bound=GithubObject)
Sleep = Callable[[float], Awaitable[None]]

TOKEN_REFRESH_MARGIN = timedelta(minutes=5)
# GitHub's advice when a secondary rate limit carries neither retry-after nor reset: wait a minute.
_SECONDARY_LIMIT_WAIT = 60.0
_TokenKey = tuple[int, tuple[int, ...] | None]


class PyGithubDriver:
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
        self._tokens: dict[_TokenKey, InstallationToken] = {}
        self._token_locks: dict[_TokenKey, asyncio.Lock] = {}
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
        return await self._collect("listing the App's installations", pages, _installation)

    async def get_installation_token(
        self, installation_id: int, repository_ids: list[int] | None = None
    ) -> InstallationToken:
        """An installation access token, minted with the App JWT and cached.

        A cached token is reused until `TOKEN_REFRESH_MARGIN` before it expires; concurrent callers
        for the same (installation, repository set) share one mint. With ``repository_ids`` the
        token is narrowed to those repositories (cached separately).

        Raises:
            ValueError: ``repository_ids`` is an empty list (pass ``None`` for every repository).
            NotFound: no such installation.
            DriverError: suspended installation (403), unknown repository id (422), other failures.
            RateLimited: the rate limit outlasted the bounded wait.
        """
        if repository_ids is not None and not repository_ids:
            raise ValueError("repository_ids must not be empty; pass None for every repository")
        key: _TokenKey = (installation_id, tuple(sorted(set(repository_ids))) if repository_ids else None)
        cached = self._tokens.get(key)
        if cached is not None and self._is_fresh(cached):
            return cached
        lock = self._token_locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._tokens.get(key)  # minted by another coroutine while we waited
            if cached is not None and self._is_fresh(cached):
                return cached
            token = await self._call(
                f"minting a token for installation {installation_id}",
                lambda: self._mint_token(installation_id, key[1]),
                installation_id,
            )
            self._tokens[key] = token
            return token

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
            installation_id, f"listing repositories of installation {installation_id}", pages, _repository
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
            installation_id, f"listing open pull requests of {repo_full_name}", pages, _pull_request
        )

    async def get_pull_request(self, installation_id: int, repo_full_name: str, number: int) -> PullRequest:
        """Pull request ``number`` of ``repo_full_name``. Idempotent.

        Raises:
            NotFound: no such repository or pull request.
        """

        def fetch(gh: Github) -> PullRequest:
            return _pull_request(gh.get_repo(repo_full_name).get_pull(number).complete())

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
            return _pull_request(created)

        return await self._on_installation(
            installation_id, f"creating a pull request {head} → {base} on {repo_full_name}", create
        )

    async def get_repository(self, installation_id: int, full_name: str) -> Repository:
        """Repository ``owner/name``. Idempotent.

        Raises:
            NotFound: no such repository, or the installation cannot see it.
        """

        def fetch(gh: Github) -> Repository:
            return _repository(gh.get_repo(full_name).complete())

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
            token, "listing the user's organizations", lambda gh: gh.get_user().get_orgs(), _organization
        )

    async def list_user_installations(self, token: str) -> list[Installation]:
        """Installations of this App the user can access (``GET /user/installations``). Idempotent."""
        return await self._user_collect(
            token,
            "listing the user's App installations",
            lambda gh: gh.get_user().get_installations(),
            _installation,
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

    def _is_fresh(self, token: InstallationToken) -> bool:
        now = datetime.fromtimestamp(self._clock.now_ms() / 1000, tz=UTC)
        return now < token.expires_at - TOKEN_REFRESH_MARGIN

    def _mint_token(self, installation_id: int, repository_ids: tuple[int, ...] | None) -> InstallationToken:
        """``POST /app/installations/{id}/access_tokens`` (worker thread). PyGithub's
        ``get_access_token`` cannot narrow to repositories, so the request is made on its requester."""
        body: dict[str, Any] = {}
        if repository_ids is not None:
            body["repository_ids"] = list(repository_ids)
        _, data = self._app.requester.requestJsonAndCheck(
            "POST", f"/app/installations/{installation_id}/access_tokens", input=body
        )
        granted = data.get("repositories")
        return InstallationToken(
            token=str(data["token"]),
            expires_at=datetime.fromisoformat(str(data["expires_at"]).replace("Z", "+00:00")),
            repository_ids=tuple(sorted(int(r["id"]) for r in granted))
            if granted is not None
            else repository_ids,
        )

    async def _installation_client(self, installation_id: int) -> Github:
        token = await self.get_installation_token(installation_id)
        current = self._clients.get(installation_id)
        if current is not None and current[0] == token.token:
            return current[1]
        # The previous client is dropped, not closed: a coroutine may still be using it in a thread.
        client = Github(auth=Auth.Token(token.token), lazy=True, **self._options)
        self._clients[installation_id] = (token.token, client)
        return client

    def _forget_installation_token(self, installation_id: int) -> None:
        self._tokens.pop((installation_id, None), None)
        self._clients.pop(installation_id, None)

    async def _on_installation(self, installation_id: int, doing: str, work: Callable[[Github], T]) -> T:
        """Run ``work`` with the installation's client; on a 401 (token revoked early) mint once more."""
        for attempt in (1, 2):
            gh = await self._installation_client(installation_id)
            try:
                return await self._call(doing, functools.partial(work, gh), installation_id)
            except DriverError as exc:
                if exc.status != 401 or attempt == 2:
                    raise
                _log.warning(
                    "github: installation=%s token refused (401) while %s; minting a new one",
                    installation_id,
                    doing,
                )
                self._forget_installation_token(installation_id)
        raise AssertionError("unreachable")

    async def _installation_collect(
        self,
        installation_id: int,
        doing: str,
        pages: Callable[[Github], PaginatedList[Item]],
        convert: Callable[[Item], T],
    ) -> list[T]:
        for attempt in (1, 2):
            gh = await self._installation_client(installation_id)
            try:
                return await self._collect(doing, pages(gh), convert, installation_id)
            except DriverError as exc:
                if exc.status != 401 or attempt == 2:
                    raise
                _log.warning(
                    "github: installation=%s token refused (401) while %s; minting a new one",
                    installation_id,
                    doing,
                )
                self._forget_installation_token(installation_id)
        raise AssertionError("unreachable")

    def _user_client(self, token: str) -> Github:
        return Github(auth=Auth.Token(token), lazy=True, **self._options)

    async def _as_user(self, token: str, doing: str, work: Callable[[Github], T]) -> T:
        gh = self._user_client(token)
        try:
            return await self._call(doing, functools.partial(work, gh))
        finally:
            await asyncio.to_thread(gh.close)

    async def _user_collect(
        self,
        token: str,
        doing: str,
        pages: Callable[[Github], PaginatedList[Item]],
        convert: Callable[[Item], T],
    ) -> list[T]:
        gh = self._user_client(token)
        try:
            return await self._collect(doing, pages(gh), convert)
        finally:
            await asyncio.to_thread(gh.close)

    async def _collect(
        self,
        doing: str,
        pages: PaginatedList[Item],
        convert: Callable[[Item], T],
        installation_id: int | None = None,
    ) -> list[T]:
        """Every item of a paginated list, converted in the worker thread.

        ``pages`` is built once, outside the retry loop: PyGithub keeps the items already fetched and
        advances its next-page URL only on success, so iterating it again after a rate-limit wait
        resumes at the failed page instead of starting over.
        """
        return await self._call(doing, lambda: [convert(item) for item in pages], installation_id)

    async def _call(self, doing: str, fn: Callable[[], T], installation_id: int | None = None) -> T:
        """Run blocking ``fn`` in a worker thread with bounded concurrency, rate-limit waits and the
        one error mapping. ``doing`` completes "while …" in error messages."""
        waited = 0.0
        attempts = 0
        while True:
            attempts += 1
            try:
                if installation_id is None:
                    return await asyncio.to_thread(fn)
                async with self._slot(installation_id):
                    return await asyncio.to_thread(fn)
            except GithubException as exc:
                delay = self._rate_limit_delay(exc)
                if delay is None:
                    raise _translate(exc, doing) from exc
                if attempts > self._max_retries or waited + delay > self._max_wait:
                    raise RateLimited(
                        f"GitHub rate limit while {doing}: gave up after {attempts} attempt(s) and "
                        f"{waited:.0f}s of waiting (GitHub asked for {delay:.0f}s more)"
                    ) from exc
                _log.warning(
                    "github: rate limited (status=%s) while %s; waiting %.1fs, attempt %d",
                    exc.status,
                    doing,
                    delay,
                    attempts,
                )
                # The semaphore is released while waiting: other calls may still make progress.
                await self._sleep(delay)
                waited += delay
            except requests.RequestException as exc:
                raise DriverError(f"GitHub unreachable while {doing}: {exc}", None, VENDOR) from exc

    def _slot(self, installation_id: int) -> asyncio.Semaphore:
        slot = self._slots.get(installation_id)
        if slot is None:
            slot = self._slots[installation_id] = asyncio.Semaphore(self._max_concurrency)
        return slot

    def _rate_limit_delay(self, exc: GithubException) -> float | None:
        """Seconds to wait before retrying, or ``None`` if ``exc`` is not a rate limit.

        Follows GitHub's guidance: ``retry-after`` first, then ``x-ratelimit-reset`` when the
        remaining quota is 0, else a minute for a secondary limit.
        """
        if exc.status not in (403, 429):
            return None
        headers = {str(k).lower(): str(v) for k, v in (exc.headers or {}).items()}
        retry_after = headers.get("retry-after")
        if retry_after is not None and retry_after.strip().isdigit():
            return float(retry_after)
        if headers.get("x-ratelimit-remaining") == "0" and headers.get("x-ratelimit-reset", "").isdigit():
            now = self._clock.now_ms() / 1000
            return max(float(headers["x-ratelimit-reset"]) - now, 0.0) + 1.0  # +1 s for clock skew
        if exc.status == 429 or isinstance(exc, RateLimitExceededException):
            return _SECONDARY_LIMIT_WAIT
        return None  # a plain 403: a permission problem, not a rate limit

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
                _message(exc),
            )
            return None
        for entry in emails:
            if entry.primary and entry.verified:
                return str(entry.email)
        return None


# ------------------------------------------------------------------------------------ conversions


def _message(exc: GithubException) -> str:
    data = exc.data
    if isinstance(data, dict):
        if "error" in data:  # the OAuth endpoints' error shape
            return f"{data['error']}: {data.get('error_description', '')}".strip(": ")
        if data.get("message"):
            return str(data["message"])
    return exc.message or str(data or "no details")


def _translate(exc: GithubException, doing: str) -> DriverError | NotFound:
    status = exc.status
    if status == 404:
        return NotFound(f"GitHub: not found while {doing}")
    if status == 200 and isinstance(exc.data, dict) and "error" in exc.data:
        # The OAuth token endpoint answers 200 with an error body; the credentials were refused.
        return DriverError(f"GitHub refused the credentials while {doing}: {_message(exc)}", 401, VENDOR)
    return DriverError(f"GitHub answered {status} while {doing}: {_message(exc)}", status, VENDOR)


def _required(value: datetime | None, what: str) -> datetime:
    if value is None:
        raise DriverError(f"GitHub returned no {what}", None, VENDOR)
    return value


def _installation(inst: GhInstallation) -> Installation:
    account = inst.account
    return Installation(
        id=inst.id,
        account_login=account.login,
        account_id=account.id,
        account_type="User" if inst.target_type == "User" else "Organization",
        suspended=inst.suspended_at is not None,
        repository_selection=inst.repository_selection,
    )


def _repository(repo: GhRepository) -> Repository:
    return Repository(
        id=repo.id,
        full_name=repo.full_name,
        name=repo.name,
        owner_login=repo.owner.login,
        private=repo.private,
        default_branch=repo.default_branch,
        archived=repo.archived,
        clone_url=repo.clone_url,
        html_url=repo.html_url,
        updated_at=repo.updated_at,
    )


def _organization(org: GhOrganization) -> Organization:
    return Organization(id=org.id, login=org.login, avatar_url=org.avatar_url, description=org.description)


def _pull_request(pr: GhPullRequest) -> PullRequest:
    # Only fields present in list items (pull-request-simple) are read: touching one that is missing
    # (e.g. ``merged``) would make PyGithub fetch every PR one by one. merged ⇔ merged_at is set.
    user = pr.user
    return PullRequest(
        number=pr.number,
        id=pr.id,
        title=pr.title,
        body=pr.body,
        state=pr.state,
        draft=bool(pr.draft),
        merged=pr.merged_at is not None,
        head_ref=pr.head.ref,
        head_sha=pr.head.sha,
        base_ref=pr.base.ref,
        author_login=user.login if user is not None else None,
        html_url=pr.html_url,
        updated_at=_required(pr.updated_at, f"updated_at of pull request #{pr.number}"),
        closed_at=pr.closed_at,
        merged_at=pr.merged_at,
    )
