"""Credentials of the fake GitHub: issuing user tokens and OAuth codes, and checking who calls.

Every route starts by asking who the caller is (an App JWT, an installation token or a user token) and
what it may see; that is one concern, kept apart from the routes that use it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import jwt

from foundry.drivers.github._fake_http import HttpError, Request
from foundry.drivers.github._fake_records import Account, Repo
from foundry.drivers.github._fake_serving import FakeServing
from foundry.drivers.github._fake_state import OAuthCode

__all__ = ["FakeAuth", "InstallationPrincipal", "Principal", "UserPrincipal"]


@dataclass(frozen=True)
class InstallationPrincipal:
    installation_id: int
    repository_ids: frozenset[int] | None


@dataclass(frozen=True)
class UserPrincipal:
    login: str


Principal = InstallationPrincipal | UserPrincipal


class FakeAuth(FakeServing):
    """Issues the fake's user credentials and authenticates its callers."""

    # ------------------------------------------------------------------------------ credentials

    def issue_oauth_code(self, login: str, redirect_uri: str | None = None) -> str:
        """A fresh single-use OAuth code that signs in as ``login`` (skips the authorize page)."""
        with self._lock:
            if login not in self._world.accounts or self._world.accounts[login].type != "User":
                raise KeyError(f"unknown user {login!r}")
            code = secrets.token_hex(10)
            self._codes[code] = OAuthCode(login, redirect_uri, self._now())
            return code

    def issue_user_token(self, login: str) -> str:
        """A user token for ``login``, as the OAuth code exchange would return."""
        with self._lock:
            if login not in self._world.accounts:
                raise KeyError(f"unknown user {login!r}")
            token = "ghu_" + secrets.token_urlsafe(27)
            self._user_tokens[token] = login
            return token

    def revoke_installation_tokens(self, installation_id: int | None = None) -> None:
        """Invalidate issued installation tokens (all, or one installation's), as a revocation would."""
        with self._lock:
            for token, grant in list(self._installation_tokens.items()):
                if installation_id is None or grant.installation_id == installation_id:
                    del self._installation_tokens[token]

    # ------------------------------------------------------------------------------ auth checks
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

    def _principal(self, request: Request) -> Principal:
        token = self._bearer(request)
        if token is None:
            raise HttpError(401, "Requires authentication")
        grant = self._installation_tokens.get(token)
        if grant is not None:
            if grant.expires_at <= self._now():
                raise HttpError(401, "Bad credentials")
            return InstallationPrincipal(grant.installation_id, grant.repository_ids)
        login = self._user_tokens.get(token)
        if login is not None:
            return UserPrincipal(login)
        raise HttpError(401, "Bad credentials")

    def _require_user(self, request: Request) -> Account:
        principal = self._principal(request)
        if not isinstance(principal, UserPrincipal):
            raise HttpError(403, "Resource not accessible by integration")
        return self._world.accounts[principal.login]

    def _can_see_repo(self, principal: Principal, repo: Repo) -> bool:
        if isinstance(principal, InstallationPrincipal):
            return repo.installation_id == principal.installation_id and (
                principal.repository_ids is None or repo.id in principal.repository_ids
            )
        return repo.owner == principal.login or principal.login in self._world.members.get(repo.owner, {})

    def _visible_repo(self, request: Request, owner: str, name: str) -> tuple[Principal, Repo]:
        principal = self._principal(request)
        repo = self._world.repos.get(f"{owner}/{name}")
        # GitHub answers 404, not 403, for repositories the caller may not see.
        if repo is None or not self._can_see_repo(principal, repo):
            raise HttpError(404, "Not Found")
        return principal, repo
