"""A stateful fake GitHub that speaks GitHub's real wire format.

The real driver (`foundry.drivers.github.pygithub.PyGithubDriver`) talks to it over real HTTP through
its ``base_url``, so tests exercise PyGithub itself: JWT signing, pagination, error mapping. Mock mode
runs it as Foundry's GitHub, seeded by `seed_mock`.

Shapes come from GitHub: every response body is a deep copy of the example GitHub publishes for that
operation in its OpenAPI description (``examples.json``, extracted by
``scripts/extract_github_examples.py`` from ``@octokit/openapi``), with identity, URL and state fields
overwritten from the fake's state. URLs in bodies and ``Link`` headers point at the fake itself, as
PyGithub requires.

What it checks, like GitHub does:

* ``/app*`` routes need an RS256 App JWT signed with `FakeGitHub.private_key_pem` (else 401);
* installation tokens (``ghs_…``, one hour, optionally narrowed by ``repository_ids``) and user tokens
  (``ghu_…``, from the OAuth web flow) authenticate everything else, and only see what they may see;
* OAuth codes are single use (``bad_verification_code`` on reuse).

Usage::

    with FakeGitHub() as fake:
        seed_mock(fake)
        driver = PyGithubDriver(fake.app_id, fake.private_key_pem, fake.client_id, fake.client_secret,
                                base_url=fake.base_url, web_url=fake.base_url, throttle=False)

Failure injection: `FakeGitHub.fail_next` makes the next matching request fail (e.g. a 403 with
``retry-after``), to prove rate-limit handling. Not thread-safe for concurrent *state edits* from
several test threads; requests are served concurrently and state is guarded by one lock.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import functools
import html
import http
import itertools
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from foundry.clock import Clock, SystemClock
from foundry.drivers.github._fake_http import DOCS_URL, HttpError, HttpServer, Request, Response, paginate
from foundry.drivers.github._fake_records import (
    APP_EVENTS,
    APP_PERMISSIONS,
    JSON,
    Account,
    AccountType,
    AppIdentity,
    Installation,
    Pull,
    Renderer,
    Repo,
    World,
    localize,
    node_id,
    rewrite,
    sha,
    ts,
)

__all__ = ["MOCK_TIME", "FakeGitHub", "RecordedRequest", "seed_mock"]

_log = logging.getLogger(__name__)

_TOKEN_TTL = timedelta(hours=1)
_CODE_TTL = timedelta(minutes=10)  # GitHub's OAuth codes expire after 10 minutes


@dataclass
class _InstallationGrant:
    installation_id: int
    expires_at: datetime
    repository_ids: frozenset[int] | None


@dataclass
class _OAuthCode:
    login: str
    redirect_uri: str | None
    issued_at: datetime
    used: bool = False


@dataclass
class _Failure:
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


@dataclass(frozen=True)
class _InstallationPrincipal:
    installation_id: int
    repository_ids: frozenset[int] | None


@dataclass(frozen=True)
class _UserPrincipal:
    login: str


_Principal = _InstallationPrincipal | _UserPrincipal
_Handler = Callable[..., Response]


# ------------------------------------------------------------------------------------------ the fake


@functools.cache
def _process_app_key() -> str:
    """A fake App's private key, generated once per process: a 2048-bit RSA key costs about 0.1 s,
    and a fake's key protects nothing, so every fake of a process may share it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@functools.cache
def _public_key(private_key_pem: str) -> rsa.RSAPublicKey:
    """The public half of an App key (parsing a PEM key costs tens of milliseconds)."""
    private_key = serialization.load_pem_private_key(private_key_pem.encode(), None)
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise ValueError("GitHub App keys are RSA keys")
    return private_key.public_key()


class FakeGitHub:
    """A fake GitHub API + OAuth server on 127.0.0.1 with in-memory state.

    Args:
        app_id: the GitHub App id the JWT's ``iss`` must carry.
        app_slug: the App's slug (``/apps/<slug>``).
        client_id / client_secret: the App's OAuth credentials the code exchange checks.
        clock: time source for token and code expiry and default timestamps.
        private_key_pem: reuse an RSA key (PEM) instead of generating one (2048-bit, ~50 ms).
        port: a fixed port; 0 (default) picks a free one.
    """

    def __init__(
        self,
        *,
        app_id: int = 4242,
        app_slug: str = "foundry-dev",
        client_id: str = "Iv1.fakefoundry00001",
        client_secret: str | None = None,
        clock: Clock | None = None,
        private_key_pem: str | None = None,
        port: int = 0,
    ) -> None:
        self.app_id = app_id
        self.app_slug = app_slug
        self.client_id = client_id
        self.client_secret = client_secret or secrets.token_hex(20)
        self.clock: Clock = clock or SystemClock()
        self.private_key_pem: str = private_key_pem or _process_app_key()
        self._public_key = _public_key(self.private_key_pem)
        #: What ``GET /app`` reports the App holds; tests take permissions or events away.
        self.app_permissions: dict[str, str] = dict(APP_PERMISSIONS)
        self.app_events: list[str] = list(APP_EVENTS)
        #: Codes of GitHub's manifest flow → the manifest confirmed (see `manifest_code`).
        self._manifest_codes: dict[str, JSON] = {}
        self.latency = 0.0  # seconds each request takes, to make concurrency observable
        self.requests: list[RecordedRequest] = []
        self.max_in_flight = 0

        self._port = port
        self._server: HttpServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()
        self._in_flight = 0
        self._ids = itertools.count(1000)
        self._world = World()
        self._render = Renderer(self._world, AppIdentity(app_id, app_slug, client_id))
        self._installation_tokens: dict[str, _InstallationGrant] = {}
        self._user_tokens: dict[str, str] = {}
        self._codes: dict[str, _OAuthCode] = {}
        self._failures: list[_Failure] = []
        self._routes = self._build_routes()

    # ---------------------------------------------------------------------------------- lifecycle

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` — both the API base and the web (OAuth) base."""
        if self._server is None:
            raise RuntimeError("FakeGitHub is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeGitHub:
        """Start serving in a background thread. Idempotent."""
        if self._server is not None:
            return self
        self._server = HttpServer(self._serve, ("127.0.0.1", self._port))
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-github", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close open connections. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()  # idle keep-alive connections would keep their threads alive
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeGitHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> FakeGitHub:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

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

    def issue_oauth_code(self, login: str, redirect_uri: str | None = None) -> str:
        """A fresh single-use OAuth code that signs in as ``login`` (skips the authorize page)."""
        with self._lock:
            if login not in self._world.accounts or self._world.accounts[login].type != "User":
                raise KeyError(f"unknown user {login!r}")
            code = secrets.token_hex(10)
            self._codes[code] = _OAuthCode(login, redirect_uri, self._now())
            return code

    def issue_user_token(self, login: str) -> str:
        """A user token for ``login``, as the OAuth code exchange would return."""
        with self._lock:
            if login not in self._world.accounts:
                raise KeyError(f"unknown user {login!r}")
            token = "ghu_" + secrets.token_urlsafe(27)
            self._user_tokens[token] = login
            return token

    def fail_next(
        self,
        path_prefix: str,
        status: int,
        headers: Mapping[str, str] | None = None,
        *,
        body: JSON = None,
        method: str | None = None,
        times: int = 1,
        after: int = 0,
    ) -> None:
        """Make the next ``times`` requests whose path starts with ``path_prefix`` fail.

        ``after`` lets that many matching requests through first (e.g. ``after=1`` fails page 2 of
        a list). Failures are matched before authentication, in the order they were added. Without
        ``body``, GitHub's message for that kind of failure is used (rate limits get the exact
        wording PyGithub recognises).
        """
        with self._lock:
            lowered = {k.lower(): str(v) for k, v in (headers or {}).items()}
            self._failures.append(
                _Failure(path_prefix, status, lowered, body, method.upper() if method else None, times, after)
            )

    def revoke_installation_tokens(self, installation_id: int | None = None) -> None:
        """Invalidate issued installation tokens (all, or one installation's), as a revocation would."""
        with self._lock:
            for token, grant in list(self._installation_tokens.items()):
                if installation_id is None or grant.installation_id == installation_id:
                    del self._installation_tokens[token]

    def clear_requests(self) -> None:
        """Forget the request log."""
        with self._lock:
            self.requests.clear()

    def requests_to(self, path_prefix: str, method: str | None = None) -> list[RecordedRequest]:
        """Logged requests whose path starts with ``path_prefix`` (and with ``method``, if given)."""
        with self._lock:
            return [
                r
                for r in self.requests
                if r.path.startswith(path_prefix) and (method is None or r.method == method.upper())
            ]

    # ------------------------------------------------------------------------------ dispatching

    def _build_routes(self) -> list[tuple[str, list[str], _Handler]]:
        table: list[tuple[str, str, _Handler]] = [
            ("GET", "/login/oauth/authorize", self._oauth_authorize),
            ("POST", "/login/oauth/access_token", self._oauth_access_token),
            ("GET", "/app", self._get_app),
            ("POST", "/app-manifests/{code}/conversions", self._convert_manifest),
            ("GET", "/app/installations", self._list_installations),
            ("GET", "/app/installations/{installation_id}", self._get_installation),
            ("POST", "/app/installations/{installation_id}/access_tokens", self._create_token),
            ("GET", "/installation/repositories", self._list_installation_repos),
            ("GET", "/user", self._get_user),
            ("GET", "/user/emails", self._list_emails),
            ("GET", "/user/orgs", self._list_user_orgs),
            ("GET", "/user/installations", self._list_user_installations),
            ("GET", "/users/{username}", self._get_public_user),
            ("GET", "/orgs/{org}", self._get_org),
            ("GET", "/orgs/{org}/members", self._list_members),
            ("GET", "/repos/{owner}/{repo}", self._get_repo),
            ("GET", "/repos/{owner}/{repo}/pulls", self._list_pulls),
            ("POST", "/repos/{owner}/{repo}/pulls", self._create_pull),
            ("GET", "/repos/{owner}/{repo}/pulls/{number}", self._get_pull),
        ]
        return [(method, pattern.strip("/").split("/"), handler) for method, pattern, handler in table]

    def _match(self, method: str, path: str) -> tuple[_Handler, dict[str, str]] | None:
        parts = path.strip("/").split("/")
        allowed = False
        for route_method, pattern, handler in self._routes:
            if len(pattern) != len(parts):
                continue
            params: dict[str, str] = {}
            for want, got in zip(pattern, parts, strict=True):
                if want.startswith("{"):
                    params[want[1:-1]] = got
                elif want != got:
                    break
            else:
                if route_method == method:
                    return handler, params
                allowed = True
        if allowed:
            raise HttpError(404, "Not Found")  # GitHub answers unknown verbs on known paths with 404
        return None

    def _serve(self, request: Request) -> Response:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            if self.latency:
                time.sleep(self.latency)  # runs on the server's request thread, never an event loop
            with self._lock:
                response = self._dispatch(request)
                self.requests.append(
                    RecordedRequest(
                        request.method,
                        request.path,
                        dict(request.query),
                        dict(request.headers),
                        request.body,
                        response.status,
                    )
                )
                return response
        finally:
            with self._lock:
                self._in_flight -= 1

    def _dispatch(self, request: Request) -> Response:
        try:
            failure = self._take_failure(request)
            if failure is not None:
                return failure
            matched = self._match(request.method, request.path)
            if matched is None:
                raise HttpError(404, "Not Found")
            handler, params = matched
            return handler(request, **params)
        except HttpError as exc:
            body = {"message": exc.message, "documentation_url": DOCS_URL, "status": str(exc.status)}
            return self._json({**body, **exc.extra}, exc.status)
        except Exception:  # a bug in the fake itself: answer like GitHub's 500 and keep serving
            _log.exception("fake github: %s %s crashed", request.method, request.path)
            return self._json({"message": "Server Error"}, 500)

    def _take_failure(self, request: Request) -> Response | None:
        for failure in self._failures:
            if request.path.startswith(failure.path_prefix) and failure.method in (None, request.method):
                if failure.skip > 0:
                    failure.skip -= 1
                    return None
                failure.remaining -= 1
                if failure.remaining <= 0:
                    self._failures.remove(failure)
                body = failure.body if failure.body is not None else self._failure_body(failure)
                return self._json(body, failure.status, failure.headers)
        return None

    @staticmethod
    def _failure_body(failure: _Failure) -> JSON:
        if failure.status in (403, 429):
            if failure.headers.get("x-ratelimit-remaining") == "0":
                message = (
                    "API rate limit exceeded for installation. If you reach out to GitHub Support "
                    "for help, please include the request ID."
                )
            else:
                message = (
                    "You have exceeded a secondary rate limit. Please wait a few minutes before "
                    "you try again."
                )
        else:
            message = http.HTTPStatus(failure.status).phrase
        return {"message": message, "documentation_url": DOCS_URL, "status": str(failure.status)}

    def _json(self, body: JSON, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
        reset = int(self.clock.now_ms() / 1000) + 3600
        out = {
            "Content-Type": "application/json; charset=utf-8",
            "X-GitHub-Media-Type": "github.v3; format=json",
            "X-GitHub-Api-Version-Selected": "2022-11-28",
            "X-GitHub-Request-Id": secrets.token_hex(8).upper(),
            "X-RateLimit-Limit": "5000",
            "X-RateLimit-Remaining": "4999",
            "X-RateLimit-Reset": str(reset),
            "X-RateLimit-Used": "1",
            "X-RateLimit-Resource": "core",
        }
        for name, value in (headers or {}).items():
            # Injected headers replace the defaults whatever their case.
            for existing in [k for k in out if k.lower() == name.lower()]:
                del out[existing]
            out[name] = value
        return Response(status, json.dumps(localize(body, self.base_url)).encode(), out)

    def _page(
        self,
        request: Request,
        items: list[JSON],
        envelope: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Response:
        body, headers = paginate(request, items, self.base_url, envelope, extra)
        return self._json(body, 200, headers)

    # ------------------------------------------------------------------------------ auth checks

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.now_ms() / 1000, tz=UTC)

    @staticmethod
    def _bearer(request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() in {"bearer", "token"} and value.strip() else None

    def _require_app_jwt(self, request: Request) -> None:
        token = self._bearer(request)
        if token is None:
            raise HttpError(401, "A JSON web token could not be decoded")
        try:
            claims = jwt.decode(
                token,
                self._public_key,
                algorithms=["RS256"],
                options={"require": ["iat", "exp", "iss"]},
                leeway=60,
            )
        except jwt.PyJWTError as exc:
            raise HttpError(401, "A JSON web token could not be decoded") from exc
        if str(claims["iss"]) != str(self.app_id):
            raise HttpError(401, "Integration not found")
        if int(claims["exp"]) - int(claims["iat"]) > 660:
            # GitHub refuses JWTs valid for more than 10 minutes.
            raise HttpError(401, "'Expiration time' claim ('exp') is too far in the future")

    def _principal(self, request: Request) -> _Principal:
        token = self._bearer(request)
        if token is None:
            raise HttpError(401, "Requires authentication")
        grant = self._installation_tokens.get(token)
        if grant is not None:
            if grant.expires_at <= self._now():
                raise HttpError(401, "Bad credentials")
            return _InstallationPrincipal(grant.installation_id, grant.repository_ids)
        login = self._user_tokens.get(token)
        if login is not None:
            return _UserPrincipal(login)
        raise HttpError(401, "Bad credentials")

    def _require_user(self, request: Request) -> Account:
        principal = self._principal(request)
        if not isinstance(principal, _UserPrincipal):
            raise HttpError(403, "Resource not accessible by integration")
        return self._world.accounts[principal.login]

    def _can_see_repo(self, principal: _Principal, repo: Repo) -> bool:
        if isinstance(principal, _InstallationPrincipal):
            return repo.installation_id == principal.installation_id and (
                principal.repository_ids is None or repo.id in principal.repository_ids
            )
        return repo.owner == principal.login or principal.login in self._world.members.get(repo.owner, {})

    def _visible_repo(self, request: Request, owner: str, name: str) -> tuple[_Principal, Repo]:
        principal = self._principal(request)
        repo = self._world.repos.get(f"{owner}/{name}")
        # GitHub answers 404, not 403, for repositories the caller may not see.
        if repo is None or not self._can_see_repo(principal, repo):
            raise HttpError(404, "Not Found")
        return principal, repo

    # ------------------------------------------------------------------------------ routes: OAuth

    def _oauth_authorize(self, request: Request) -> Response:
        if request.query.get("client_id") != self.client_id:
            return Response(404, b"<h1>404 - client_id not found</h1>", {"Content-Type": "text/html"})
        login = request.query.get("login")
        if not login or login not in self._world.accounts or self._world.accounts[login].type != "User":
            return self._account_chooser(request)
        redirect_uri = request.query.get("redirect_uri")
        if not redirect_uri:
            raise HttpError(422, "redirect_uri is required by this fake")
        code = self.issue_oauth_code(login, redirect_uri)
        params = {"code": code}
        if "state" in request.query:
            params["state"] = request.query["state"]
        separator = "&" if "?" in redirect_uri else "?"
        return Response(302, b"", {"Location": f"{redirect_uri}{separator}{urlencode(params)}"})

    def _account_chooser(self, request: Request) -> Response:
        """The fake's stand-in for GitHub's sign-in page: pick a user (mock mode)."""
        users = sorted(a.login for a in self._world.accounts.values() if a.type == "User")
        base = [(k, v) for k, v in request.query_pairs if k != "login"]
        items = "".join(
            f'<li><a href="/login/oauth/authorize?{html.escape(urlencode([*base, ("login", u)]))}">'
            f"Sign in as {html.escape(u)}</a></li>"
            for u in users
        )
        page = (
            "<!doctype html><title>Sign in to GitHub (fake)</title>"
            f"<h1>Sign in to GitHub</h1><ul>{items}</ul>"
        )
        return Response(200, page.encode(), {"Content-Type": "text/html; charset=utf-8"})

    def _oauth_access_token(self, request: Request) -> Response:
        params = request.params()
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            # GitHub also accepts the client credentials as HTTP Basic (authlib's default).
            try:
                client_id, _, client_secret = base64.b64decode(encoded).decode().partition(":")
            except ValueError as exc:
                raise HttpError(400, "Malformed Basic authorization header") from exc
            params.setdefault("client_id", client_id)
            params.setdefault("client_secret", client_secret)
        result: dict[str, str]
        if params.get("client_id") != self.client_id or params.get("client_secret") != self.client_secret:
            result = {
                "error": "incorrect_client_credentials",
                "error_description": "The client_id and/or client_secret passed are incorrect.",
                "error_uri": "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app"
                "-access-token-request-errors/#incorrect-client-credentials",
            }
        else:
            grant = self._codes.get(params.get("code", ""))
            if grant is None or grant.used or self._now() - grant.issued_at > _CODE_TTL:
                result = {
                    "error": "bad_verification_code",
                    "error_description": "The code passed is incorrect or expired.",
                    "error_uri": "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app"
                    "-access-token-request-errors/#bad-verification-code",
                }
            elif grant.redirect_uri and params.get("redirect_uri") not in (None, grant.redirect_uri):
                result = {
                    "error": "redirect_uri_mismatch",
                    "error_description": "The redirect_uri MUST match the registered callback URL for this "
                    "application.",
                    "error_uri": "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-"
                    "authorization-request-errors/#redirect-uri-mismatch",
                }
            else:
                grant.used = True
                result = {
                    "access_token": self.issue_user_token(grant.login),
                    "token_type": "bearer",
                    "scope": "",
                }
        # GitHub answers these errors with 200, and form-encoded unless JSON is asked for.
        if "json" in request.headers.get("accept", ""):
            return self._json(result)
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        return Response(200, urlencode(result).encode(), form)

    # ------------------------------------------------------------------------------ routes: App

    def _get_app(self, request: Request) -> Response:
        self._require_app_jwt(request)
        out = rewrite(
            self._render.template("apps/get-authenticated"), [("apps/octoapp", f"apps/{self.app_slug}")]
        )
        out.update(
            id=self.app_id,
            slug=self.app_slug,
            client_id=self.client_id,
            name="Foundry (fake)",
            node_id=node_id("Integration", self.app_id),
            permissions=dict(self.app_permissions),
            events=list(self.app_events),
            installations_count=len(self._world.installations),
        )
        return self._json(out)

    def manifest_code(self, manifest: JSON) -> str:
        """What GitHub does when the owner confirms a manifest: a one-time code for its conversion.
        The App created is this fake's own App, with the manifest's permissions and events."""
        code = secrets.token_hex(10)
        with self._lock:
            self._manifest_codes[code] = manifest
        return code

    def _convert_manifest(self, request: Request, code: str) -> Response:
        # No authentication: the code is the credential, usable once.
        manifest = self._manifest_codes.pop(code, None)
        if manifest is None:
            raise HttpError(404, "Not Found")
        self.app_permissions = dict(manifest.get("default_permissions") or {})
        self.app_events = list(manifest.get("default_events") or [])
        out = rewrite(
            self._render.template("apps/get-authenticated"), [("apps/octoapp", f"apps/{self.app_slug}")]
        )
        out.update(
            id=self.app_id,
            slug=self.app_slug,
            name=manifest.get("name"),
            client_id=self.client_id,
            client_secret=self.client_secret,
            webhook_secret=secrets.token_hex(20),
            pem=self.private_key_pem,
            permissions=dict(self.app_permissions),
            events=list(self.app_events),
        )
        return self._json(out, 201)

    def _list_installations(self, request: Request) -> Response:
        self._require_app_jwt(request)
        items = [self._render.render_installation(i) for _, i in sorted(self._world.installations.items())]
        return self._page(request, items)

    def _find_installation(self, installation_id: str) -> Installation:
        try:
            return self._world.installations[int(installation_id)]
        except (KeyError, ValueError) as exc:
            raise HttpError(404, "Not Found") from exc

    def _get_installation(self, request: Request, installation_id: str) -> Response:
        self._require_app_jwt(request)
        return self._json(self._render.render_installation(self._find_installation(installation_id)))

    def _create_token(self, request: Request, installation_id: str) -> Response:
        self._require_app_jwt(request)
        inst = self._find_installation(installation_id)
        if inst.suspended:
            raise HttpError(403, "This installation has been suspended")
        body = request.json()
        available = {r.id: r for r in self._world.repos.values() if r.installation_id == inst.id}
        wanted: set[int] | None = None
        if body.get("repository_ids") is not None:
            wanted = {int(i) for i in body["repository_ids"]}
        if body.get("repositories") is not None:
            by_name = {r.name: r.id for r in available.values()}
            if any(name not in by_name for name in body["repositories"]):
                wanted = {-1}
            else:
                wanted = (wanted or set()) | {by_name[name] for name in body["repositories"]}
        if wanted is not None and not wanted <= available.keys():
            raise HttpError(
                422,
                "There is at least one repository that does not exist or is not accessible "
                "to the parent installation.",
            )
        token = "ghs_" + secrets.token_urlsafe(27)
        expires_at = self._now() + _TOKEN_TTL
        self._installation_tokens[token] = _InstallationGrant(
            inst.id, expires_at, frozenset(wanted) if wanted is not None else None
        )
        out = self._render.template("apps/create-installation-access-token")
        out.update(
            token=token,
            expires_at=ts(expires_at),
            permissions=dict(APP_PERMISSIONS),
            repository_selection="selected" if wanted is not None else inst.repository_selection,
        )
        if wanted is not None:
            out["repositories"] = [self._render.render_repo(available[i]) for i in sorted(wanted)]
        else:
            out.pop("repositories", None)
        return self._json(out, 201)

    # ------------------------------------------------------------------------------ routes: data

    def _list_installation_repos(self, request: Request) -> Response:
        principal = self._principal(request)
        if not isinstance(principal, _InstallationPrincipal):
            raise HttpError(
                403,
                "You must authenticate with an installation access token in order to list "
                "repositories for an installation.",
            )
        repos = [r for _, r in sorted(self._world.repos.items()) if self._can_see_repo(principal, r)]
        inst = self._world.installations[principal.installation_id]
        return self._page(
            request,
            [self._render.render_repo(r) for r in repos],
            "repositories",
            {"repository_selection": inst.repository_selection},
        )

    def _get_user(self, request: Request) -> Response:
        return self._json(self._render.render_user(self._require_user(request), "users/get-authenticated"))

    def _list_emails(self, request: Request) -> Response:
        return self._page(request, copy.deepcopy(self._require_user(request).emails))

    def _user_orgs(self, login: str) -> list[Account]:
        return [
            self._world.accounts[org]
            for org, members in sorted(self._world.members.items())
            if login in members
        ]

    def _list_user_orgs(self, request: Request) -> Response:
        user = self._require_user(request)
        orgs = [
            self._render.render_org(o, "orgs/list-for-authenticated-user")
            for o in self._user_orgs(user.login)
        ]
        return self._page(request, orgs)

    def _list_user_installations(self, request: Request) -> Response:
        user = self._require_user(request)
        visible = {user.login} | {o.login for o in self._user_orgs(user.login)}
        items = [
            self._render.render_installation(i)
            for _, i in sorted(self._world.installations.items())
            if i.account_login in visible
        ]
        return self._page(request, items, "installations")

    def _get_public_user(self, request: Request, username: str) -> Response:
        self._principal(request)
        account = self._world.accounts.get(username)
        if account is None:
            raise HttpError(404, "Not Found")
        if account.type == "Organization":
            return self._json(self._render.render_org(account, "orgs/get"))
        return self._json(self._render.render_user(account, "users/get-by-username"))

    def _get_org(self, request: Request, org: str) -> Response:
        self._principal(request)
        account = self._world.accounts.get(org)
        if account is None or account.type != "Organization":
            raise HttpError(404, "Not Found")
        return self._json(self._render.render_org(account, "orgs/get"))

    def _list_members(self, request: Request, org: str) -> Response:
        principal = self._principal(request)
        account = self._world.accounts.get(org)
        if account is None or account.type != "Organization":
            raise HttpError(404, "Not Found")
        if isinstance(principal, _InstallationPrincipal):
            if self._world.installations[principal.installation_id].account_login != org:
                raise HttpError(403, "Resource not accessible by integration")
        elif principal.login not in self._world.members.get(org, {}):
            raise HttpError(403, "Must have admin rights to Repository.")
        role = request.query.get("role", "all")
        if role not in {"all", "admin", "member"}:
            raise HttpError(422, "Validation Failed")
        members = [
            self._render.render_account(self._world.accounts[login])
            for login, member_role in sorted(self._world.members.get(org, {}).items())
            if role == "all" or member_role == role
        ]
        return self._page(request, members)

    def _get_repo(self, request: Request, owner: str, repo: str) -> Response:
        _, found = self._visible_repo(request, owner, repo)
        return self._json(self._render.render_repo(found, "repos/get"))

    def _list_pulls(self, request: Request, owner: str, repo: str) -> Response:
        _, found = self._visible_repo(request, owner, repo)
        state = request.query.get("state", "open")
        pulls = [p for p in self._world.pulls[found.full_name].values() if state == "all" or p.state == state]
        if "head" in request.query:
            head_owner, _, head_ref = request.query["head"].rpartition(":")
            pulls = [p for p in pulls if p.head_ref == head_ref and head_owner in ("", found.owner)]
        if "base" in request.query:
            pulls = [p for p in pulls if p.base_ref == request.query["base"]]
        sort = request.query.get("sort", "created")
        key: Callable[[Pull], Any] = (
            (lambda p: (p.updated_at, p.number))
            if sort == "updated"
            else (lambda p: (p.created_at, p.number))
        )
        direction = request.query.get("direction", "desc" if sort in ("created", "updated") else "asc")
        pulls.sort(key=key, reverse=direction == "desc")
        return self._page(request, [self._render.render_pull(p, "pulls/list") for p in pulls])

    def _get_pull(self, request: Request, owner: str, repo: str, number: str) -> Response:
        _, found = self._visible_repo(request, owner, repo)
        pull = self._world.pulls[found.full_name].get(int(number)) if number.isdigit() else None
        if pull is None:
            raise HttpError(404, "Not Found")
        return self._json(self._render.render_pull(pull, "pulls/get"))

    def _create_pull(self, request: Request, owner: str, repo: str) -> Response:
        principal, found = self._visible_repo(request, owner, repo)
        body = request.json()
        missing = [name for name in ("head", "base") if not body.get(name)]
        if missing or not (body.get("title") or body.get("issue")):
            fields = missing + ([] if body.get("title") else ["title"])
            raise HttpError(
                422,
                "Validation Failed",
                errors=[
                    {"resource": "PullRequest", "field": name, "code": "missing_field"} for name in fields
                ],
            )
        head_owner, _, head_ref = str(body["head"]).rpartition(":")
        base_ref = str(body["base"])
        if head_owner not in ("", found.owner):
            raise HttpError(
                422,
                "Validation Failed",
                errors=[{"resource": "PullRequest", "field": "head", "code": "invalid"}],
            )
        if head_ref == base_ref:
            raise HttpError(
                422,
                "Validation Failed",
                errors=[
                    {
                        "resource": "PullRequest",
                        "code": "custom",
                        "message": f"No commits between {base_ref} and {head_ref}",
                    }
                ],
            )
        for existing in self._world.pulls[found.full_name].values():
            if existing.state == "open" and existing.head_ref == head_ref and existing.base_ref == base_ref:
                raise HttpError(
                    422,
                    "Validation Failed",
                    errors=[
                        {
                            "resource": "PullRequest",
                            "code": "custom",
                            "message": f"A pull request already exists for {found.owner}:{head_ref}.",
                        }
                    ],
                )
        if isinstance(principal, _UserPrincipal):
            author = principal.login
        else:
            author = f"{self.app_slug}[bot]"
            if author not in self._world.accounts:
                self._world.accounts[author] = Account(author, next(self._ids), "User")
        number = self.add_pull(
            found.full_name,
            None,
            str(body.get("title") or ""),
            head_ref,
            base_ref=base_ref,
            body=body.get("body"),
            author=author,
            draft=bool(body.get("draft", False)),
        )
        return self._json(
            self._render.render_pull(self._world.pulls[found.full_name][number], "pulls/create"), 201
        )

    # ------------------------------------------------------------------------------ internals

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


# ---------------------------------------------------------------------------------------- mock seed

MOCK_TIME = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)


def seed_mock(fake: FakeGitHub) -> FakeGitHub:
    """Seed the demo world of Foundry's mock mode. Call once on an empty fake; returns it.

    * organizations ``acme`` (installation 1001) and ``globex`` (installation 1002), App installed;
    * users ``alice`` (member of acme), ``bob`` (member of globex), ``carol`` (admin of acme, member
      of globex);
    * repositories ``acme/rocket``, ``acme/anvil``, ``acme/portable-hole``, ``globex/hammock``,
      ``globex/doomsday-device``;
    * open pull requests on ``acme/rocket`` (#1 by alice, #2 draft by carol) and ``globex/hammock``
      (#1 by bob).
    """
    fake.add_org("acme", 7001, name="ACME Corporation", description="Rockets, anvils and portable holes")
    fake.add_org("globex", 7002, name="Globex Corporation", description="World domination, comfortably")
    fake.add_user("alice", 5001, name="Alice Anderson", email="alice@acme.example")
    fake.add_user("bob", 5002, name="Bob Brown", email=None, emails=["bob@globex.example"])
    fake.add_user("carol", 5003, name="Carol Chen", email="carol@acme.example")
    fake.add_member("acme", "alice", "member")
    fake.add_member("acme", "carol", "admin")
    fake.add_member("globex", "bob", "member")
    fake.add_member("globex", "carol", "member")
    fake.add_installation(1001, "acme")
    fake.add_installation(1002, "globex")

    def at(hours: int) -> datetime:
        return MOCK_TIME + timedelta(hours=hours)

    fake.add_repo(
        1001, "acme", "rocket", id=910001, description="Rocket-powered roller skates", updated_at=at(6)
    )
    fake.add_repo(
        1001, "acme", "anvil", id=910002, description="Anvils, dropped from great heights", updated_at=at(4)
    )
    fake.add_repo(
        1001, "acme", "portable-hole", id=910003, description="Holes you can carry", updated_at=at(1)
    )
    fake.add_repo(
        1002, "globex", "hammock", id=920001, description="Hammock district services", updated_at=at(5)
    )
    fake.add_repo(1002, "globex", "doomsday-device", id=920002, archived=True, updated_at=at(0))
    fake.add_pull(
        "acme/rocket",
        1,
        "Add launch countdown",
        "feat/countdown",
        author="alice",
        body="Counts down from ten before ignition.",
        created_at=at(2),
        updated_at=at(6),
    )
    fake.add_pull(
        "acme/rocket",
        2,
        "Tune thruster ratio",
        "feat/thrusters",
        author="carol",
        draft=True,
        body="Work in progress.",
        created_at=at(3),
        updated_at=at(5),
    )
    fake.add_pull(
        "globex/hammock",
        1,
        "Fix hammock sway",
        "fix/sway",
        author="bob",
        body="Less sway, more rest.",
        created_at=at(1),
        updated_at=at(4),
    )
    return fake


def main(argv: list[str] | None = None) -> None:
    """Run a seeded fake GitHub in the foreground: ``python -m foundry.drivers.github.fake``."""
    parser = argparse.ArgumentParser(description="Serve a seeded fake GitHub on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--key-file", help="write the App private key (PEM) here")
    args = parser.parse_args(argv)
    fake = seed_mock(FakeGitHub(port=args.port)).start()
    if args.key_file:
        with open(args.key_file, "w", encoding="utf-8") as fh:
            fh.write(fake.private_key_pem)
    print(
        json.dumps(
            {
                "base_url": fake.base_url,
                "app_id": fake.app_id,
                "client_id": fake.client_id,
                "client_secret": fake.client_secret,
                "key_file": args.key_file,
            }
        ),
        flush=True,
    )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
