"""Request dependencies: who is calling, may they touch this organization, is the write same-site."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Path, Request
from starlette.requests import HTTPConnection

from foundry.auth.cookies import SessionCookies
from foundry.auth.signin import SignInService
from foundry.config import Settings
from foundry.errors import Forbidden, FoundryError, NotFound, Unauthorized
from foundry.http.auth_cache import AuthCache
from foundry.ids import APP_SHELL_ID
from foundry.runtime.client import Runtime

#: How long a request for an organization not (yet) in the caller's list waits for a running
#: organization discovery to end, and how often it looks. Discovery takes about a second per
#: organization on GitHub; past the wait the organization is reported not found.
DISCOVERY_WAIT_S = 10.0
DISCOVERY_POLL_S = 0.05

# The app-state lookups below are `async def` on purpose: FastAPI runs a plain `def` dependency in
# its thread pool, a thread hop (and a wait for a free thread under load) per dependency per request
# for what is one attribute read.


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_cookies(request: Request) -> SessionCookies:
    cookies: SessionCookies = request.app.state.cookies
    return cookies


async def get_signin(request: Request) -> SignInService:
    signin: SignInService = request.app.state.signin
    return signin


SettingsDep = Annotated[Settings, Depends(get_settings)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
CookiesDep = Annotated[SessionCookies, Depends(get_cookies)]
SignInDep = Annotated[SignInService, Depends(get_signin)]


@dataclass(frozen=True)
class Caller:
    """The signed-in user of a request."""

    user_id: str
    session_id: str


async def authenticate(runtime: Runtime, cookies: SessionCookies, conn: HTTPConnection) -> Caller:
    """The caller behind a request's (or websocket's) session cookie.

    A session this process has cached (`AuthCache`) costs no actor call; otherwise the user actor
    is asked, and a valid answer is cached.

    Raises:
        Unauthorized: no cookie, a tampered one, or a session that is unknown, expired or revoked
            (the detail says which).
    """
    ref = cookies.read(conn)
    if ref is None:
        raise Unauthorized("sign in first: no valid session cookie")
    cache = auth_cache_of(conn)
    if cache is not None and cache.session_valid(ref.user_id, ref.session_id):
        return Caller(ref.user_id, ref.session_id)
    ticket = cache.begin_session(ref.user_id) if cache is not None else None
    try:
        session = await runtime.call("user", ref.user_id, "get_session", {"sessionId": ref.session_id})
    except NotFound:
        raise Unauthorized("session is not valid; sign in again") from None
    except FoundryError as exc:
        if exc.code == "invalid_input":  # a signed cookie naming a key that cannot exist
            raise Unauthorized("session is not valid; sign in again") from None
        raise
    if cache is not None:
        cache.fill_session(ticket, ref.user_id, ref.session_id, int(session["expiresAt"]))
    return Caller(ref.user_id, ref.session_id)


def auth_cache_of(conn: HTTPConnection) -> AuthCache | None:
    """This app's session and membership cache (None in an app built without one)."""
    cache: AuthCache | None = getattr(conn.app.state, "auth_cache", None)
    return cache


async def member_role(
    runtime: Runtime, cache: AuthCache | None, user_id: str, organization_id: str
) -> str | None:
    """The user's role in the organization, or None for a non-member (cached when positive)."""
    if cache is not None:
        role = cache.role(user_id, organization_id)
        if role is not None:
            return role
    ticket = cache.begin_membership(user_id, organization_id) if cache is not None else None
    # The caller's own list first: a made-up organization name never wakes (or creates) an actor.
    if organization_id not in await _organizations_of(runtime, user_id):
        return None
    # The organization's member list (from GitHub) is the authority on the role.
    result = await runtime.call("organization", organization_id, "member_role", {"userId": user_id})
    if result.get("role") is None:
        return None
    role = str(result["role"])
    if cache is not None:
        cache.fill_membership(ticket, user_id, organization_id, role)
    return role


async def _organizations_of(runtime: Runtime, user_id: str) -> set[str]:
    """The ids of the user's organizations, once any organization discovery in progress has ended.

    Sign-in answers before discovery (GitHub's org listing) finishes, and a dashboard loads the
    organization at once: answering "not found" in that window would send a new member away from
    their own organization. Only a request for an organization missing from the list waits.
    """
    deadline = time.monotonic() + DISCOVERY_WAIT_S
    while True:
        app = await runtime.call("user", user_id, "app_snapshot")
        ids = {o["id"] for o in app["organizations"]}
        if app["organizationSync"]["status"] != "syncing" or time.monotonic() >= deadline:
            return ids
        await asyncio.sleep(DISCOVERY_POLL_S)


async def optional_caller(request: Request, runtime: RuntimeDep, cookies: CookiesDep) -> Caller | None:
    try:
        return await authenticate(runtime, cookies, request)
    except Unauthorized:
        return None


async def require_caller(request: Request, runtime: RuntimeDep, cookies: CookiesDep) -> Caller:
    return await authenticate(runtime, cookies, request)


OptionalCaller = Annotated[Caller | None, Depends(optional_caller)]
CurrentCaller = Annotated[Caller, Depends(require_caller)]


def allowed_origins(settings: Settings, request: Request) -> set[str]:
    own = f"{request.url.scheme}://{request.url.netloc}"
    return {settings.base_url.rstrip("/"), own, *(o.rstrip("/") for o in settings.auth.extra_origins)}


def origin_of(header: str) -> str | None:
    """``scheme://host[:port]`` of an ``Origin`` header; None when it does not parse (an unbalanced
    ``[`` makes `urlsplit` raise): the header comes from the client, so callers refuse such an
    origin like a foreign one instead of failing."""
    try:
        parts = urlsplit(header)
    except ValueError:
        return None
    return f"{parts.scheme}://{parts.netloc}"


async def same_site_write(request: Request, settings: SettingsDep) -> None:
    """Refuse cross-site writes: the browser's Sec-Fetch-Site and Origin headers must agree with us.

    Non-browser clients send neither header and carry no ambient cookies, so they pass.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise Forbidden(f"cross-site request refused (Sec-Fetch-Site: {site})")
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        if origin_of(origin) not in allowed_origins(settings, request):
            raise Forbidden(f"cross-site request refused (Origin: {origin[:200]})")
    elif origin == "null":
        raise Forbidden("cross-site request refused (Origin: null)")


SameSiteWrite = Depends(same_site_write)


@dataclass(frozen=True)
class Membership:
    """A caller who is a member of the organization in the path."""

    caller: Caller
    organization_id: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


OrgPath = Annotated[str, Path(alias="org", min_length=1, max_length=200, pattern=r"^[a-z0-9][a-z0-9-]*$")]


async def get_auth_cache(request: Request) -> AuthCache | None:
    return auth_cache_of(request)


AuthCacheDep = Annotated[AuthCache | None, Depends(get_auth_cache)]


async def require_member(
    org: OrgPath, caller: CurrentCaller, runtime: RuntimeDep, cache: AuthCacheDep = None
) -> Membership:
    """The caller's membership of ``{org}``; a non-member gets the same 404 as a missing org."""
    if org == APP_SHELL_ID:
        raise NotFound(f"organization {org!r} not found")
    role = await member_role(runtime, cache, caller.user_id, org)
    if role is None:
        raise NotFound(f"organization {org!r} not found")
    return Membership(caller, org, role)


Member = Annotated[Membership, Depends(require_member)]


async def require_admin(member: Member) -> Membership:
    if not member.is_admin:
        raise Forbidden(f"only admins of {member.organization_id!r} may do this")
    return member


Admin = Annotated[Membership, Depends(require_admin)]
