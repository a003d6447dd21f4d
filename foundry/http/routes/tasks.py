"""Tasks: create, list, read, rename, archive, open a pull request, look at the sandbox's changes and
files, change the owner. Their agent sessions are `foundry.http.routes.sessions`.

Every route: the caller must be a member of ``{org}`` (else 404, as for a missing organization),
writes must be same-site, and the task must belong to ``{org}`` (its summary row is there; else 404).
A virtual PR-backed task is materialized by its first write; reads never create it.
Per-user state — unread, drafts, the active session — lives on the caller's user actor and is
merged into task detail here.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from actors.organization.task_list import TASK_STATUSES
from actors.task.naming import MAX_PROMPT_CHARS
from actors.task.provisional import provisional_detail
from foundry.errors import FoundryError, InvalidInput
from foundry.http import cached_reads
from foundry.http.deps import Member, RuntimeDep, SameSiteWrite
from foundry.http.idempotency import IdempotencyKey, command_id_for
from foundry.http.routes.task_access import (
    STRICT,
    TaskId,
    not_started,
    task_command,
    task_key_of,
    task_of,
)
from foundry.http.strict_body import StrictJsonRoute
from foundry.http.text_fields import LABEL, PROMPT
from foundry.runtime.client import Runtime

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/organizations/{org}/tasks", tags=["tasks"], route_class=StrictJsonRoute)


# ------------------------------------------------------------------------------------------ bodies


class CreateTaskBody(BaseModel):
    model_config = STRICT
    repo_id: str = Field(alias="repoId", min_length=1, max_length=40)
    prompt: Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS), PROMPT]
    title: Annotated[str, Field(min_length=1, max_length=300), LABEL] | None = None
    branch: str | None = Field(default=None, min_length=1, max_length=200)
    agent: str | None = Field(default=None, min_length=1, max_length=50)
    model: str | None = Field(default=None, min_length=1, max_length=100)


class RenameTaskBody(BaseModel):
    model_config = STRICT
    title: Annotated[str, Field(min_length=1, max_length=300), LABEL]


class ArchiveBody(BaseModel):
    model_config = STRICT
    force: bool = False


class PullRequestBody(BaseModel):
    model_config = STRICT
    title: Annotated[str, Field(min_length=1, max_length=300), LABEL] | None = None
    # Markdown for GitHub: newlines kept; a NUL is refused like anywhere else.
    body: str = Field(default="", max_length=60_000, pattern=r"^[^\x00]*$")
    draft: bool = False


class OwnerBody(BaseModel):
    model_config = STRICT
    user_id: str = Field(alias="userId", min_length=1, max_length=200)


# ------------------------------------------------------------------------------------------ helpers


def _merge_viewer(detail: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """Overlay the caller's own unread flags, drafts and active session (per viewer)."""
    mine = {s["sessionId"]: s for s in state.get("sessions", [])}
    for session in detail["sessions"]:
        own = mine.get(session["sessionId"], {})
        session["unread"] = bool(own.get("unread", False))
        session["draft"] = {"text": own.get("draftText", ""), "updatedAt": own.get("draftUpdatedAt")}
    open_ids = [s["sessionId"] for s in detail["sessions"] if s["status"] != "closed"]
    active = state.get("activeSessionId")
    detail["activeSessionId"] = active if active in open_ids else (open_ids[0] if open_ids else None)
    detail["unread"] = any(s["unread"] for s in detail["sessions"] if s["status"] != "closed")
    return detail


async def _pr_items(runtime: Runtime, org: str, summary: dict[str, Any]) -> list[dict[str, Any]] | None:
    pull = summary.get("pullRequest")
    if not pull:
        return None
    try:
        items: list[dict[str, Any]] = await runtime.call(
            "github-data", org, "pr_items", {"repoId": summary["repoId"], "number": pull["number"]}
        )
    except FoundryError as exc:
        log.info("no pull request items for %s#%s: %s", summary["repoId"], pull["number"], exc)
        return None
    return items


# ------------------------------------------------------------------------------------------ tasks


@router.post("", status_code=201, summary="Create a task", dependencies=[SameSiteWrite])
async def create_task(
    body: CreateTaskBody,
    member: Member,
    runtime: RuntimeDep,
    request: Request,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    """Returns ``{taskId, title, branchName}`` at once; the sandbox, the clone and the first turn
    (the prompt, queued until the agent is ready) follow in the background. The prompt takes the
    caller's seat on first use; 402 when the plan refuses it (``seat_limit``, ``billing_inactive``).
    Sent again with the same ``Idempotency-Key`` (after an answer that never came, or a 503), it
    creates one task and repeats the first answer."""
    payload = body.model_dump(by_alias=True, exclude_none=True) | {"userId": member.caller.user_id}
    org = member.organization_id
    result: dict[str, Any]
    if idempotency_key is None:
        # A direct action: a user's create never waits behind the organization's queued background
        # commands. A keyed create goes through the durable queue, which applies a command id once.
        result = await runtime.call("organization", org, "create_task", payload)
    else:
        command_id = command_id_for(member.caller.user_id, request.url.path, idempotency_key)
        result = await runtime.actor("organization", org).send(
            "create_task", payload, wait=True, timeout=15, command_id=command_id
        )
    return result


@router.get("", summary="List tasks: filtered, searched, newest change first, paged")
async def list_tasks(
    member: Member,
    runtime: RuntimeDep,
    status: Annotated[
        str | None,
        Query(
            max_length=100,
            description="Comma-separated statuses (virtual, queued, provisioning, running, idle, error, "
            "archived); archived tasks are listed only when named here",
        ),
    ] = None,
    repo_id: Annotated[str | None, Query(alias="repoId", max_length=200)] = None,
    owner: Annotated[str | None, Query(max_length=100, description="The owner's GitHub login")] = None,
    q: Annotated[
        str | None, Query(max_length=200, description="Words in the title, branch or PR title")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`nextCursor` of the previous page")
    ] = None,
) -> dict[str, Any]:
    """``{tasks: [summary…], nextCursor}``; ``nextCursor`` is null on the last page."""
    body: dict[str, Any] = {"limit": limit}
    if status:
        body["statuses"] = [s.strip() for s in status.split(",") if s.strip()]
        unknown = [s for s in body["statuses"] if s not in TASK_STATUSES]
        if unknown:
            raise InvalidInput(
                f"unknown status {unknown[0]!r:.60}; use {', '.join(TASK_STATUSES)}", ["status"]
            )
    for name, value in (("repoId", repo_id), ("ownerLogin", owner), ("query", q), ("cursor", cursor)):
        if value is not None:
            body[name] = value
    result: dict[str, Any] = await runtime.call("organization", member.organization_id, "list_tasks", body)
    return result


@router.get("/{taskId}", summary="Task detail with the caller's own unread/draft/active session")
async def get_task(task_id: TaskId, member: Member, runtime: RuntimeDep, request: Request) -> dict[str, Any]:
    org = member.organization_id
    # Summary, detail and the caller's own state come from this process's snapshot cache when it
    # holds them at the seqs the caller's writes reached; otherwise from the actors.
    _, summary = await task_of(member, task_id, runtime, materialize=False, cached=request)

    async def task_detail() -> dict[str, Any]:
        if summary.get("isVirtual"):
            # No task actor yet, and a read must not create one: the organization's row is the task.
            return provisional_detail(org, summary)
        return await cached_reads.task_detail(request, runtime, org, task_id)

    # Three actors, three independent reads once the organization has vouched for the task: asked
    # together, the request costs the slowest of them instead of their sum.
    detail, state, pr_items = await asyncio.gather(
        task_detail(),
        cached_reads.viewer_state(request, runtime, member.caller.user_id, org, task_id),
        _pr_items(runtime, org, summary),
    )
    # PR and CI state are mirrored from GitHub by the organization (the authority once a PR exists).
    if summary.get("pullRequest"):
        detail["pullRequest"] = summary["pullRequest"]
    detail["ciState"] = summary.get("ciState")
    detail["pullRequestItems"] = pr_items
    return _merge_viewer(detail, state)


@router.patch("/{taskId}", summary="Rename a task", dependencies=[SameSiteWrite])
async def rename_task(
    task_id: TaskId, body: RenameTaskBody, member: Member, runtime: RuntimeDep
) -> dict[str, Any]:
    key = await task_key_of(member, task_id, runtime, materialize=True)
    result: dict[str, Any] = await task_command(
        runtime, key, "rename", {"title": body.title, "userId": member.caller.user_id}
    )
    return result


@router.post(
    "/{taskId}/archive",
    summary="Archive a task (409 with unpushed work unless force)",
    dependencies=[SameSiteWrite],
)
async def archive_task(
    task_id: TaskId, member: Member, runtime: RuntimeDep, body: ArchiveBody | None = None
) -> dict[str, Any]:
    key = await task_key_of(member, task_id, runtime, materialize=True)
    force = body.force if body is not None else False
    result: dict[str, Any] = await runtime.call(
        "task", key, "archive", {"force": force, "reason": "user", "userId": member.caller.user_id}
    )
    return result


@router.post(
    "/{taskId}/pull-request",
    summary="Push the branch, then open a pull request",
    dependencies=[SameSiteWrite],
)
async def create_pull_request(
    task_id: TaskId, member: Member, runtime: RuntimeDep, body: PullRequestBody | None = None
) -> dict[str, Any]:
    # A virtual task's pull request exists already: 409, and nothing materialized.
    key = await task_key_of(member, task_id, runtime)
    payload = (body or PullRequestBody()).model_dump(by_alias=True, exclude_none=True)
    result: dict[str, Any] = await runtime.call(
        "task", key, "create_pull_request", payload | {"userId": member.caller.user_id}
    )
    return result


@router.get("/{taskId}/diff", summary="Changes in the sandbox, untracked files included")
async def get_diff(task_id: TaskId, member: Member, runtime: RuntimeDep) -> dict[str, Any]:
    key, summary = await task_of(member, task_id, runtime, materialize=False)
    if summary.get("isVirtual"):
        raise not_started(summary)
    result: dict[str, Any] = await runtime.call("task", key, "diff", {})
    return result


@router.get("/{taskId}/files", summary="File tree of the sandbox checkout")
async def get_files(task_id: TaskId, member: Member, runtime: RuntimeDep) -> dict[str, Any]:
    key, summary = await task_of(member, task_id, runtime, materialize=False)
    if summary.get("isVirtual"):
        raise not_started(summary)
    result: dict[str, Any] = await runtime.call("task", key, "files", {})
    return result


@router.post("/{taskId}/owner", summary="Make another member the task owner", dependencies=[SameSiteWrite])
async def change_owner(
    task_id: TaskId, body: OwnerBody, member: Member, runtime: RuntimeDep
) -> dict[str, Any]:
    # The task first (404 for one not in this organization, whatever the body says), without
    # making a virtual task real: the new owner may still be refused.
    await task_of(member, task_id, runtime, materialize=False)
    people: list[dict[str, Any]] = await runtime.call("organization", member.organization_id, "members")
    target = next((p for p in people if p["userId"] == body.user_id), None)
    if target is None:
        raise InvalidInput(
            f"user {body.user_id!r} is not a member of {member.organization_id!r}; "
            "only members can own tasks",
            ["userId"],
        )
    # Only once the request is sure to succeed: it may be a virtual task's first interaction.
    key = await task_key_of(member, task_id, runtime, materialize=True)
    result: dict[str, Any] = await task_command(
        runtime,
        key,
        "change_owner",
        {"ownerUserId": target["userId"], "ownerLogin": target["login"], "userId": member.caller.user_id},
    )
    return result
