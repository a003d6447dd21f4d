"""What every task and session route does before it reaches the task: find the task in the caller's
organization, gate prompts on seats and billing, run a task command, and update the caller's own
session state.

Split from the routes (`foundry.http.routes.tasks`, `foundry.http.routes.sessions`) because both
sets of routes go through exactly these steps, and the rules they keep (404 outside ``{org}``, reads
never materialize a virtual task, 409 while a new task is still being set up) are easier to check
in one place.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from weakref import WeakKeyDictionary

from fastapi import Path
from starlette.requests import HTTPConnection
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception_type,
    stop_after_delay,
    wait_random_exponential,
)

from actors.task.naming import split_task_key, task_key
from actors.task.state import INIT_WAIT_S, TaskNotInitialized
from foundry.errors import Conflict, NotFound
from foundry.http import cached_reads
from foundry.http.deps import Membership
from foundry.http.strict_body import BODY_CONFIG
from foundry.runtime.client import Runtime

#: Request bodies refuse unknown fields and accept field names as well as their aliases.
STRICT = BODY_CONFIG
TaskId = Annotated[str, Path(alias="taskId", min_length=1, max_length=100)]
SessionId = Annotated[str, Path(alias="sessionId", min_length=1, max_length=100)]

#: Tasks that exist, materialized, in their organization, remembered per runtime. A task is never
#: deleted nor moved to another organization, so once its organization has vouched for it a write
#: needs no second organization call to find it (two, for a message: the prompt gate asked too).
MAX_KNOWN_TASKS = 100_000
_known_tasks: WeakKeyDictionary[Runtime, OrderedDict[tuple[str, str], None]] = WeakKeyDictionary()


async def task_of(
    member: Membership,
    task_id: str,
    runtime: Runtime,
    *,
    materialize: bool = True,
    cached: HTTPConnection | None = None,
) -> tuple[str, dict[str, Any]]:
    """The task's actor key and its organization summary; 404 unless it belongs to ``{org}``.

    With ``materialize`` (writes), a virtual PR-backed task is materialized here: this is its first
    interaction. Reads never materialize: they must not create state. A read may pass its request as
    ``cached`` to take the summary from the snapshot cache.
    """
    org = member.organization_id
    summary: dict[str, Any]
    if cached is not None and not materialize:
        summary = await cached_reads.task_summary(cached, runtime, org, task_id)
    else:
        summary = await runtime.call("organization", org, "task_summary", {"taskId": task_id})
    if materialize and summary.get("isVirtual"):
        await runtime.actor("organization", org).send(
            "materialize_task", {"taskId": task_id, "userId": member.caller.user_id}, wait=True
        )
        summary["isVirtual"] = False
    if not summary.get("isVirtual"):
        _remember(runtime, org, task_id)
    return task_key(org, task_id), summary


async def task_key_of(
    member: Membership,
    task_id: str,
    runtime: Runtime,
    *,
    session_id: str | None = None,
    materialize: bool = False,
) -> str:
    """The task's actor key for a write: 404 unless the task is ``{org}``'s (asked of the
    organization once per process).

    A virtual PR task is materialized (``materialize``) only by a write that succeeds on it: opening
    a session, renaming, archiving, handing it over; the first of them makes it a task. A write that
    can only fail on it finds none and changes nothing: it has no session yet (404 for
    ``session_id``) and its pull request exists already (409). A refused request must not have
    created the task and made its sender the owner.
    """
    if _is_known(runtime, member.organization_id, task_id):
        return task_key(member.organization_id, task_id)
    key, summary = await task_of(member, task_id, runtime, materialize=materialize)
    if summary.get("isVirtual"):
        if session_id is not None:
            raise NotFound(f"session {session_id!r} not found in this task")
        raise not_started(summary)
    return key


async def prompt_gate(member: Membership, task_id: str, runtime: Runtime) -> None:
    """Before a prompt reaches a task: the task must be this organization's (404), and the sender
    needs a seat and a plan that accepts prompts (402). The seat is taken inside the organization's
    serialized write, so a member's concurrent first prompts take one seat; a refusal changes nothing."""
    org = member.organization_id
    if not _is_known(runtime, org, task_id):
        summary = await runtime.call("organization", org, "task_summary", {"taskId": task_id})
        if not summary.get("isVirtual"):
            _remember(runtime, org, task_id)
    await runtime.call("organization", org, "ensure_seat", {"userId": member.caller.user_id})


def _is_known(runtime: Runtime, organization_id: str, task_id: str) -> bool:
    known = _known_tasks.get(runtime)
    if known is None or (organization_id, task_id) not in known:
        return False
    known.move_to_end((organization_id, task_id))
    return True


def _remember(runtime: Runtime, organization_id: str, task_id: str) -> None:
    known = _known_tasks.setdefault(runtime, OrderedDict())
    known[(organization_id, task_id)] = None
    known.move_to_end((organization_id, task_id))
    if len(known) > MAX_KNOWN_TASKS:
        known.popitem(last=False)


def not_started(summary: dict[str, Any]) -> Conflict:
    return Conflict(
        f"task {summary['taskId']!r} is a pull request nobody has opened a session on yet; "
        "open a session on it to start it"
    )


async def task_command(
    runtime: Runtime, key: str, name: str, body: dict[str, Any], *, command_id: str | None = None
) -> Any:
    """Run a task command. The task exists (its organization row said so); if its ``initialize`` is
    still on the way (the organization's outbox delivers it just after creation), try again, and
    answer 409 if it is still not there: the task is being set up, it is not missing. A
    ``command_id`` (`foundry.http.idempotency`) makes a repeated request apply once."""
    return await _while_initializing(
        key,
        lambda: runtime.actor("task", key).send(name, body, wait=True, timeout=15, command_id=command_id),
    )


async def check_prompt_target(runtime: Runtime, key: str, session_id: str | None = None) -> None:
    """Refuse a prompt the task would refuse (archived task, missing or closed session) before
    `prompt_gate` takes a seat for its sender: a refused prompt must take none."""
    body = {"sessionId": session_id} if session_id is not None else {}
    await _while_initializing(key, lambda: runtime.call("task", key, "check_prompt_target", body))


async def gate_new_session_prompt(member: Membership, task_id: str, runtime: Runtime) -> None:
    """Before a session opens with a prompt: what the task would refuse, then the seat. A virtual
    PR task has nothing to refuse yet, and is materialized only after both passed."""
    org = member.organization_id
    if _is_known(runtime, org, task_id):
        await check_prompt_target(runtime, task_key(org, task_id))
    else:
        key, summary = await task_of(member, task_id, runtime, materialize=False)
        if not summary.get("isVirtual"):
            await check_prompt_target(runtime, key)
    await prompt_gate(member, task_id, runtime)


async def _while_initializing(key: str, attempt_call: Callable[[], Awaitable[Any]]) -> Any:
    try:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(TaskNotInitialized),
            wait=wait_random_exponential(multiplier=0.01, max=0.2),
            stop=stop_after_delay(INIT_WAIT_S),
        ):
            with attempt:
                return await attempt_call()
    except RetryError:
        raise Conflict(
            f"task {split_task_key(key)[1]!r} is still being set up; try again in a moment"
        ) from None
    raise AssertionError("unreachable: every attempt returns or raises")


async def user_state(
    runtime: Runtime, member: Membership, task_id: str, session_id: str, **changes: Any
) -> dict[str, Any]:
    body = {"organizationId": member.organization_id, "taskId": task_id, "sessionId": session_id, **changes}
    result: dict[str, Any] = await runtime.call("user", member.caller.user_id, "update_session_state", body)
    return result
