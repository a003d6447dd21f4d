"""Request bodies are parsed with `foundry.strict_json`, so a hostile body is a 422, never a 500.

FastAPI reads JSON bodies with ``request.json()`` and turns only `json.JSONDecodeError` into a
validation error; everything else Python's parser lets through (NaN, 20-digit integers, lone
surrogates) reaches the handlers and fails there. Every router of the API uses `StrictJsonRoute`.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from pydantic import ConfigDict

from foundry import strict_json

#: Every request body model's configuration: unknown fields are refused, fields are accepted by name
#: as well as alias, and values are not coerced (``"yes"`` or ``1`` is not a boolean, ``"5"`` not a
#: number): a client that sends the wrong type is told so rather than guessed at.
BODY_CONFIG = ConfigDict(extra="forbid", populate_by_name=True, strict=True)

#: Where `StrictJsonRequest` leaves why a body is not acceptable JSON, for the 422 handler.
BAD_JSON_SCOPE_KEY = "foundry.bad_json"


class StrictJsonRequest(Request):
    """A request whose ``json()`` is `strict_json.loads`, keys unique.

    A body that is not acceptable JSON is returned as its raw bytes, which no body model accepts,
    and the reason is left in the scope under `BAD_JSON_SCOPE_KEY`. Raising instead would make
    FastAPI answer 422 before it resolves the route's dependencies: a signed-out caller, or a member
    of another organization, would learn that the body was wrong before being told they may not
    ask at all. This way the body fails validation only once authentication and authorization have
    passed, and the 422 handler names the JSON problem.
    """

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = strict_json.loads(body, unique_keys=True)
            except strict_json.BadJson as exc:
                self.scope[BAD_JSON_SCOPE_KEY] = str(exc)
                self._json = bytes(body)
        return self._json


class StrictJsonRoute(APIRoute):
    """An API route whose handler sees a `StrictJsonRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict_handler
