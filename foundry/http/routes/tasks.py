"""Tasks and their agent sessions.

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

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception_type,
    stop_after_delay,
    wait_random_exponential,
)

from actors.task.naming import MAX_PROMPT_CHARS, split_task_key, task_key
from actors.task.provisional import provisional_detail
from actors.task.state import INIT_WAIT_S, TaskNotInitialized
from foundry.errors import Conflict, FoundryError, InvalidInput, NotFound
from foundry.http.deps import Member, Membership, RuntimeDep, SameSiteWrite
from foundry.http.strict_body import StrictJsonRoute
from foundry.runtime.client import Runtime
from foundry.strict_json import MAX_INT

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/organizations/{org}/tasks", tags=["tasks"], route_class=StrictJsonRoute)

_STRICT = ConfigDict(extra="forbid", populate_by_name=True)
TaskId = Annotated[str, Path(alias="taskId", min_length=1, max_length=100)]
SessionId = Annotated[str, Path(alias="sessionId", min_length=1, max_length=100)]


# ------------------------------------------------------------------------------------------ bodies


class CreateTaskBody(BaseModel):
    model_config = _STRICT
    repo_id: str = Field(alias="repoId", min_length=1, max_length=40)
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    title: str | None = Field(default=None, min_length=1, max_length=300)
    branch: str | None = Field(default=None, min_length=1, max_length=200)
    agent: str | None = Field(default=None, min_length=1, max_length=50)
    model: str | None = Field(default=None, min_length=1, max_length=100)


class RenameTaskBody(BaseModel):
    model_config = _STRICT
    title: str = Field(min_length=1, max_length=300)


class ArchiveBody(BaseModel):
    model_config = _STRICT
    force: bool = False


class PullRequestBody(BaseModel):
    model_config = _STRICT
    title: str | None = Field(default=None, min_length=1, max_length=300)
    body: str = Field(default="", max_length=60_000)
    draft: bool = False


class OwnerBody(BaseModel):
    model_config = _STRICT
    user_id: str = Field(alias="userId", min_length=1, max_length=200)


class CreateSessionBody(BaseModel):
    model_config = _STRICT
    agent: str | None = Field(default=None, min_length=1, max_length=50)
    model: str | None = Field(default=None, min_length=1, max_length=100)
    name: str | None = Field(default=None, min_length=1, max_length=200)
    prompt: str | None = Field(default=None, min_length=1, max_length=MAX_PROMPT_CHARS)


class MessageBody(BaseModel):
    model_config = _STRICT
    text: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)


class RenameSessionBody(BaseModel):
    model_config = _STRICT
    name: str = Field(min_length=1, max_length=200)


class DraftBody(BaseModel):
    model_config = _STRICT
    text: str = Field(max_length=MAX_PROMPT_CHARS)


class PermissionBody(BaseModel):
    model_config = _STRICT
    #: One of the offered option ids; null answers "cancelled".
    option_id: str | None = Field(alias="optionId", max_length=200)


# ------------------------------------------------------------------------------------------ helpers


async def _task_of(
    member: Membership, task_id: str, runtime: Runtime, *, materialize: bool = True
) -> tuple[str, dict[str, Any]]:
    """The task's actor key and its organization summary; 404 unless it belongs to ``{org}``.

    With ``materialize`` (writes), a virtual PR-backed task is materialized here: this is its first
    interaction. Reads never materialize: they must not create state.
    """
    org = member.organization_id
    summary: dict[str, Any] = await runtime.call("organization", org, "task_summary", {"taskId": task_id})
    if materialize and summary.get("isVirtual"):
        await runtime.actor("organization", org).send(
            "materialize_task", {"taskId": task_id, "userId": member.caller.user_id}, wait=True
        )
        summary["isVirtual"] = False
    return task_key(org, task_id), summary


async def _prompt_gate(member: Membership, task_id: str, runtime: Runtime) -> None:
    """Before a prompt reaches a task: the task must be this organization's (404), and the sender
    needs a seat and a plan that accepts prompts (402). The seat is taken inside the organization's
    serialized write, so a member's concurrent first prompts take one seat; a refusal changes nothing."""
    org = member.organization_id
    await runtime.call("organization", org, "task_summary", {"taskId": task_id})
    await runtime.call("organization", org, "ensure_seat", {"userId": member.caller.user_id})


def _not_started(summary: dict[str, Any]) -> Conflict:
    return Conflict(
        f"task {summary['taskId']!r} is a pull request nobody has opened a session on yet; "
        "open a session (or send a message) to start it"
    )


async def _task_command(runtime: Runtime, key: str, name: str, body: dict[str, Any]) -> Any:
    """Run a task command. The task exists (its organization row said so); if its ``initialize`` is
    still on the way (the organization's outbox delivers it just after creation), try again, and
    answer 409 if it is still not there: the task is being set up, it is not missing."""
    try:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(TaskNotInitialized),
            wait=wait_random_exponential(multiplier=0.01, max=0.2),
            stop=stop_after_delay(INIT_WAIT_S),
        ):
            with attempt:
                return await runtime.actor("task", key).send(name, body, wait=True, timeout=15)
    except RetryError:
        raise Conflict(
            f"task {split_task_key(key)[1]!r} is still being set up; try again in a moment"
        ) from None
    raise AssertionError("unreachable: every attempt returns or raises")


async def _user_state(
    runtime: Runtime, member: Membership, task_id: str, session_id: str, **changes: Any
) -> dict[str, Any]:
    body = {"organizationId": member.organization_id, "taskId": task_id, "sessionId": session_id, **changes}
    result: dict[str, Any] = await runtime.call("user", member.caller.user_id, "update_session_state", body)
    return result


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
async def create_task(body: CreateTaskBody, member: Member, runtime: RuntimeDep) -> dict[str, Any]:
    """Returns ``{taskId, title, branchName}`` at once; the sandbox, the clone and the first turn
    (the prompt, queued until the agent is ready) follow in the background. The prompt takes the
    caller's seat on first use; 402 when the plan refuses it (``seat_limit``, ``billing_inactive``)."""
    payload = body.model_dump(by_alias=True, exclude_none=True) | {"userId": member.caller.user_id}
    result: dict[str, Any] = await runtime.call(
        "organization", member.organization_id, "create_task", payload
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
            description="Comma-separated statuses (virtual, provisioning, running, idle, error, archived); "
            "archived tasks are listed only when named here",
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
    for name, value in (("repoId", repo_id), ("ownerLogin", owner), ("query", q), ("cursor", cursor)):
        if value is not None:
            body[name] = value
    result: dict[str, Any] = await runtime.call("organization", member.organization_id, "list_tasks", body)
    return result


@router.get("/{taskId}", summary="Task detail with the caller's own unread/draft/active session")
async def get_task(task_id: TaskId, member: Member, runtime: RuntimeDep) -> dict[str, Any]:
    key, summary = await _task_of(member, task_id, runtime, materialize=False)

    async def task_detail() -> dict[str, Any]:
        if summary.get("isVirtual"):
            # No task actor yet, and a read must not create one: the organization's row is the task.
            return provisional_detail(member.organization_id, summary)
        detail: dict[str, Any] = await runtime.call("task", key, "get")
        return detail

    # Three actors, three independent reads once the organization has vouched for the task: asked
    # together, the request costs the slowest of them instead of their sum.
    detail, state, pr_items = await asyncio.gather(
        task_detail(),
        runtime.call(
            "user",
            member.caller.user_id,
            "get_task_state",
            {"organizationId": member.organization_id, "taskId": task_id},
        ),
        _pr_items(runtime, member.organization_id, summary),
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
    key, _ = await _task_of(member, task_id, runtime)
    result: dict[str, Any] = await _task_command(
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
    key, _ = await _task_of(member, task_id, runtime)
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
    key, _ = await _task_of(member, task_id, runtime)
    payload = (body or PullRequestBody()).model_dump(by_alias=True, exclude_none=True)
    result: dict[str, Any] = await runtime.call(
        "task", key, "create_pull_request", payload | {"userId": member.caller.user_id}
    )
    return result


@router.get("/{taskId}/diff", summary="Changes in the sandbox, untracked files included")
async def get_diff(task_id: TaskId, member: Member, runtime: RuntimeDep) -> dict[str, Any]:
    key, summary = await _task_of(member, task_id, runtime, materialize=False)
    if summary.get("isVirtual"):
        raise _not_started(summary)
    result: dict[str, Any] = await runtime.call("task", key, "diff", {})
    return result


@router.get("/{taskId}/files", summary="File tree of the sandbox checkout")
async def get_files(task_id: TaskId, member: Member, runtime: RuntimeDep) -> dict[str, Any]:
    key, summary = await _task_of(member, task_id, runtime, materialize=False)
    if summary.get("isVirtual"):
        raise _not_started(summary)
    result: dict[str, Any] = await runtime.call("task", key, "files", {})
    return result


@router.post("/{taskId}/owner", summary="Make another member the task owner", dependencies=[SameSiteWrite])
async def change_owner(
    task_id: TaskId, body: OwnerBody, member: Member, runtime: RuntimeDep
) -> dict[str, Any]:
    key, _ = await _task_of(member, task_id, runtime)
    people: list[dict[str, Any]] = await runtime.call("organization", member.organization_id, "members")
    target = next((p for p in people if p["userId"] == body.user_id), None)
    if target is None:
        raise InvalidInput(
            f"user {body.user_id!r} is not a member of {member.organization_id!r}; "
            "only members can own tasks",
            ["userId"],
        )
    result: dict[str, Any] = await _task_command(
        runtime,
        key,
        "change_owner",
        {"ownerUserId": target["userId"], "ownerLogin": target["login"], "userId": member.caller.user_id},
    )
    return result


# ------------------------------------------------------------------------------------------ sessions


@router.post(
    "/{taskId}/sessions", status_code=201, summary="Open an agent session", dependencies=[SameSiteWrite]
)
async def create_session(
    task_id: TaskId, member: Member, runtime: RuntimeDep, body: CreateSessionBody | None = None
) -> dict[str, Any]:
    if body is not None and body.prompt is not None:
        await _prompt_gate(member, task_id, runtime)
    key, _ = await _task_of(member, task_id, runtime)
    payload = (body or CreateSessionBody()).model_dump(by_alias=True, exclude_none=True)
    result: dict[str, Any] = await _task_command(
        runtime, key, "create_session", payload | {"userId": member.caller.user_id}
    )
    await _user_state(runtime, member, task_id, result["sessionId"], unread=False, makeActive=True)
    return result


@router.post(
    "/{taskId}/sessions/{sessionId}/messages",
    status_code=202,
    summary="Send a message (queued; runs when the agent is free)",
    dependencies=[SameSiteWrite],
)
async def send_message(
    task_id: TaskId, session_id: SessionId, body: MessageBody, member: Member, runtime: RuntimeDep
) -> dict[str, Any]:
    """202 once the message is durably queued; the agent's answer streams on the session topic.
    409 when the session is closed or the task archived; 402 when the organization's plan refuses
    the prompt (``seat_limit``, ``billing_inactive``)."""
    await _prompt_gate(member, task_id, runtime)
    key, _ = await _task_of(member, task_id, runtime)
    result: dict[str, Any] = await _task_command(
        runtime,
        key,
        "send_message",
        {"sessionId": session_id, "text": body.text, "userId": member.caller.user_id},
    )
    await _user_state(runtime, member, task_id, session_id, unread=False, draftText="", makeActive=True)
    return result


@router.post(
    "/{taskId}/sessions/{sessionId}/stop",
    status_code=202,
    summary="Cancel the running turn (ACP session/cancel)",
    dependencies=[SameSiteWrite],
)
async def stop_session(
    task_id: TaskId, session_id: SessionId, member: Member, runtime: RuntimeDep
) -> dict[str, Any]:
    key, _ = await _task_of(member, task_id, runtime)
    result: dict[str, Any] = await _task_command(
        runtime, key, "stop_session", {"sessionId": session_id, "userId": member.caller.user_id}
    )
    return result


@router.patch("/{taskId}/sessions/{sessionId}", summary="Rename a session", dependencies=[SameSiteWrite])
async def rename_session(
    task_id: TaskId, session_id: SessionId, body: RenameSessionBody, member: Member, runtime: RuntimeDep
) -> dict[str, Any]:
    key, _ = await _task_of(member, task_id, runtime)
    result: dict[str, Any] = await _task_command(
        runtime,
        key,
        "rename_session",
        {"sessionId": session_id, "name": body.name, "userId": member.caller.user_id},
    )
    return result


@router.delete("/{taskId}/sessions/{sessionId}", summary="Close a session", dependencies=[SameSiteWrite])
async def close_session(
    task_id: TaskId, session_id: SessionId, member: Member, runtime: RuntimeDep
) -> dict[str, Any]:
    """The agent is shut down in the background (sandbox-agent's DELETE hangs while an agent runs;
    the workaround never blocks this request). The transcript stays readable."""
    key, _ = await _task_of(member, task_id, runtime)
    result: dict[str, Any] = await _task_command(
        runtime, key, "close_session", {"sessionId": session_id, "userId": member.caller.user_id}
    )
    return result


@router.get("/{taskId}/sessions/{sessionId}/events", summary="A page of the session transcript")
async def get_events(
    task_id: TaskId,
    session_id: SessionId,
    member: Member,
    runtime: RuntimeDep,
    since: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> dict[str, Any]:
    """Events with ``seq > since`` in order; page on with ``since=nextSince`` while ``more``."""
    key, summary = await _task_of(member, task_id, runtime, materialize=False)
    if summary.get("isVirtual"):
        raise NotFound(f"session {session_id!r} not found in this task")
    result: dict[str, Any] = await runtime.call(
        "task", key, "events", {"sessionId": session_id, "since": since, "limit": limit}
    )
    return result


@router.put(
    "/{taskId}/sessions/{sessionId}/draft", summary="Save the caller's draft", dependencies=[SameSiteWrite]
)
async def put_draft(
    task_id: TaskId, session_id: SessionId, body: DraftBody, member: Member, runtime: RuntimeDep
) -> dict[str, Any]:
    key, summary = await _task_of(member, task_id, runtime, materialize=False)
    if summary.get("isVirtual"):
        raise NotFound(f"session {session_id!r} not found in this task")
    await runtime.call("task", key, "events", {"sessionId": session_id, "since": 0, "limit": 1})  # exists?
    return await _user_state(runtime, member, task_id, session_id, draftText=body.text)


@router.post(
    "/{taskId}/sessions/{sessionId}/read",
    summary="Mark a session read for the caller",
    dependencies=[SameSiteWrite],
)
async def mark_read(
    task_id: TaskId, session_id: SessionId, member: Member, runtime: RuntimeDep
) -> dict[str, Any]:
    key, summary = await _task_of(member, task_id, runtime, materialize=False)
    if summary.get("isVirtual"):
        raise NotFound(f"session {session_id!r} not found in this task")
    await runtime.call("task", key, "events", {"sessionId": session_id, "since": 0, "limit": 1})  # exists?
    return await _user_state(runtime, member, task_id, session_id, unread=False, makeActive=True)


@router.post(
    "/{taskId}/sessions/{sessionId}/permissions/{requestId}",
    status_code=202,
    summary="Answer an agent's permission request",
    dependencies=[SameSiteWrite],
)
async def answer_permission(
    task_id: TaskId,
    session_id: SessionId,
    request_id: Annotated[str, Path(alias="requestId", min_length=1, max_length=100)],
    body: PermissionBody,
    member: Member,
    runtime: RuntimeDep,
) -> dict[str, Any]:
    key, _ = await _task_of(member, task_id, runtime)
    result: dict[str, Any] = await _task_command(
        runtime,
        key,
        "answer_permission",
        {
            "sessionId": session_id,
            "requestId": request_id,
            "optionId": body.option_id,
            "userId": member.caller.user_id,
        },
    )
    return result
