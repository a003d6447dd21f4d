"""The API's documentation: `/docs` and `/redoc` served offline, and the OpenAPI document's shared parts.

FastAPI's own documentation pages load Swagger UI and ReDoc from a CDN, so they stay blank on a
machine without internet access and tell a third party who reads the docs. The same files, pinned
through the ``fastapi-offline`` package (which exists to ship them), are served from ``/docs/static``.

The document also says what every client must know and FastAPI cannot infer: the session cookie is
the security scheme, and errors share one shape, ``{error, detail, fields?}`` (FastAPI's default 422
schema, ``{"detail": [...]}``, is not what Foundry answers).
"""

from __future__ import annotations

import importlib.resources
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, routing
from fastapi.dependencies.models import Dependant
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles

from foundry.config import Settings
from foundry.http.deps import optional_caller, require_caller, same_site_write

STATIC_URL = "/docs/static"
SECURITY_SCHEME = "sessionCookie"
ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "description": "Every error Foundry answers, whatever the status.",
    "required": ["error", "detail"],
    "properties": {
        "error": {"type": "string", "description": "A stable code, e.g. `not_found`, `invalid_input`."},
        "detail": {"type": "string", "description": "One sentence for a person."},
        "fields": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Invalid input only: the offending fields (`body`, `prompt`, `repoId`, …).",
        },
    },
}
ERROR_DESCRIPTIONS = {
    401: "Not signed in, or the session expired or was revoked.",
    403: "Refused: the caller's role does not allow it, or a cross-site write.",
    404: "No such resource, or one the caller may not see (the same answer for both).",
    409: "Conflicts with the resource's current state.",
    413: "The request body is too large.",
    422: "Invalid input; `fields` names what was wrong.",
}
_WRITES = {"POST", "PUT", "PATCH", "DELETE"}


def _static_dir() -> Path:
    return Path(str(importlib.resources.files("fastapi_offline") / "static"))


def _api_routes(app: FastAPI) -> Iterator[Any]:
    """Every API route as the OpenAPI generator sees it: with an included router's prefix and
    dependencies applied (FastAPI keeps included routers as nested entries of ``app.routes``)."""
    contexts = getattr(routing, "iter_route_contexts", None)
    routes: Iterable[Any] = contexts(app.routes) if contexts else app.routes
    for route in routes:
        if isinstance(getattr(route, "original_route", route), APIRoute) and route.include_in_schema:
            yield route


def _any(dependant: Dependant, test: Callable[[Dependant], bool]) -> bool:
    """Whether ``test`` holds for the dependant or any of its sub-dependencies."""
    return test(dependant) or any(_any(d, test) for d in dependant.dependencies)


def _uses(dependant: Dependant, call: Callable[..., Any]) -> bool:
    return _any(dependant, lambda d: d.call is call)


def _error_codes(route: Any, method: str) -> list[int]:
    """The common errors an operation can answer, judged from its dependencies and inputs."""
    signed_in = _uses(route.dependant, require_caller)
    codes = set()
    if signed_in:
        codes |= {401, 403, 404}
        if method in _WRITES:
            codes.add(409)
    if _uses(route.dependant, same_site_write):
        codes.add(403)
    path_params = _any(route.dependant, lambda d: bool(d.path_params))
    if path_params:
        codes.add(404)
    if route.body_field is not None:
        codes |= {413, 422}
    if path_params or _any(route.dependant, lambda d: bool(d.query_params)):
        codes.add(422)
    return sorted(codes)


def build_openapi(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """FastAPI's document plus the session cookie scheme and the shared error responses."""
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    components["securitySchemes"] = {
        SECURITY_SCHEME: {
            "type": "apiKey",
            "in": "cookie",
            "name": settings.auth.cookie_name,
            "description": "The session cookie set by sign-in (GitHub OAuth, or mock sign-in in mock mode).",
        }
    }
    error_ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for route in _api_routes(app):
        item = schema.get("paths", {}).get(route.path_format, {})
        for method in route.methods:
            operation = item.get(method.lower())
            if operation is None:
                continue
            if _uses(route.dependant, require_caller):
                operation["security"] = [{SECURITY_SCHEME: []}]
            elif _uses(route.dependant, optional_caller):
                operation["security"] = [{SECURITY_SCHEME: []}, {}]
            responses = operation.setdefault("responses", {})
            # FastAPI's generated 422 describes its own body, not the one Foundry sends: replaced.
            responses.pop("422", None)
            for code in _error_codes(route, method):
                error = {"description": ERROR_DESCRIPTIONS[code], "content": error_ref}
                responses.setdefault(str(code), error)
    # FastAPI's validation-error schemas are referenced by nothing any more.
    text = json.dumps(schema.get("paths", {}))
    for name in ("HTTPValidationError", "ValidationError"):
        if f"#/components/schemas/{name}" not in text:
            components["schemas"].pop(name, None)
    return schema


def install_docs(app: FastAPI, settings: Settings) -> None:
    """Serve ``/docs`` (Swagger UI), ``/redoc`` and their assets from this server, and the
    extended OpenAPI document. The app must be created with ``docs_url=None, redoc_url=None``."""
    app.mount(STATIC_URL, StaticFiles(directory=_static_dir()), name="docs-static")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} API",
            swagger_js_url=f"{root}{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC_URL}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} API",
            redoc_js_url=f"{root}{STATIC_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{STATIC_URL}/favicon.png",
            with_google_fonts=False,
        )
