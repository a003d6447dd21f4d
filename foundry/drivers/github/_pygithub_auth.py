"""Credentials of the PyGithub driver: installation tokens minted with the App JWT and cached, and
the PyGithub clients that carry installation and user tokens.

Split from the operations (``pygithub.py``) because token caching, client reuse and the one retry
after a revoked token (401) are shared by every installation-level and user-level call.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from foundry.drivers.github import InstallationToken
from foundry.drivers.github._pygithub_calls import GitHubCalls, Item, T
from foundry.errors import DriverError
from github import Auth, Github, GithubIntegration
from github.PaginatedList import PaginatedList

R = TypeVar("R")

__all__ = ["TOKEN_REFRESH_MARGIN", "GitHubAuth", "TokenKey"]

# The driver's log lines keep the logger name they had before the driver was split into modules.
_log = logging.getLogger("foundry.drivers.github.pygithub")

TOKEN_REFRESH_MARGIN = timedelta(minutes=5)
TokenKey = tuple[int, tuple[int, ...] | None]


class GitHubAuth(GitHubCalls):
    """Tokens and clients of `PyGithubDriver`. Not used alone."""

    # Set by `PyGithubDriver.__init__`; declared here so this part is type-checked against them.
    _options: dict[str, Any]
    _app: GithubIntegration
    _tokens: dict[TokenKey, InstallationToken]
    _token_locks: dict[TokenKey, asyncio.Lock]
    _clients: dict[int, tuple[str, Github]]

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
        key: TokenKey = (installation_id, tuple(sorted(set(repository_ids))) if repository_ids else None)
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
        return await self._with_fresh_token(
            installation_id,
            doing,
            lambda gh: self._call(doing, functools.partial(work, gh), installation_id),
        )

    async def _installation_collect(
        self,
        installation_id: int,
        doing: str,
        pages: Callable[[Github], PaginatedList[Item]],
        convert: Callable[[Item], T],
    ) -> list[T]:
        return await self._with_fresh_token(
            installation_id, doing, lambda gh: self._collect(doing, pages(gh), convert, installation_id)
        )

    async def _with_fresh_token(
        self, installation_id: int, doing: str, attempt: Callable[[Github], Awaitable[R]]
    ) -> R:
        """``attempt`` with the installation's client; a 401 (the token was revoked before it
        expired) mints a new token and tries once more."""
        for tries in (1, 2):
            gh = await self._installation_client(installation_id)
            try:
                return await attempt(gh)
            except DriverError as exc:
                if exc.status != 401 or tries == 2:
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
