"""The app snapshot of the signed-in user and their choices."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from foundry.http import cached_reads
from foundry.http.deps import CurrentCaller, OptionalCaller, RuntimeDep, SameSiteWrite
from foundry.http.strict_body import BODY_CONFIG, StrictJsonRoute
from foundry.runtime.role import to_jsonable

router = APIRouter(prefix="/v1/app", tags=["app"], route_class=StrictJsonRoute)

SIGNED_OUT: dict[str, Any] = {
    "auth": {"status": "signed_out", "currentUserId": None},
    "user": None,
    "activeOrganizationId": None,
    "organizations": [],
    "organizationSync": {"status": "idle", "error": None, "syncedAt": None},
}


@router.get("", summary="The app snapshot (signed-out snapshot without a session)")
async def get_app(caller: OptionalCaller, runtime: RuntimeDep, request: Request) -> dict[str, Any]:
    if caller is None:
        return dict(SIGNED_OUT)
    return await cached_reads.app_snapshot(request, runtime, caller.user_id)


class ActiveOrganization(BaseModel):
    model_config = BODY_CONFIG
    organization_id: str | None = Field(alias="organizationId", max_length=200)


@router.post(
    "/active-organization", summary="Choose the organization the app opens", dependencies=[SameSiteWrite]
)
async def set_active_organization(
    body: ActiveOrganization, caller: CurrentCaller, runtime: RuntimeDep
) -> dict[str, Any]:
    result: dict[str, Any] = await runtime.call(
        "user", caller.user_id, "set_active_organization", to_jsonable(body.model_dump(by_alias=True))
    )
    return result


@router.post(
    "/organizations/refresh",
    status_code=202,
    dependencies=[SameSiteWrite],
    summary="Discover the user's GitHub organizations again (runs in the background)",
)
async def refresh_organizations(caller: CurrentCaller, runtime: RuntimeDep) -> dict[str, Any]:
    await runtime.actor("user", caller.user_id).send("discover_organizations", {})
    return {"status": "syncing"}
