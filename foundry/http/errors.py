"""The one mapping from errors to HTTP responses: always ``{"error": code, "detail": sentence}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY
from starlette.routing import Match

from foundry import errors
from foundry.http.strict_body import BAD_JSON_SCOPE_KEY
from foundry.runtime.role import plain_message

log = logging.getLogger(__name__)

STATUS: dict[type[errors.FoundryError], int] = {
    errors.InvalidInput: 422,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.PayloadTooLarge: 413,
    errors.PaymentRequired: 402,
    errors.NotConfigured: 503,
    errors.RateLimited: 429,
    errors.CommandTimeout: 504,
    errors.ActorUnavailable: 503,
    errors.DriverError: 502,
    errors.CommandFailed: 500,
}

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "rate_limited",
}


def status_for(exc: errors.FoundryError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return 500


def error_body(code: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "detail": detail, **extra}


def _methods_for(request: Request, path: str | None = None) -> list[str]:
    """Every method some route of the app accepts on the request's path, or on ``path`` (HEAD
    wherever GET is)."""
    methods: set[str] = set()

    def walk(routes: Any, scope: dict[str, Any]) -> None:
        for route in routes:
            match, child = route.matches(scope)
            if match == Match.NONE:
                continue
            # An included router (FastAPI wraps each in ``original_router``): look inside.
            nested = getattr(getattr(route, "original_router", route), "routes", None)
            if nested is not None and not getattr(route, "methods", None):
                walk(nested, {**scope, **child})
            else:
                methods.update(getattr(route, "methods", None) or ())

    scope = {**request.scope, "method": "GET"}
    if path is not None:
        scope["path"] = path
    walk(request.app.router.routes, scope)
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def _did_you_mean(request: Request) -> str:
    """A hint for a path that differs from a route's only by a trailing slash or by case (routes
    are matched exactly: no redirect, which a client might not follow with its body)."""
    path = request.url.path
    candidates = [path.rstrip("/"), path.lower(), path.lower().rstrip("/")]
    for candidate in dict.fromkeys(c for c in candidates if c and c != path):
        if _methods_for(request, candidate):
            return f"; did you mean {candidate}?"
    return ""


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that render every failure as ``{"error","detail"}``."""

    @app.exception_handler(errors.FoundryError)
    async def _foundry(request: Request, exc: errors.FoundryError) -> JSONResponse:
        status = status_for(exc)
        if status >= 500:
            log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        extra: dict[str, Any] = {}
        if isinstance(exc, errors.InvalidInput) and exc.fields:
            extra["fields"] = exc.fields
        return JSONResponse(error_body(exc.code, exc.detail, **extra), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields: list[str] = []
        problems: list[str] = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ())]
            if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
                loc = loc[1:] if len(loc) > 1 else loc
            name = ".".join(loc) or "body"
            fields.append(name)
            problems.append(f"{name}: {plain_message(str(err.get('msg')))}")
        syntax = [e for e in exc.errors() if e.get("type") == "json_invalid"]
        bad_json = request.scope.get(BAD_JSON_SCOPE_KEY)
        if bad_json is not None:
            detail, fields = f"request body is not valid JSON: {bad_json}", ["body"]
        elif syntax:
            why = (syntax[0].get("ctx") or {}).get("error")
            detail = "request body is not valid JSON" + (f": {why}" if why else "")
            fields = ["body"]
        else:
            detail = "invalid request: " + "; ".join(problems)
        return JSONResponse(error_body("invalid_input", detail, fields=sorted(set(fields))), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}" + _did_you_mean(request)
        if exc.status_code == 413 and detail == "Content Too Large":
            # A body sent without Content-Length (chunked) found too large while being read: the same
            # sentence as one refused by its declared length.
            limit = request.scope.get(MAX_BODY_SIZE_SCOPE_KEY) or request.app.state.settings.max_body_bytes
            detail = f"request body is larger than the limit of {limit} bytes"
        headers = exc.headers
        if exc.status_code == 405:
            # Starlette names the methods of the first route that matched the path only; FastAPI
            # registers one route per method, so list every route's.
            allowed = _methods_for(request)
            headers = {**(headers or {}), "Allow": ", ".join(allowed)}
            detail = f"{request.method} is not allowed on {request.url.path}; use {' or '.join(allowed)}"
        return JSONResponse(error_body(code, detail), status_code=exc.status_code, headers=headers)

    # Anything else is answered by `foundry.http.unexpected.UnexpectedErrorsAsJson`, which (unlike an
    # ``Exception`` handler here) does not re-raise, so the connection survives.
