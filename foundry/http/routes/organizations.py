"""Organization snapshot, settings, members, audit log and agent credentials; every route checks
membership."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field

from actors.organization.agent_credentials import MAX_VALUE_CHARS, check_name, check_value
from foundry.http.deps import Admin, Member, RuntimeDep, SameSiteWrite
from foundry.http.strict_body import BODY_CONFIG, StrictJsonRoute
from foundry.http.text_fields import LABEL, SECRET
from foundry.logging import redact_value
from foundry.strict_json import MAX_INT

router = APIRouter(prefix="/v1/organizations/{org}", tags=["organizations"], route_class=StrictJsonRoute)


@router.get("", summary="Organization snapshot")
async def get_organization(member: Member, runtime: RuntimeDep) -> dict[str, Any]:
    # Billing details (invoices, payment method, seat holders) are for admins, as on `…/billing`.
    result: dict[str, Any] = await runtime.call(
        "organization", member.organization_id, "get", {"billingDetails": member.is_admin}
    )
    result["viewerRole"] = member.role
    return result


class SettingsPatch(BaseModel):
    model_config = BODY_CONFIG
    display_name: Annotated[str, Field(min_length=1, max_length=200), LABEL] | None = Field(
        default=None, alias="displayName"
    )
    default_model: str | None = Field(default=None, alias="defaultModel", min_length=1, max_length=100)


@router.patch("/settings", summary="Change settings (admins)", dependencies=[SameSiteWrite])
async def patch_settings(body: SettingsPatch, admin: Admin, runtime: RuntimeDep) -> dict[str, Any]:
    payload = body.model_dump(by_alias=True, exclude_none=True)
    payload["actorUserId"] = admin.caller.user_id
    result: dict[str, Any] = await runtime.actor("organization", admin.organization_id).send(
        "update_settings", payload, wait=True
    )
    return result


@router.get("/members", summary="Members with their GitHub roles")
async def get_members(member: Member, runtime: RuntimeDep) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = await runtime.call("organization", member.organization_id, "members")
    return result


@router.get("/audit-log", summary="Audit events, newest first")
async def get_audit_log(
    member: Member,
    runtime: RuntimeDep,
    repo_id: Annotated[str | None, Query(alias="repoId", max_length=200)] = None,
    task_id: Annotated[str | None, Query(alias="taskId", max_length=200)] = None,
    branch: Annotated[str | None, Query(max_length=300)] = None,
    kind: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: Annotated[int | None, Query(alias="beforeId", ge=1, le=MAX_INT)] = None,
) -> list[dict[str, Any]]:
    filters = {
        "repoId": repo_id,
        "taskId": task_id,
        "branch": branch,
        "kind": kind,
        "limit": limit,
        "beforeId": before_id,
    }
    body = {k: v for k, v in filters.items() if v is not None}
    # Billing and agent-credential events are for admins (a member sees neither elsewhere).
    body["adminView"] = member.is_admin
    result: list[dict[str, Any]] = await runtime.call("audit-log", member.organization_id, "list", body)
    return result


# ---- agent credentials: provider API keys for this organization's agents (admins) -------------

CredentialName = Annotated[str, Path(min_length=1, max_length=100)]


class CredentialBody(BaseModel):
    model_config = BODY_CONFIG
    value: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_VALUE_CHARS,
            description="the secret; never returned, never logged; visible characters and spaces only",
        ),
        SECRET,
    ]


@router.get("/agent-credentials", summary="Agent credentials set (admins; never the values)")
async def list_agent_credentials(admin: Admin, runtime: RuntimeDep) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = await runtime.call(
        "organization", admin.organization_id, "agent_credentials"
    )
    return result


@router.put(
    "/agent-credentials/{name}",
    summary="Set an agent credential (admins)",
    status_code=204,
    dependencies=[SameSiteWrite],
)
async def set_agent_credential(
    name: CredentialName, body: CredentialBody, admin: Admin, runtime: RuntimeDep
) -> Response:
    """Reaches the agents of sandboxes started afterwards; a running sandbox keeps its environment."""
    # This process saw the value: its log lines must never show it either.
    redact_value(body.value)
    check_name(name)
    check_value(body.value)
    await runtime.call(
        "organization",
        admin.organization_id,
        "set_agent_credential",
        {"name": name, "value": body.value, "actorUserId": admin.caller.user_id},
    )
    return Response(status_code=204)


@router.delete(
    "/agent-credentials/{name}",
    summary="Remove an agent credential (admins)",
    status_code=204,
    dependencies=[SameSiteWrite],
)
async def remove_agent_credential(name: CredentialName, admin: Admin, runtime: RuntimeDep) -> Response:
    check_name(name)
    await runtime.call(
        "organization",
        admin.organization_id,
        "remove_agent_credential",
        {"name": name, "actorUserId": admin.caller.user_id},
    )
    return Response(status_code=204)
