"""Renders the framework's plain-text "413 Content Too Large" as Foundry's JSON error body.

FastAPI enforces ``max_body_size`` (Content-Length and streamed bodies alike) but answers in plain
text from inside Starlette; every error of this API is ``{"error", "detail"}``, so this rewrites it.
"""

from __future__ import annotations

import json

from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class JsonContentTooLarge:
    """ASGI middleware: a plain-text 413 becomes ``{"error":"payload_too_large","detail":…}``."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def _body(self, scope: Scope) -> bytes:
        # The route's own limit (webhooks accept more than the API) while Starlette still has it.
        limit = scope.get(MAX_BODY_SIZE_SCOPE_KEY) or self.limit
        detail = f"request body is larger than the limit of {limit} bytes"
        return json.dumps({"error": "payload_too_large", "detail": detail}).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rewriting = False
        body = b""

        async def wrapped_send(message: Message) -> None:
            nonlocal rewriting, body
            if message["type"] == "http.response.start" and message["status"] == 413:
                headers = dict(message.get("headers", []))
                if headers.get(b"content-type", b"").startswith(b"text/plain"):
                    rewriting = True
                    body = self._body(scope)
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 413,
                            "headers": [
                                (b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                            ],
                        }
                    )
                    return
            if rewriting and message["type"] == "http.response.body":
                if not message.get("more_body", False):
                    await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, wrapped_send)
