"""How other code reaches github-data: sync requests, reconciliation, items and deliveries."""

from __future__ import annotations

import uuid
from typing import Any

from foundry.ids import APP_SHELL_ID
from foundry.runtime.client import Runtime

ROLE_NAME = "github-data"


class GitHubDataClient:
    """Typed access to one organization's GitHub cache (``organization_id`` ``app``: unrouted)."""

    def __init__(self, runtime: Runtime, organization_id: str) -> None:
        self._ref = runtime.actor(ROLE_NAME, organization_id)

    async def status(self) -> dict[str, Any]:
        """Sync state and row counts."""
        result: dict[str, Any] = await self._ref.call("status")
        return result

    async def pr_items(self, repo_id: str, number: int) -> list[dict[str, Any]]:
        """Reviews and comments of pull request ``number`` of ``repo_id``, oldest first."""
        result: list[dict[str, Any]] = await self._ref.call("pr_items", {"repoId": repo_id, "number": number})
        return result

    async def deliveries(self, limit: int = 50, status: str | None = None) -> list[dict[str, Any]]:
        """Recorded webhook deliveries, newest first."""
        body: dict[str, Any] = {"limit": limit}
        if status is not None:
            body["status"] = status
        result: list[dict[str, Any]] = await self._ref.call("deliveries", body)
        return result


async def start_installation_reconciliation(runtime: Runtime) -> None:
    """Ask github-data to rebuild the installation index from ``GET /app/installations``.

    Fire-and-forget (durable): called at server start; the work runs as a background job.
    """
    await runtime.send(
        ROLE_NAME, APP_SHELL_ID, "reconcile_installations", {}, command_id=f"reconcile:{uuid.uuid4().hex}"
    )
