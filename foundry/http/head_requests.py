"""``HEAD`` answers like ``GET`` without the body, on every route that has a ``GET``.

FastAPI registers exactly the methods a route declares, so ``HEAD /healthz`` was a 405; load
balancers and uptime checkers probe with ``HEAD``. Every ``GET`` of this API is a read (reads never
create state), so running it for a ``HEAD`` changes nothing; only the body is dropped, and the
headers (``content-length`` included) are those the ``GET`` would send.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    """ASGI middleware: a ``HEAD`` request is served as its ``GET``, minus the body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_headers_only)
