"""Request bodies are parsed with `foundry.strict_json`, so a hostile body is a 422, never a 500.

FastAPI reads JSON bodies with ``request.json()`` and turns only `json.JSONDecodeError` into a
validation error; everything else Python's parser lets through (NaN, 20-digit integers, lone
surrogates) reaches the handlers and fails there. Every router of the API uses `StrictJsonRoute`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from foundry import strict_json


class StrictJsonRequest(Request):
    """A request whose ``json()`` is `strict_json.loads`; failures look like JSON syntax errors."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = strict_json.loads(body)
            except strict_json.BadJson as exc:
                # The one exception FastAPI maps to a 422 ``json_invalid`` error; the message is kept.
                raise json.JSONDecodeError(str(exc), "", 0) from None
        return self._json


class StrictJsonRoute(APIRoute):
    """An API route whose handler sees a `StrictJsonRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict_handler
