"""Renders the framework's plain-text "413 Content Too Large" as Foundry's JSON error body.

FastAPI enforces ``max_body_size`` (Content-Length and streamed bodies alike) but answers in plain
text from inside Starlette; every error of this API is ``{"error", "detail"}``, so this rewrites it.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class JsonContentTooLarge:
    """ASGI middleware: a plain-text 413 becomes ``{"error":"payload_too_large","detail":…}``."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.body = json.dumps(
            {
                "error": "payload_too_large",
                "detail": f"request body is larger than the limit of {limit} bytes",
            }
        ).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rewriting = False

        async def wrapped_send(message: Message) -> None:
            nonlocal rewriting
            if message["type"] == "http.response.start" and message["status"] == 413:
                headers = dict(message.get("headers", []))
                if headers.get(b"content-type", b"").startswith(b"text/plain"):
                    rewriting = True
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 413,
                            "headers": [
                                (b"content-type", b"application/json"),
                                (b"content-length", str(len(self.body)).encode()),
                            ],
                        }
                    )
                    return
            if rewriting and message["type"] == "http.response.body":
                if not message.get("more_body", False):
                    await send({"type": "http.response.body", "body": self.body})
                return
            await send(message)

        await self.app(scope, receive, wrapped_send)
