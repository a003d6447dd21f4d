"""Start-up work that the first requests would otherwise do while callers wait.

Measured on the Stripe webhook bench: the first delivery after start blocked the API process's event
loop for ~200 ms, and the ~30 deliveries that arrived meanwhile all waited behind it (a 260 ms
acknowledgement, then a tail of 50-80 ms ones). Two lazy steps made that block:

* FastAPI builds each router's route table (a pydantic field per parameter and response of every
  route) when the first request is matched, not when routes are added;
* the Stripe SDK imports its signature code on the first verification (~35 ms).

`warm_up` does both before the server takes traffic.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import Any

import stripe
from starlette.types import ASGIApp, Message

log = logging.getLogger(__name__)

#: A path that no route serves: matching it walks, and so builds, every router's route table.
_UNROUTED_PATH = "/v1/.warm-up"


async def warm_up(router: ASGIApp) -> None:
    """Build ``router``'s lazy state and load the code of the first requests. Logs, never raises: a
    cold start is slower, not broken."""
    started = time.perf_counter()
    try:
        await _match_every_route(router)
        _verify_a_stripe_signature()
    except Exception:
        log.exception("start-up warm-up failed; the first requests will be slower")
        return
    log.debug("warm-up took %.0f ms", (time.perf_counter() - started) * 1000)


async def _match_every_route(router: ASGIApp) -> None:
    # The router itself, not the app: no middleware, so no request id, metric or log line for a
    # request nobody made. Without an "app" in the scope, Starlette answers a plain 404.
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": _UNROUTED_PATH,
        "raw_path": _UNROUTED_PATH.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        return None

    await router(scope, receive, send)


def _verify_a_stripe_signature() -> None:
    secret = "whsec_warm_up"
    payload = '{"id": "evt_warm_up"}'
    timestamp = int(time.time())
    signature = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256).hexdigest()
    stripe.WebhookSignature.verify_header(payload, f"t={timestamp},v1={signature}", secret, 300)
