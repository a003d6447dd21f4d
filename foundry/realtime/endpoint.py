"""The ``WS /v1/realtime`` endpoint: authenticate the connection, then hand it to the gateway.

An unauthenticated connection is *accepted* and then closed with code **4401** after an error frame
``{"op": "error", "error": "unauthorized", ...}``. Refusing before the handshake would surface in a
browser only as close code 1006 with no reason (the HTTP 403 of the failed handshake is invisible to
page scripts), indistinguishable from a network failure; 4401 lets the client tell "sign in again"
apart from "reconnect".
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

# Imported at module level on purpose: with postponed annotations FastAPI resolves the endpoint's
# `websocket: WebSocket` annotation from this module's globals, and if it cannot, it rejects every
# websocket with 403 and no message (measured with FastAPI 0.115: no log line says why).
from fastapi import WebSocket

from foundry.realtime import frames
from foundry.realtime.gateway import CLOSE_INTERNAL_ERROR, Authorize, RealtimeGateway

log = logging.getLogger(__name__)

#: ``authenticate(websocket)``: the signed-in user's id, or None. It should also check the
#: ``Origin`` header: browsers send cookies on cross-site websocket handshakes.
Authenticate = Callable[[WebSocket], Awaitable[str | None]]

#: Close code of a connection without a valid session (4000-4999 are for applications).
CLOSE_UNAUTHENTICATED = 4401


async def _refuse(websocket: WebSocket, code: int, error: str, detail: str) -> None:
    await websocket.accept()
    await websocket.send_text(frames.error(error, detail))
    await websocket.close(code)


def make_websocket_route(
    gateway: RealtimeGateway, authenticate: Authenticate, authorize: Authorize
) -> Callable[[WebSocket], Awaitable[None]]:
    """An async FastAPI websocket endpoint serving the realtime protocol through ``gateway``.

    Mount it with ``app.add_api_websocket_route("/v1/realtime", route)``.

    Args:
        gateway: the process's started `RealtimeGateway`.
        authenticate: resolves the connection's user (from the session cookie); None refuses it
            with close code 4401.
        authorize: ``authorize(user_id, topic)``, awaited on every subscribe.
    """

    async def realtime(websocket: WebSocket) -> None:
        """Realtime events over a websocket; see `foundry.realtime.gateway` for the frames."""
        try:
            user_id = await authenticate(websocket)
        except Exception:
            log.exception("realtime: authenticating a websocket from %s failed", websocket.client)
            await _refuse(websocket, CLOSE_INTERNAL_ERROR, "internal_error", "could not check your session")
            return
        if user_id is None:
            await _refuse(
                websocket,
                CLOSE_UNAUTHENTICATED,
                "unauthorized",
                "sign in first: this connection has no session",
            )
            return
        await websocket.accept()
        await gateway.serve(websocket, user_id, authorize)

    return realtime
