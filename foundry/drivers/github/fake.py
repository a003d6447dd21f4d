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

The fake is one class per concern, assembled here (each module stays small enough to read whole):

* ``_fake_state``: the records, the world and the API tests use to shape it;
* ``_fake_serving``: lifecycle, dispatch, GitHub-shaped responses, failure injection, request log;
* ``_fake_auth``: issuing user credentials and authenticating callers;
* ``_fake_app_routes``: the OAuth web flow, ``/app``, installations and installation tokens;
* ``_fake_data_routes``: users, organizations, repositories and pull requests;
* ``_fake_seed``: the demo world of mock mode (`seed_mock`);
* ``_fake_http`` / ``_fake_records``: the HTTP server and the wire shapes.

This module keeps the constructor, the route table and the command line.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import secrets
import threading
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from foundry.clock import Clock, SystemClock
from foundry.drivers.github._fake_app_routes import AppRoutes
from foundry.drivers.github._fake_data_routes import DataRoutes
from foundry.drivers.github._fake_http import HttpServer
from foundry.drivers.github._fake_records import (
    APP_EVENTS,
    APP_PERMISSIONS,
    JSON,
    AppIdentity,
    Renderer,
    World,
)
from foundry.drivers.github._fake_seed import MOCK_TIME, seed_mock
from foundry.drivers.github._fake_serving import Handler
from foundry.drivers.github._fake_state import Failure, InstallationGrant, OAuthCode, RecordedRequest

__all__ = ["MOCK_TIME", "FakeGitHub", "RecordedRequest", "seed_mock"]


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


class FakeGitHub(AppRoutes, DataRoutes):
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
        #: Called with each pull request opened through the API (mock mode keeps them on disk, as
        #: GitHub would: numbers must not start over after a restart).
        self.on_pull_created: Callable[[dict[str, Any]], None] | None = None

        self._port = port
        self._server: HttpServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()
        self._in_flight = 0
        self._ids = itertools.count(1000)
        self._world = World()
        self._render = Renderer(self._world, AppIdentity(app_id, app_slug, client_id))
        self._installation_tokens: dict[str, InstallationGrant] = {}
        self._user_tokens: dict[str, str] = {}
        self._codes: dict[str, OAuthCode] = {}
        self._failures: list[Failure] = []
        self._routes = self._build_routes()

    # ------------------------------------------------------------------------------ route table

    def _build_routes(self) -> list[tuple[str, list[str], Handler]]:
        table: list[tuple[str, str, Handler]] = [
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
            ("GET", "/avatars/u/{user_id}", self._get_avatar),
            ("GET", "/orgs/{org}", self._get_org),
            ("GET", "/orgs/{org}/members", self._list_members),
            ("GET", "/repos/{owner}/{repo}", self._get_repo),
            ("GET", "/repos/{owner}/{repo}/pulls", self._list_pulls),
            ("POST", "/repos/{owner}/{repo}/pulls", self._create_pull),
            ("GET", "/repos/{owner}/{repo}/pulls/{number}", self._get_pull),
        ]
        return [(method, pattern.strip("/").split("/"), handler) for method, pattern, handler in table]


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
