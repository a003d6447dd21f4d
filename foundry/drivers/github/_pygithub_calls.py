"""How the PyGithub driver runs one blocking PyGithub call: in a worker thread, with bounded
concurrency per installation, bounded rate-limit waits and the one error mapping.

Split from the driver's operations and its credentials because every GitHub call, whoever makes it,
goes through this same path; the rules it follows are described in ``pygithub.py``'s docstring.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import jwt
import requests

from foundry.clock import Clock
from foundry.drivers.github import VENDOR
from foundry.drivers.github._pygithub_convert import translate_error
from foundry.errors import DriverError, RateLimited
from github import GithubException, RateLimitExceededException
from github.GithubObject import GithubObject
from github.PaginatedList import PaginatedList

__all__ = ["SECONDARY_LIMIT_WAIT", "GitHubCalls", "Item", "Sleep", "T"]

# The driver's log lines keep the logger name they had before the driver was split into modules.
_log = logging.getLogger("foundry.drivers.github.pygithub")

T = TypeVar("T")
Item = TypeVar("Item", bound=GithubObject)
Sleep = Callable[[float], Awaitable[None]]

# GitHub's advice when a secondary rate limit carries neither retry-after nor reset: wait a minute.
SECONDARY_LIMIT_WAIT = 60.0


class GitHubCalls:
    """The call path of `PyGithubDriver`. Not used alone."""

    # Set by `PyGithubDriver.__init__`; declared here so this part is type-checked against them.
    _clock: Clock
    _sleep: Sleep
    _max_concurrency: int
    _max_wait: float
    _max_retries: int
    _slots: dict[int, asyncio.Semaphore]

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
                    raise translate_error(exc, doing) from exc
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
            except jwt.InvalidKeyError as exc:
                # PyJWT says "public key" whichever it was: it is the App's private key, set by the operator.
                raise DriverError(
                    f"the GitHub App private key (FOUNDRY_GITHUB__PRIVATE_KEY) does not parse while {doing}: "
                    "give the PEM file GitHub generated for the App",
                    None,
                    VENDOR,
                ) from exc

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
            return SECONDARY_LIMIT_WAIT
        return None  # a plain 403: a permission problem, not a rate limit
