"""Completing a GitHub sign-in: user record, server-side session, background discovery.

The OAuth callback is idempotent: its outcome is stored on the app shell keyed by a hash of
the OAuth ``state`` for 60 s, and concurrent duplicates in one process share one completion. A retry
through a proxy therefore gets the same signed-in result instead of "please restart".
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from foundry.auth.crypto import decrypt, encrypt
from foundry.clock import Clock
from foundry.config import Settings
from foundry.errors import DriverError, Unauthorized
from foundry.ids import APP_SHELL_ID, user_id_for
from foundry.runtime.client import Runtime

log = logging.getLogger(__name__)

CALLBACK_TTL_S = 60


@dataclass(frozen=True)
class SignedIn:
    user_id: str
    session_id: str
    expires_at: int


def state_hash(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


class SignInService:
    """Turns a GitHub OAuth token (or code) into a Foundry session."""

    def __init__(self, settings: Settings, runtime: Runtime, github: Any, clock: Clock) -> None:
        self.settings = settings
        self.runtime = runtime
        self.github = github
        self.clock = clock
        self._inflight: dict[str, asyncio.Future[SignedIn]] = {}

    def now_ms(self) -> int:
        return self.clock.now_ms()

    async def complete(
        self,
        access_token: str,
        scope: str = "",
        *,
        user_agent: str | None = None,
        ip_address: str | None = None,
    ) -> SignedIn:
        """Record the GitHub user and token, open a session, start organization discovery."""
        viewer = await self.github.get_authenticated_user(access_token)
        user_id = user_id_for(viewer.id)
        user = self.runtime.actor("user", user_id)
        await user.call(
            "upsert_from_github",
            {
                "githubAccountId": viewer.id,
                "login": viewer.login,
                "name": viewer.name,
                "email": viewer.email,
                "avatarUrl": viewer.avatar_url,
                "accessToken": access_token,
                "scope": scope,
            },
        )
        session = await user.call(
            "create_session",
            {
                "ttlSeconds": self.settings.auth.session_ttl_seconds,
                "userAgent": user_agent,
                "ipAddress": ip_address,
            },
        )
        # The redirect never waits for GitHub's org listing (a background job), only for the
        # command that marks discovery as running: a request for one of the user's organizations
        # arriving right after sign-in then waits for discovery instead of finding no organization.
        await user.send("discover_organizations", {}, wait=True)
        return SignedIn(user_id, session["sessionId"], session["expiresAt"])

    async def complete_callback(self, state: str, exchange: Any, **client: Any) -> SignedIn:
        """Complete the callback for ``state`` once; duplicates get the first outcome.

        ``exchange`` is a coroutine function returning ``(access_token, scope)``; it runs at most once
        per state in this process, and a duplicate from another process whose exchange fails (the code
        was already used) waits briefly for the first outcome to be recorded.
        """
        key = state_hash(state)
        stored = await self._stored(key)
        if stored is not None:
            return stored
        running = self._inflight.get(key)
        if running is not None:
            return await asyncio.shield(running)
        fut: asyncio.Future[SignedIn] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            try:
                token, scope = await exchange()
            except DriverError as exc:
                recorded = await self._wait_for_stored(key)
                if recorded is None:
                    raise Unauthorized(f"GitHub sign-in failed: {exc}") from exc
                fut.set_result(recorded)
                return recorded
            result = await self.complete(token, scope, **client)
            await self.runtime.call(
                "organization",
                APP_SHELL_ID,
                "record_oauth_callback",
                {
                    "stateHash": key,
                    "userId": result.user_id,
                    # Encrypted: the session id is the cookie's bearer secret, and this record
                    # only has to give it back to a retried callback of this same server.
                    "sessionId": encrypt(self.settings.effective_secret_key(), result.session_id),
                    "sessionExpiresAt": result.expires_at,
                    "ttlSeconds": CALLBACK_TTL_S,
                },
            )
            fut.set_result(result)
            return result
        except BaseException as exc:
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # retrieved here so an unawaited future logs nothing twice
            raise
        finally:
            loop = asyncio.get_running_loop()
            loop.call_later(CALLBACK_TTL_S, self._inflight.pop, key, None)

    async def _stored(self, key: str) -> SignedIn | None:
        found = await self.runtime.call(
            "organization", APP_SHELL_ID, "get_oauth_callback", {"stateHash": key}
        )
        if not found.get("found"):
            return None
        session_id = decrypt(self.settings.effective_secret_key(), found["sessionId"])
        return SignedIn(found["userId"], session_id, found["sessionExpiresAt"])

    async def _wait_for_stored(self, key: str, seconds: float = 10.0) -> SignedIn | None:
        deadline = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < deadline:
            stored = await self._stored(key)
            if stored is not None:
                return stored
            await asyncio.sleep(0.2)
        return None
