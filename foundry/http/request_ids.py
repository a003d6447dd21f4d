"""ASGI middleware: every HTTP request and websocket connection gets a request id.

The id is a proxy's ``X-Request-Id`` when it sent a sane one, else a fresh one; it is the current
request id (`foundry.request_id`) while the request runs, so every log line it causes, in this
process and in the hosts its actor calls reach, carries it; and HTTP answers name it in
``X-Request-Id``, so a user's bug report leads to the log lines.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from foundry import request_id

HEADER = b"x-request-id"


class RequestIds:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = next((v for k, v in scope.get("headers", []) if k == HEADER), None)
        rid = request_id.accept(incoming.decode("latin-1") if incoming is not None else None)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (HEADER, rid.encode())]
            await send(message)

        with request_id.bound(rid):
            await self.app(scope, receive, send_with_id)
