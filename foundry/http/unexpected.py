"""The last line of defence: an unexpected exception becomes a JSON 500 and the connection lives on.

Starlette's outermost `ServerErrorMiddleware` answers an unhandled exception and then *re-raises*
it, and uvicorn closes the keep-alive connection of any request whose app raised. A client pooling
connections then sees its next request on that socket fail too. This middleware sits just inside
it: it logs the exception with the request, answers ``{"error": "internal", "detail": …}`` (when
no response has started yet) and returns normally, so the connection stays usable.
"""

from __future__ import annotations

import json
import logging

from starlette.middleware.body_limit import _RequestBodyLimitResponseSent, _RequestBodyTooLarge
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: How Starlette's request body limit (outside this middleware) stops a request it has answered, or
#: is about to answer, with 413: control flow, not a crash. Logged as one would be a traceback per
#: oversized request, which any anonymous client could send.
_BODY_LIMIT_SIGNALS = (_RequestBodyLimitResponseSent, _RequestBodyTooLarge)

log = logging.getLogger(__name__)


class UnexpectedErrorsAsJson:
    """ASGI middleware: unhandled exceptions of HTTP requests → logged + JSON 500, never re-raised."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except _BODY_LIMIT_SIGNALS:
            log.info("%s %s: request body over the limit (413)", scope.get("method"), scope.get("path"))
            raise
        except Exception as exc:
            method, path = scope.get("method", "?"), scope.get("path", "?")
            log.exception("%s %s crashed", method, path)
            if started:
                # Part of a response went out: the only honest ending is to drop the connection.
                raise
            body = json.dumps(
                {"error": "internal", "detail": f"unexpected {type(exc).__name__}; see the server log"}
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
