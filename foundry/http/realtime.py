"""Wiring of ``WS /v1/realtime``: session-cookie authentication and topic authorization."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from fastapi import FastAPI, WebSocket

from actors.task.naming import task_key
from foundry.auth.cookies import SessionCookies
from foundry.config import Settings
from foundry.errors import Conflict, InvalidInput, Unauthorized
from foundry.http.deps import authenticate
from foundry.ids import APP_SHELL_ID
from foundry.realtime.endpoint import make_websocket_route
from foundry.realtime.gateway import RealtimeGateway
from foundry.realtime.topics import TopicRegistry, standard_registry
from foundry.runtime.client import Runtime

log = logging.getLogger(__name__)


def build_registry() -> TopicRegistry:
    return standard_registry(task_key)


class RealtimeAccess:
    """Who may connect, and which topics they may subscribe to (checked server-side)."""

    def __init__(
        self, settings: Settings, runtime: Runtime, cookies: SessionCookies, registry: TopicRegistry
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.cookies = cookies
        self.registry = registry

    async def authenticate(self, websocket: WebSocket) -> str | None:
        """The user behind the session cookie; None for no session or a cross-site handshake.

        Browsers send cookies on cross-site websocket handshakes, so the Origin must be ours.
        """
        origin = websocket.headers.get("origin")
        if origin is not None:
            parts = urlsplit(origin)
            own = f"{websocket.url.scheme.replace('ws', 'http')}://{websocket.url.netloc}"
            allowed = {self.settings.base_url.rstrip("/"), own, *self.settings.auth.extra_origins}
            if f"{parts.scheme}://{parts.netloc}" not in allowed:
                log.warning("realtime: refused a cross-site handshake from %s", origin)
                return None
        try:
            caller = await authenticate(self.runtime, self.cookies, websocket)
        except Unauthorized:
            return None
        return caller.user_id

    async def authorize(self, user_id: str, topic: str) -> bool:
        """``app:<user>`` only for that user; organization, task and session topics for members.

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
        app = await self.runtime.call("user", user_id, "app_snapshot")
        if organization_id not in {o["id"] for o in app["organizations"]}:
            return False
        role = await self.runtime.call("organization", organization_id, "member_role", {"userId": user_id})
        if role.get("role") is None:
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


def mount_realtime(app: FastAPI) -> None:
    """Add ``WS /v1/realtime``; the gateway itself is started by the app's lifespan."""

    async def realtime(websocket: WebSocket) -> None:
        gateway: RealtimeGateway = websocket.app.state.gateway
        access: RealtimeAccess = websocket.app.state.realtime_access
        route = make_websocket_route(gateway, access.authenticate, access.authorize)
        await route(websocket)

    app.add_api_websocket_route("/v1/realtime", realtime)
