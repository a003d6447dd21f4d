"""Serves the browser dashboard: the built single-page app in ``foundry/dashboard/dist``.

The SPA is installed as the router's *fallback*, not as a route: it only sees requests that no API
route matched, fully or by path. So it can never shadow ``/v1/*``, ``/docs`` or the health checks,
and a wrong method on an API path still answers 405. Paths under the API's prefixes that match no
route keep the API's JSON 404.

- ``/assets/<name>-<hash>.<ext>``: content-hashed files, cached for a year (``immutable``); a
  pre-compressed ``.gz`` sibling is sent to clients that accept gzip.
- any other GET/HEAD path: ``index.html`` (``no-cache``), so deep links such as
  ``/o/acme/t/<taskId>`` load the app, which routes on the client.

``index.html`` gets a small JSON document (sign-in methods, the model catalog) injected once per
process, so the page needs no extra request before it can draw the sign-in screen.
"""

from __future__ import annotations

import json
import logging
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from foundry.models_catalog import MODEL_GROUPS

log = logging.getLogger(__name__)

#: Where ``npm run build`` (run by scripts/bootstrap.sh) writes the app.
DIST_DIR = Path(__file__).resolve().parent.parent / "dashboard" / "dist"
#: Paths the SPA never answers: they belong to the API and its documentation.
RESERVED_PREFIXES = ("/v1/", "/docs", "/redoc", "/openapi.json", "/healthz", "/readyz")
RESERVED_EXACT = frozenset({"/v1"})
CONFIG_MARKER = "<!--foundry-config-->"
NOT_BUILT_DETAIL = (
    "the dashboard is not built: run scripts/bootstrap.sh (or `npm ci && npm run build` in "
    "foundry/dashboard) and reload; the HTTP API works without it"
)
_IMMUTABLE = "public, max-age=31536000, immutable"
#: Agent output is untrusted: even if markup slipped through, no inline or foreign script may run.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: http: https:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


@dataclass(frozen=True)
class _Asset:
    body: bytes
    gzipped: bytes | None
    media_type: str


def reserved(path: str) -> bool:
    """True for paths of the API and its docs, which the SPA must never answer (in any case: a
    mistyped ``/V1/app`` gets the API's JSON 404, not a web page)."""
    path = path.lower()
    return path in RESERVED_EXACT or path.startswith(RESERVED_PREFIXES)


class DashboardSite:
    """The built app, read into memory on first use (it is a few hundred kilobytes)."""

    def __init__(self, dist: Path) -> None:
        self.dist = dist
        self._index: str | None = None
        self._assets: dict[str, _Asset] = {}
        self._config: str | None = None
        self._stamp: float | None = None

    @property
    def built(self) -> bool:
        return (self.dist / "index.html").is_file()

    def status(self) -> dict[str, Any]:
        """The readiness entry: the API does not need the dashboard, so this never fails readiness."""
        if self.built:
            return {"ok": True, "detail": f"served from {self.dist}"}
        return {"ok": False, "detail": NOT_BUILT_DETAIL}

    def _load(self) -> bool:
        # Re-read after a rebuild (index.html is rewritten last), so no restart is needed.
        try:
            stamp = (self.dist / "index.html").stat().st_mtime
        except OSError:
            self._index = None
            return False
        if self._index is not None and stamp == self._stamp:
            return True
        assets: dict[str, _Asset] = {}
        folder = self.dist / "assets"
        if folder.is_dir():
            for file in sorted(folder.iterdir()):
                if not file.is_file() or file.name.endswith(".gz"):
                    continue
                packed = file.with_name(file.name + ".gz")
                media = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
                if media.startswith("text/") or media.endswith("javascript"):
                    media += "; charset=utf-8"
                assets[file.name] = _Asset(
                    file.read_bytes(), packed.read_bytes() if packed.is_file() else None, media
                )
        self._assets = assets
        self._index = (self.dist / "index.html").read_text(encoding="utf-8")
        self._stamp = stamp
        log.info("dashboard: serving %d assets from %s", len(assets), self.dist)
        return True

    def page_config(self, app: Any) -> str:
        """The JSON the page reads from ``#foundry-config`` (computed once the lifespan has run)."""
        if self._config is None:
            state = app.state
            mock = getattr(state, "fake_github", None) is not None
            config = {
                "mockSignIn": mock,
                "githubSignIn": not mock and getattr(state, "oauth", None) is not None,
                "modelGroups": MODEL_GROUPS,
            }
            # `<` escaped: the JSON sits inside a <script> element and must not be able to close it.
            self._config = json.dumps(config).replace("<", "\\u003c")
        return self._config

    def index_response(self, app: Any) -> Response:
        if not self._load():
            return JSONResponse({"error": "dashboard_not_built", "detail": NOT_BUILT_DETAIL}, status_code=503)
        assert self._index is not None
        tag = f'<script id="foundry-config" type="application/json">{self.page_config(app)}</script>'
        return Response(
            self._index.replace(CONFIG_MARKER, tag),
            media_type="text/html; charset=utf-8",
            headers={
                "cache-control": "no-cache",
                "content-security-policy": _CSP,
                "x-content-type-options": "nosniff",
                "referrer-policy": "same-origin",
            },
        )

    def asset_response(self, name: str, accept_encoding: str) -> Response | None:
        if not self._load():
            return None
        asset = self._assets.get(name)
        if asset is None:
            return None
        headers = {
            "cache-control": _IMMUTABLE,
            "x-content-type-options": "nosniff",
            "vary": "accept-encoding",
        }
        if asset.gzipped is not None and "gzip" in accept_encoding:
            headers["content-encoding"] = "gzip"
            return Response(asset.gzipped, media_type=asset.media_type, headers=headers)
        return Response(asset.body, media_type=asset.media_type, headers=headers)


def install_dashboard(app: FastAPI, dist: Path = DIST_DIR) -> None:
    """Serve the dashboard from ``dist`` for every request that no API route matches."""
    site = DashboardSite(dist)
    app.state.dashboard = site
    not_found: ASGIApp = app.router.default

    async def fallback(scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD") or reserved(path):
            await not_found(scope, receive, send)
            return
        if path.startswith("/assets/"):
            headers = dict(scope.get("headers") or [])
            accept = headers.get(b"accept-encoding", b"").decode("latin-1")
            response = site.asset_response(path.removeprefix("/assets/"), accept)
            if response is None:
                # A missing hashed asset is a stale page or a typo: never answer it with index.html.
                await not_found(scope, receive, send)
                return
        else:
            response = site.index_response(scope["app"])
        await response(scope, receive, send)

    app.router.default = fallback
