"""``GET /metrics``: Prometheus text for the API process and every host process.

Off unless ``metrics_token`` is set (the figures span every organization); then the scraper sends it
as a bearer token.
"""

from __future__ import annotations

import hmac
import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from foundry import metrics
from foundry.http.errors import error_body
from foundry.http.strict_body import StrictJsonRoute

log = logging.getLogger(__name__)
router = APIRouter(route_class=StrictJsonRoute)

#: How long a scrape waits for one host process (a restarting one is left out, not waited for).
HOST_TIMEOUT_S = 5.0


@router.get(
    "/metrics",
    summary="Prometheus metrics (bearer token; off unless metrics_token is set)",
    responses={
        401: {"description": "missing or wrong bearer token"},
        404: {"description": "metrics are off"},
    },
)
async def prometheus_metrics(request: Request) -> Response:
    settings = request.app.state.settings
    token = settings.metrics_token.get_secret_value()
    if not token:
        return JSONResponse(
            error_body("not_found", "metrics are off; set FOUNDRY_METRICS_TOKEN to turn them on"),
            status_code=404,
        )
    sent = request.headers.get("authorization", "")
    if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
        return JSONResponse(
            error_body("unauthorized", "send the metrics token as 'Authorization: Bearer <token>'"),
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    gateway = getattr(request.app.state, "gateway", None)
    texts = {"api": metrics.local_exposition() + _realtime_exposition(gateway) + _cache_exposition(request)}
    texts.update(await _host_expositions(request.app.state.runtime))
    return Response(metrics.merged_exposition(texts), media_type=CONTENT_TYPE_LATEST)


async def _host_expositions(runtime: object) -> dict[str, str]:
    """Each host process's metrics (Ray backend); nothing extra in-process (one registry)."""
    collect = getattr(runtime, "process_metrics", None)
    if collect is None:
        return {}
    result: dict[str, str] = await collect(HOST_TIMEOUT_S)
    return result


def _realtime_exposition(gateway: object) -> str:
    """Websocket figures, read from the gateway at scrape time."""
    if gateway is None:
        return ""
    stats = gateway.stats()  # type: ignore[attr-defined]
    lines = [
        "# HELP foundry_websocket_connections Websocket connections open now.",
        "# TYPE foundry_websocket_connections gauge",
        f"foundry_websocket_connections {stats['sockets']}",
        "# HELP foundry_websocket_subscriptions Topic subscriptions of the open websockets.",
        "# TYPE foundry_websocket_subscriptions gauge",
        f"foundry_websocket_subscriptions {stats['subscriptions']}",
        "# HELP foundry_websocket_slow_consumers Websockets closed because they did not keep up.",
        "# TYPE foundry_websocket_slow_consumers counter",
        f"foundry_websocket_slow_consumers_total {stats['slow_consumers']}",
    ]
    return "\n".join(lines) + "\n"


#: Counters both API-process caches keep (`AuthCache.stats`, `SnapshotCache.stats`).
_CACHE_COUNTERS = ("hits", "misses", "behind", "fills", "refused_fills", "updates", "evictions")


def _cache_exposition(request: Request) -> str:
    """How the API process's session/membership and snapshot caches answer, read at scrape time."""
    caches = {
        name: getattr(request.app.state, attribute, None)
        for name, attribute in (("auth", "auth_cache"), ("snapshot", "snapshot_cache"))
    }
    stats = {name: cache.stats() for name, cache in caches.items() if cache is not None}
    if not stats:
        return ""
    lines = [
        "# HELP foundry_api_cache_answers_total Reads and fills of the API process's caches, by outcome"
        " (behind: an entry older than the caller's own write).",
        "# TYPE foundry_api_cache_answers_total counter",
    ]
    for name, figures in stats.items():
        for counter in _CACHE_COUNTERS:
            if counter in figures:
                labels = f'cache="{name}",outcome="{counter}"'
                lines.append(f"foundry_api_cache_answers_total{{{labels}}} {figures[counter]}")
    if "snapshot" in stats:
        lines += [
            "# HELP foundry_api_snapshot_cache_bytes JSON bytes the snapshot cache holds.",
            "# TYPE foundry_api_snapshot_cache_bytes gauge",
            f"foundry_api_snapshot_cache_bytes {stats['snapshot']['bytes']}",
        ]
    return "\n".join(lines) + "\n"
