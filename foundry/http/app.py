"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from foundry import __version__
from foundry.config import Settings
from foundry.runtime.client import Runtime
from foundry.wiring import build_runtime

log = logging.getLogger(__name__)


def create_app(settings: Settings, runtime: Runtime | None = None) -> FastAPI:
    """A Foundry app for ``settings``; pass ``runtime`` to share one already started (tests)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = runtime is None
        rt = runtime or build_runtime(settings)
        if own:
            await rt.start()
        app.state.runtime = rt
        try:
            yield
        finally:
            if own:
                await rt.close()

    app = FastAPI(title="Foundry", version=__version__, lifespan=lifespan)
    app.state.settings = settings

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        """Readiness: the actor runtime answers within 5 s."""
        checks: dict[str, Any] = {}
        ok = True
        try:
            awake = await asyncio.wait_for(app.state.runtime.awake(), 5.0)
            checks["runtime"] = {"ok": True, "hosts": len(awake)}
        except Exception as exc:
            log.warning("readiness: runtime check failed: %s", exc)
            checks["runtime"] = {"ok": False, "detail": f"actor runtime not answering: {exc}"}
            ok = False
        return JSONResponse(
            {"status": "ready" if ok else "not_ready", "checks": checks}, status_code=200 if ok else 503
        )

    return app
