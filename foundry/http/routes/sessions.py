"""Agent sessions of a task: open, message, stop, rename, close, read the transcript, drafts,
read marks and permission answers.

Split from the task routes (`foundry.http.routes.tasks`) by what they act on; both use the same
access steps (`foundry.http.routes.task_access`) and the same rules: the caller must be a member of
``{org}``, writes must be same-site, and the task must belong to ``{org}`` (else 404).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field

from actors.task.naming import MAX_PROMPT_CHARS, resolve_agent_model
from foundry.errors import NotFound
from foundry.http.deps import Member, RuntimeDep, SameSiteWrite
from foundry.http.idempotency import IdempotencyKey, command_id_for
from foundry.http.routes.task_access import (
    STRICT,
    SessionId,
    TaskId,
    check_prompt_target,
    gate_new_session_prompt,
    prompt_gate,
    task_command,
    task_key_of,
    task_of,
    user_state,
)
from foundry.http.strict_body import StrictJsonRoute
from foundry.http.text_fields import LABEL, PROMPT
from foundry.models_catalog import DEFAULT_MODEL
from foundry.strict_json import MAX_INT

router = APIRouter(prefix="/v1/organizations/{org}/tasks", tags=["tasks"], route_class=StrictJsonRoute)


# ------------------------------------------------------------------------------------------ bodies


class CreateSessionBody(BaseModel):
    model_config = STRICT
    agent: str | None = Field(default=None, min_length=1, max_length=50)
    model: str | None = Field(default=None, min_length=1, max_length=100)
    name: Annotated[str, Field(min_length=1, max_length=200), LABEL] | None = None
    prompt: Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS), PROMPT] | None = None


class MessageBody(BaseModel):
    model_config = STRICT
    text: Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS), PROMPT]


class RenameSessionBody(BaseModel):
    model_config = STRICT
    name: Annotated[str, Field(min_length=1, max_length=200), LABEL]


class DraftBody(BaseModel):
    model_config = STRICT
    # What the person is typing (may be empty); a NUL could never be sent, so it is not kept either.
    text: str = Field(max_length=MAX_PROMPT_CHARS, pattern=r"^[^\x00]*$")


class PermissionBody(BaseModel):
    model_config = STRICT
    #: One of the offered option ids; null answers "cancelled".
    option_id: str | None = Field(alias="optionId", max_length=200)


# ------------------------------------------------------------------------------------------ routes


@router.post(
    "/{taskId}/sessions", status_code=201, summary="Open an agent session", dependencies=[SameSiteWrite]
)
async def create_session(
    task_id: TaskId,
    member: Member,
    runtime: RuntimeDep,
    request: Request,
    body: CreateSessionBody | None = None,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    """201 with the new session. Sent again with the same ``Idempotency-Key``, it opens one session
    and repeats the first answer."""
    if body is not None and (body.agent is not None or body.model is not None):
        # An unknown agent or model is refused before anything happens: no seat, nothing materialized.
        resolve_agent_model(body.agent, body.model, DEFAULT_MODEL)
    if body is not None and body.prompt is not None:
        await gate_new_session_prompt(member, task_id, runtime)
    # Opening a session is a virtual PR task's first interaction: it is materialized here.
    key = await task_key_of(member, task_id, runtime, materialize=True)
    payload = (body or CreateSessionBody()).model_dump(by_alias=True, exclude_none=True)
    result: dict[str, Any] = await task_command(
        runtime,
        key,
        "create_session",
        payload | {"userId": member.caller.user_id},
        command_id=command_id_for(member.caller.user_id, request.url.path, idempotency_key),
    )
    await user_state(runtime, member, task_id, result["sessionId"], unread=False, makeActive=True)
    return result


@router.post(
    "/{taskId}/sessions/{sessionId}/messages",
    status_code=202,
    summary="Send a message (queued; runs when the agent is free)",
    dependencies=[SameSiteWrite],
)
async def send_message(
    task_id: TaskId,
    session_id: SessionId,
    body: MessageBody,
    member: Member,
    runtime: RuntimeDep,
    request: Request,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    """202 once the message is durably queued; the agent's answer streams on the session topic.
    409 when the session is closed or the task archived; 402 when the organization's plan refuses
    the prompt (``seat_limit``, ``billing_inactive``). Sent again with the same ``Idempotency-Key``
    (after an answer that never came, or a 503), it is queued once and the first answer repeated."""
    key = await task_key_of(member, task_id, runtime, session_id=session_id)
    await check_prompt_target(runtime, key, session_id)
    await prompt_gate(member, task_id, runtime)
    result: dict[str, Any] = await task_command(
        runtime,
        key,
        "send_message",
        {"sessionId": session_id, "text": body.text, "userId": member.caller.user_id},
        command_id=command_id_for(member.caller.user_id, request.url.path, idempotency_key),
    )
    await user_state(runtime, member, task_id, session_id, unread=False, draftText="", makeActive=True)
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
    key = await task_key_of(member, task_id, runtime, session_id=session_id)
    result: dict[str, Any] = await task_command(
        runtime, key, "stop_session", {"sessionId": session_id, "userId": member.caller.user_id}
    )
    return result


@router.patch("/{taskId}/sessions/{sessionId}", summary="Rename a session", dependencies=[SameSiteWrite])
async def rename_session(
    task_id: TaskId, session_id: SessionId, body: RenameSessionBody, member: Member, runtime: RuntimeDep
) -> dict[str, Any]:
    key = await task_key_of(member, task_id, runtime, session_id=session_id)
    result: dict[str, Any] = await task_command(
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
    key = await task_key_of(member, task_id, runtime, session_id=session_id)
    result: dict[str, Any] = await task_command(
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
    key, summary = await task_of(member, task_id, runtime, materialize=False)
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
    key, summary = await task_of(member, task_id, runtime, materialize=False)
    if summary.get("isVirtual"):
        raise NotFound(f"session {session_id!r} not found in this task")
    # A draft is a message not sent yet: only for a session that could still receive it.
    await check_prompt_target(runtime, key, session_id)
    return await user_state(runtime, member, task_id, session_id, draftText=body.text)


@router.post(
    "/{taskId}/sessions/{sessionId}/read",
    summary="Mark a session read for the caller",
    dependencies=[SameSiteWrite],
)
async def mark_read(
    task_id: TaskId, session_id: SessionId, member: Member, runtime: RuntimeDep
) -> dict[str, Any]:
    key, summary = await task_of(member, task_id, runtime, materialize=False)
    if summary.get("isVirtual"):
        raise NotFound(f"session {session_id!r} not found in this task")
    await runtime.call("task", key, "events", {"sessionId": session_id, "since": 0, "limit": 1})  # exists?
    return await user_state(runtime, member, task_id, session_id, unread=False, makeActive=True)


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
    key = await task_key_of(member, task_id, runtime, session_id=session_id)
    result: dict[str, Any] = await task_command(
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
