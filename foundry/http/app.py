"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp

from actors.github_data.client import start_installation_reconciliation
from actors.task.naming import task_key
from foundry import __version__
from foundry.auth.cookies import SessionCookies
from foundry.auth.signin import SignInService
from foundry.config import Settings
from foundry.drivers.sandbox.binary import check_binary
from foundry.errors import FoundryError
from foundry.github_app_check import GitHubAppCheck
from foundry.http.api_headers import ApiHeaders
from foundry.http.auth_cache import ORGANIZATION_ROLE, USER_ROLE, AuthCache
from foundry.http.body_limit import JsonContentTooLarge
from foundry.http.dashboard import install_dashboard
from foundry.http.errors import install_error_handlers
from foundry.http.head_requests import HeadAsGet
from foundry.http.openapi import install_docs
from foundry.http.read_your_writes import ReadYourWrites
from foundry.http.realtime import RealtimeAccess, build_registry, mount_realtime
from foundry.http.request_ids import RequestIds
from foundry.http.request_metrics import RequestMetrics
from foundry.http.routes import app as app_routes
from foundry.http.routes import auth as auth_routes
from foundry.http.routes import billing as billing_routes
from foundry.http.routes import github as github_routes
from foundry.http.routes import metrics as metrics_routes
from foundry.http.routes import organizations as organization_routes
from foundry.http.routes import sessions as session_routes
from foundry.http.routes import tasks as task_routes
from foundry.http.snapshot_cache import ROLES as SNAPSHOT_ROLES
from foundry.http.snapshot_cache import SnapshotCache
from foundry.http.unexpected import UnexpectedErrorsAsJson
from foundry.http.warmup import warm_up
from foundry.realtime.gateway import RealtimeGateway
from foundry.runtime import local_cluster_watch
from foundry.runtime.client import Runtime
from foundry.runtime.gc_policy import settle_long_lived
from foundry.services import build_services
from foundry.wiring import build_runtime

log = logging.getLogger(__name__)


class StartupRefused(RuntimeError):
    """Start-up stopped for a reason already logged in one line (`foundry.logging` keeps the
    framework from printing its traceback as well)."""


def _oauth_client(settings: Settings) -> Any:
    """The authlib client for GitHub sign-in (None when GitHub is not configured)."""
    if not settings.github.configured:
        return None
    from authlib.integrations.starlette_client import OAuth

    gh = settings.github
    oauth = OAuth()
    oauth.register(
        "github",
        client_id=gh.client_id,
        client_secret=gh.client_secret.get_secret_value(),
        authorize_url=f"{gh.web_url.rstrip('/')}/login/oauth/authorize",
        access_token_url=f"{gh.web_url.rstrip('/')}/login/oauth/access_token",
        api_base_url=gh.api_url.rstrip("/") + "/",
        client_kwargs={"scope": auth_routes.GITHUB_SCOPES},
    )
    return oauth


class _FoundryApp(FastAPI):
    """FastAPI whose outermost layer renders body-limit refusals as JSON like every other error."""

    def build_middleware_stack(self) -> ASGIApp:
        return JsonContentTooLarge(super().build_middleware_stack(), self.max_body_size or 0)


def create_app(
    settings: Settings, runtime: Runtime | None = None, fake_github: Any = None, fake_stripe: Any = None
) -> FastAPI:
    """A Foundry app for ``settings``.

    Pass ``runtime`` (and ``fake_github``) to share ones already started, as tests do; otherwise the
    lifespan builds them: in mock mode it first starts the seeded fake GitHub so that every process,
    Ray hosts included, is configured to talk to it.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal settings
        fake = fake_github
        if fake is None and settings.mode == "mock" and not settings.github.configured:
            from foundry.mock import start_fake_github

            fake, settings = start_fake_github(settings)
            log.info("mock mode: fake GitHub at %s", fake.base_url)
        own_runtime = runtime is None
        stripe_fake = fake_stripe
        if stripe_fake is None and own_runtime and settings.mode == "mock" and not settings.stripe.configured:
            # Before the runtime starts, so every host process gets the fake's address and keys.
            from foundry.mock import start_fake_stripe

            stripe_fake, settings = start_fake_stripe(settings)
            log.info("mock mode: fake Stripe at %s", stripe_fake.base_url)
        rt = runtime or build_runtime(settings)
        if own_runtime:
            try:
                await rt.start()
            except FoundryError as exc:
                # The sentence is the whole story (a setting to fix, a cluster that does not answer):
                # one line for the operator, not the framework's 70-line traceback of the lifespan.
                log.error("Foundry could not start: %s", exc.detail)
                raise StartupRefused(exc.detail) from None
        services = build_services(settings)
        app.state.settings = settings
        app.state.runtime = rt
        app.state.services = services
        app.state.fake_github = fake
        app.state.fake_stripe = stripe_fake
        app.state.oauth = _oauth_client(settings)
        app.state.cookies = SessionCookies(settings)
        app.state.signin = SignInService(settings, rt, services.drivers.get("github"), services.clock)
        registry = build_registry()
        app.state.gateway = RealtimeGateway(rt, registry)
        await app.state.gateway.start()
        # Sessions and memberships answered without an actor hop, kept honest by the same streams.
        # Expiry is judged by the actors' clock: an in-process runtime's own (tests inject one there).
        actor_clock = getattr(getattr(rt, "services", None), "clock", services.clock)
        app.state.auth_cache = AuthCache(rt, actor_clock)
        app.state.auth_cache.revocation_listeners.append(app.state.gateway.end_session)
        app.state.gateway.watch(USER_ROLE, app.state.auth_cache)
        app.state.gateway.watch(ORGANIZATION_ROLE, app.state.auth_cache)
        # Snapshots (app, task detail, task summaries, the caller's own task state) answered from
        # memory, fed by the same streams; writes through this process raise its floors at once.
        app.state.snapshot_cache = SnapshotCache(rt, task_key)
        for role in SNAPSHOT_ROLES:
            app.state.gateway.watch(role, app.state.snapshot_cache)
        rt.written.add(app.state.snapshot_cache.wrote)
        app.state.realtime_access = RealtimeAccess(
            settings, rt, app.state.cookies, registry, app.state.auth_cache
        )
        # In the background: a wrong App is logged at start-up without delaying it; /readyz reuses it.
        app.state.github_app_check = GitHubAppCheck(settings.github if settings.github.configured else None)
        app.state.github_app_check.start()
        if own_runtime and settings.github.configured:
            # Rebuild the installation index and recreate wiped organizations from GitHub.
            await start_installation_reconciliation(rt)
        await warm_up(app.router)
        if own_runtime:
            # Everything loaded at start-up lives as long as the process: keep it out of the cyclic
            # GC's scans, which otherwise add pauses to request latency under load.
            settle_long_lived()
        try:
            yield
        finally:
            rt.written.remove(app.state.snapshot_cache.wrote)
            await app.state.github_app_check.close()
            await app.state.gateway.close()
            if own_runtime:
                await rt.close()
            if fake is not None and fake_github is None:
                fake.stop()
            if stripe_fake is not None and fake_stripe is None:
                stripe_fake.stop()

    app = _FoundryApp(
        title="Foundry",
        version=__version__,
        lifespan=lifespan,
        max_body_size=settings.max_body_bytes,
        # Served by `install_docs` from this server's own copy of the assets, never a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    # A path with a trailing slash is not silently redirected (an empty-bodied 307 that a client may
    # not follow, or follow without its body): it gets the JSON 404 naming the path it meant.
    app.router.redirect_slashes = False
    install_error_handlers(app)
    # authlib keeps the OAuth state in this signed cookie (never in a database row that a retried
    # callback could find consumed).
    app.add_middleware(
        SessionMiddleware,
        secret_key=settings.effective_secret_key(),
        session_cookie="foundry_oauth",
        max_age=600,
        same_site="lax",
        https_only=settings.base_url.startswith("https://"),
    )
    # Inside the error middleware: the cookie of the seqs a request wrote (read-your-writes on any
    # API process).
    app.add_middleware(ReadYourWrites, secure=settings.base_url.startswith("https://"))
    # Added last, so it is the outermost of ours: nothing an endpoint or a middleware raises escapes
    # to Starlette's error middleware, which would close the keep-alive connection.
    app.add_middleware(UnexpectedErrorsAsJson)
    app.add_middleware(ApiHeaders)
    app.add_middleware(RequestMetrics)
    app.add_middleware(HeadAsGet)
    # Outermost: the crash log line above and the 500 it answers carry the request id too.
    app.add_middleware(RequestIds)
    mount_realtime(app, settings)
    app.include_router(auth_routes.router)
    if settings.mode == "mock":
        # Signs anyone in as a seeded user: it must not exist, nor be documented, anywhere else.
        app.include_router(auth_routes.mock_router)
    app.include_router(app_routes.router)
    app.include_router(organization_routes.router)
    app.include_router(github_routes.router)
    app.include_router(task_routes.router)
    app.include_router(session_routes.router)
    app.include_router(billing_routes.router)
    app.include_router(metrics_routes.router)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        """Readiness: the actor runtime answers within 5 s, ``sandbox-agent`` is installed, the
        sandbox isolation (``checks.isolation``: which one is active, and why not a stronger one)
        can start here, and the GitHub App (``checks.githubApp``) has the key, permissions and
        events Foundry needs."""
        checks: dict[str, Any] = {}
        ok = True
        try:
            if local_cluster_watch.problem is not None:
                # Hosts may still answer for a while after the head is gone; this process will not.
                raise ConnectionError(local_cluster_watch.problem)
            awake = await asyncio.wait_for(app.state.runtime.awake(), 5.0)
            checks["runtime"] = {"ok": True, "hosts": len(awake)}
        except Exception as exc:
            # A timeout has no message of its own: the reason must never be empty.
            why = str(exc) or (
                "no answer within 5 s" if isinstance(exc, TimeoutError) else type(exc).__name__
            )
            log.warning("readiness: runtime check failed: %s", why)
            checks["runtime"] = {"ok": False, "detail": f"actor runtime not answering: {why}"}
            ok = False
        # Tasks need the sandbox-agent binary; the detail names the fix (scripts/bootstrap.sh).
        binary = app.state.settings.sandbox.binary or None
        binary_ok, binary_detail = await asyncio.to_thread(check_binary, binary)
        checks["sandboxAgent"] = {"ok": binary_ok, "detail": binary_detail}
        ok = ok and binary_ok
        # Sandboxes are jailed unless `sandbox.isolation = none` was chosen; a jail that cannot start
        # here fails readiness like a missing binary, and the detail names what to install.
        isolation = await app.state.services.driver("sandbox").isolation()
        checks["isolation"] = isolation.as_json()
        ok = ok and isolation.ok
        # Checked against GitHub at most once a minute; the detail names what to fix.
        checks["githubApp"] = await app.state.github_app_check.status()
        ok = ok and checks["githubApp"]["ok"]
        # Reported, not required: the API serves without the browser dashboard.
        checks["dashboard"] = app.state.dashboard.status()
        return JSONResponse(
            {"status": "ready" if ok else "not_ready", "checks": checks}, status_code=200 if ok else 503
        )

    install_docs(app, settings)
    install_dashboard(app)  # last: it is the fallback for paths no API route matches
    return app
