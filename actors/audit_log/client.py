"""How other code reaches an organization's audit log."""

from __future__ import annotations

from typing import Any

from foundry.runtime.client import Runtime

ROLE_NAME = "audit-log"


class AuditLogClient:
    """Typed access to the audit log of one organization."""

    def __init__(self, runtime: Runtime, organization_id: str) -> None:
        self._ref = runtime.actor(ROLE_NAME, organization_id)

    async def append(
        self,
        kind: str,
        payload: dict[str, Any] | None = None,
        *,
        repo_id: str | None = None,
        task_id: str | None = None,
        branch_name: str | None = None,
        actor_user_id: str | None = None,
        command_id: str | None = None,
    ) -> None:
        """Durably record an event (fire-and-forget: returns once the event is committed to the queue)."""
        await self._ref.send(
            "append",
            {
                "kind": kind,
                "payload": payload or {},
                "repoId": repo_id,
                "taskId": task_id,
                "branchName": branch_name,
                "actorUserId": actor_user_id,
            },
            command_id=command_id,
        )

    async def list(self, **filters: Any) -> list[dict[str, Any]]:
        """Events newest first; filters: repoId, taskId, branch, kind, limit, beforeId."""
        result: list[dict[str, Any]] = await self._ref.call("list", filters)
        return result
