"""GitHub: the webhook endpoint and a member's "sync now"."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from foundry import metrics
from foundry.config import Settings
from foundry.http.deps import Member, RuntimeDep, SameSiteWrite
from foundry.http.errors import error_body
from foundry.http.strict_body import StrictJsonRoute
from foundry.webhooks.github import MAX_WEBHOOK_BYTES, GitHubWebhookIngest, WebhookRejected

router = APIRouter(tags=["github"], route_class=StrictJsonRoute)


def _ingest(request: Request) -> GitHubWebhookIngest:
    """The process's ingest (it caches installation → organization), created on first use.

    Read from ``app.state`` rather than through FastAPI dependencies: sync dependencies run in a
    worker thread each, and at hundreds of deliveries per second those hops cost more CPU than the
    verification itself.
    """
    ingest: GitHubWebhookIngest | None = getattr(request.app.state, "github_webhooks", None)
    if ingest is None:
        settings: Settings = request.app.state.settings
        secret = settings.github.webhook_secret.get_secret_value().encode()
        ingest = GitHubWebhookIngest(request.app.state.runtime, secret, request.app.state.services.clock)
        request.app.state.github_webhooks = ingest
    return ingest


@router.post(
    "/v1/webhooks/github",
    status_code=202,
    summary="GitHub App webhook: verify, record, enqueue",
    max_body_size=MAX_WEBHOOK_BYTES,
    responses={
        400: {"description": "malformed signature, headers or JSON"},
        401: {"description": "missing or wrong X-Hub-Signature-256"},
        413: {"description": "body over GitHub's 25 MB cap"},
    },
)
async def github_webhook(request: Request) -> JSONResponse:
    """Acknowledge a delivery once it is durably queued; it is processed by the actors afterwards.

    A redelivery (same ``X-GitHub-Delivery``) is acknowledged again and has no second effect.
    """
    ingest = _ingest(request)
    body = await request.body()
    client = request.client.host if request.client else "?"
    try:
        result = await ingest.ingest(body, request.headers, client)
    except WebhookRejected as exc:
        metrics.WEBHOOKS_RECEIVED.labels("github", "rejected").inc()
        return JSONResponse(error_body(exc.code, exc.detail), status_code=exc.status)
    metrics.WEBHOOKS_RECEIVED.labels("github", "accepted").inc()
    return JSONResponse(result, status_code=202)


@router.post(
    "/v1/organizations/{org}/sync",
    status_code=202,
    summary="Resync repositories, members and pull requests from GitHub",
    dependencies=[SameSiteWrite],
)
async def sync_organization(member: Member, runtime: RuntimeDep) -> dict[str, Any]:
    """Queue a full sync (a running one runs once more when it ends); progress shows in the
    organization summary. 409 when the GitHub App is not connected."""
    await runtime.actor("organization", member.organization_id).send(
        "request_github_sync", {"actorUserId": member.caller.user_id}, wait=True
    )
    return {"status": "queued"}
