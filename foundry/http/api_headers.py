"""Headers every API answer carries: it is never sniffed as another type, and never cached.

API answers hold an organization's data (billing, transcripts, members): a shared cache or a
browser's back-forward cache must not keep them, and a JSON body must never be run as a script.
The dashboard's own pages set their headers where they are served.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_ADDED = ((b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store"))


class ApiHeaders:
    """Adds `nosniff` and `no-store` to every ``/v1/`` answer that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/v1/"):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in _ADDED if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
