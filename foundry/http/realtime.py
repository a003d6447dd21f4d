"""Wiring of ``WS /v1/realtime``: session-cookie authentication and topic authorization."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import HTMLResponse

from actors.task.naming import task_key
from foundry import __version__
from foundry.auth.cache_events import session_digest
from foundry.auth.cookies import SessionCookies
from foundry.config import Settings
from foundry.errors import Conflict, InvalidInput, Unauthorized
from foundry.http.auth_cache import AuthCache
from foundry.http.deps import authenticate, member_role, origin_of
from foundry.ids import APP_SHELL_ID
from foundry.realtime.asyncapi import build_asyncapi
from foundry.realtime.asyncapi_page import render_page
from foundry.realtime.endpoint import make_websocket_route
from foundry.realtime.gateway import RealtimeGateway
from foundry.realtime.topics import TopicRegistry, standard_registry
from foundry.runtime.client import Runtime

log = logging.getLogger(__name__)


#: Topic kinds only an organization's admins may subscribe to.
ADMIN_TOPICS = frozenset({"billing"})


def build_registry() -> TopicRegistry:
    return standard_registry(task_key)


class RealtimeAccess:
    """Who may connect, and which topics they may subscribe to (checked server-side)."""

    def __init__(
        self,
        settings: Settings,
        runtime: Runtime,
        cookies: SessionCookies,
        registry: TopicRegistry,
        auth_cache: AuthCache | None = None,
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.cookies = cookies
        self.registry = registry
        self.auth_cache = auth_cache

    async def authenticate(self, websocket: WebSocket) -> str | None:
        """The user behind the session cookie; None for no session or a cross-site handshake.

        Browsers send cookies on cross-site websocket handshakes, so the Origin must be ours.
        """
        origin = websocket.headers.get("origin")
        if origin is not None:
            own = f"{websocket.url.scheme.replace('ws', 'http')}://{websocket.url.netloc}"
            allowed = {self.settings.base_url.rstrip("/"), own, *self.settings.auth.extra_origins}
            if origin_of(origin) not in allowed:
                log.warning("realtime: refused a cross-site handshake from %r", origin[:200])
                return None
        try:
            caller = await authenticate(self.runtime, self.cookies, websocket)
        except Unauthorized:
            return None
        # Signing this session out closes the socket (`RealtimeGateway.end_session`).
        websocket.state.session_digest = session_digest(caller.session_id)
        return caller.user_id

    async def authorize(self, user_id: str, topic: str) -> bool:
        """``app:<user>`` only for that user; organization, task and session topics for members;
        ``billing:<org>`` (invoices, payment method, seat holders) for admins of the organization,
        as ``GET …/billing`` is.

        Task and session topics also need a task the organization lists: the owner of the topic is
        woken only after that (a made-up task id must never create a task database).

        Raises:
            NotFound: the organization lists no such task.
            Conflict: the task is a pull request nobody has started yet (it has no actor to read).
        """
        try:
            route = self.registry.resolve(topic)
        except InvalidInput:
            return False
        if route.role == "user":
            return route.key == user_id
        organization_id = route.ids[0]
        if organization_id == APP_SHELL_ID:
            return False
        role = await member_role(self.runtime, self.auth_cache, user_id, organization_id)
        if role is None:
            return False
        if route.topic.partition(":")[0] in ADMIN_TOPICS and role != "admin":
            return False
        if route.role == "task":
            summary = await self.runtime.call(
                "organization", organization_id, "task_summary", {"taskId": route.ids[1]}
            )
            if summary.get("isVirtual"):
                raise Conflict(
                    f"task {route.ids[1]!r} is a pull request nobody has opened a session on yet; "
                    f"follow it on organization:{organization_id} until it starts"
                )
        return True


ASYNCAPI_URL = "/v1/realtime/asyncapi.json"
ASYNCAPI_PAGE_URL = "/docs/realtime"
DOCS_LINK = (
    "The realtime websocket `WS /v1/realtime` is documented as AsyncAPI 3.0: "
    f"[{ASYNCAPI_URL}]({ASYNCAPI_URL}), readable at [{ASYNCAPI_PAGE_URL}]({ASYNCAPI_PAGE_URL})."
)


def mount_realtime(app: FastAPI, settings: Settings) -> None:
    """Add ``WS /v1/realtime`` and its documentation (the AsyncAPI document and its page, linked
    from the OpenAPI description); the gateway itself is started by the app's lifespan."""
    document = build_asyncapi(
        version=__version__, base_url=settings.base_url, cookie_name=settings.auth.cookie_name
    )
    # Public like /openapi.json: it describes the protocol, not anyone's data.
    app.description = f"{app.description}\n\n{DOCS_LINK}".strip()

    @app.get(ASYNCAPI_URL, tags=["realtime"], summary="The realtime websocket protocol (AsyncAPI 3.0)")
    async def asyncapi() -> dict[str, Any]:
        """The AsyncAPI 3.0 document of ``WS /v1/realtime``: every frame, both ways, with its schema."""
        return document

    @app.get(ASYNCAPI_PAGE_URL, include_in_schema=False)
    async def asyncapi_page(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return HTMLResponse(render_page(document, json_url=f"{root}{ASYNCAPI_URL}", docs_url=f"{root}/docs"))

    async def realtime(websocket: WebSocket) -> None:
        gateway: RealtimeGateway = websocket.app.state.gateway
        access: RealtimeAccess = websocket.app.state.realtime_access
        route = make_websocket_route(gateway, access.authenticate, access.authorize)
        await route(websocket)

    app.add_api_websocket_route("/v1/realtime", realtime)
