"""Sign-in with GitHub, sessions, sign-out and mock sign-in."""

from __future__ import annotations

import logging
from typing import Any

from authlib.integrations.base_client.errors import MismatchingStateError, OAuthError
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from foundry.auth.signin import SignedIn
from foundry.errors import DriverError, InvalidInput, NotFound, Unauthorized
from foundry.http.deps import (
    CookiesDep,
    CurrentCaller,
    OptionalCaller,
    RuntimeDep,
    SameSiteWrite,
    SettingsDep,
    SignInDep,
)
from foundry.http.strict_body import BODY_CONFIG, StrictJsonRoute

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/auth", tags=["auth"], route_class=StrictJsonRoute)
#: Mounted in mock mode only (`foundry.http.app`): elsewhere the route does not exist at all, so it
#: answers the router's 404 and is absent from the OpenAPI document.
mock_router = APIRouter(prefix="/v1/auth", tags=["auth"], route_class=StrictJsonRoute)

#: Repository access comes from the App's installation tokens, never from a user's ``repo`` scope.
GITHUB_SCOPES = "read:user user:email read:org"


def _client_info(request: Request) -> dict[str, Any]:
    return {
        "user_agent": request.headers.get("user-agent"),
        "ip_address": request.client.host if request.client else None,
    }


def _signed_in_response(response: Response, signed: SignedIn, cookies: Any, ttl_s: int) -> Response:
    # The server-side record decides expiry; the cookie just should not outlive it.
    cookies.issue(response, signed.user_id, signed.session_id, ttl_s)
    return response


@router.get("/sign-in/github", summary="Start GitHub sign-in (redirects to GitHub)")
async def sign_in_github(request: Request, settings: SettingsDep) -> Response:
    oauth = request.app.state.oauth
    if oauth is None:
        raise NotFound("GitHub sign-in is not configured on this server")
    redirect_uri = f"{settings.base_url}/v1/auth/callback/github"
    response: Response = await oauth.github.authorize_redirect(request, redirect_uri)
    return response


@router.get("/callback/github", summary="GitHub OAuth callback (idempotent for 60 s)")
async def callback_github(
    request: Request, settings: SettingsDep, cookies: CookiesDep, signin: SignInDep
) -> Response:
    oauth = request.app.state.oauth
    if oauth is None:
        raise NotFound("GitHub sign-in is not configured on this server")
    if request.query_params.get("error"):
        reason = request.query_params.get("error_description") or request.query_params["error"]
        raise Unauthorized(f"GitHub sign-in was refused: {reason}")
    state = request.query_params.get("state")
    if not state or not request.query_params.get("code"):
        raise InvalidInput("the callback needs both 'code' and 'state' query parameters", ["code", "state"])

    async def exchange() -> tuple[str, str]:
        try:
            token = await oauth.github.authorize_access_token(request)
        except MismatchingStateError as exc:
            # This browser did not start this sign-in (or its state cookie expired): no retry helps.
            log.warning("GitHub OAuth callback with a state this browser did not issue: %s", exc)
            raise Unauthorized("sign-in state does not match this browser; start the sign-in again") from exc
        except OAuthError as exc:
            # Typically bad_verification_code: the code was already used, e.g. by a retried callback
            # being completed in another process; SignInService then waits for that outcome.
            log.warning("GitHub OAuth code exchange failed: %s", exc)
            raise DriverError(
                f"GitHub refused the sign-in code: {exc.description or exc.error}", 401, "github"
            ) from exc
        if not token or "access_token" not in token:
            raise Unauthorized("GitHub returned no access token")
        return str(token["access_token"]), str(token.get("scope", ""))

    signed = await signin.complete_callback(state, exchange, **_client_info(request))
    response = RedirectResponse(
        settings.app_url.rstrip("/") + "/" if settings.app_url else "/", status_code=302
    )
    return _signed_in_response(response, signed, cookies, settings.auth.session_ttl_seconds)


class MockSignIn(BaseModel):
    model_config = BODY_CONFIG
    login: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9-]+$")


@mock_router.post(
    "/mock/sign-in", summary="Mock mode only: sign in as a seeded user", dependencies=[SameSiteWrite]
)
async def mock_sign_in(
    body: MockSignIn, request: Request, settings: SettingsDep, cookies: CookiesDep, signin: SignInDep
) -> Response:
    fake = request.app.state.fake_github
    if fake is None:  # mock mode with a real GitHub App configured: sign in through GitHub
        raise NotFound("mock sign-in exists only in mock mode without a GitHub App")
    try:
        code = fake.issue_oauth_code(body.login)
    except KeyError:
        raise NotFound(f"no seeded user {body.login!r}; try alice, bob or carol") from None
    token = await signin.github.exchange_oauth_code(code)
    signed = await signin.complete(token, "read:user,user:email,read:org", **_client_info(request))
    response = JSONResponse({"userId": signed.user_id, "expiresAt": signed.expires_at})
    return _signed_in_response(response, signed, cookies, settings.auth.session_ttl_seconds)


@router.get("/session", summary="The current session")
async def get_session(caller: CurrentCaller, runtime: RuntimeDep) -> dict[str, Any]:
    session: dict[str, Any] = await runtime.call(
        "user", caller.user_id, "get_session", {"sessionId": caller.session_id}
    )
    return session


@router.post("/sign-out", summary="Revoke the session and clear the cookie", dependencies=[SameSiteWrite])
async def sign_out(caller: OptionalCaller, runtime: RuntimeDep, cookies: CookiesDep) -> Response:
    """Idempotent: a second click, a retry after a lost answer or a session already revoked or
    expired elsewhere still answers 200 and clears the cookie (a 401 left the browser holding it)."""
    if caller is not None:
        await runtime.call("user", caller.user_id, "revoke_session", {"sessionId": caller.session_id})
    response = JSONResponse({"auth": {"status": "signed_out", "currentUserId": None}})
    cookies.clear(response)
    return response
