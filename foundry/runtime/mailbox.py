"""The durable mailbox's records: outcome envelopes and the SQL of ``foundry_mailbox``.

`Instance` (`foundry.runtime.instance`) runs the mailbox loop: a command is committed to the host's
inbox, run in one transaction with its ``foundry_mailbox`` row, and its outcome handed back to the
waiting callers. This module holds what that loop writes and reads — the outcome envelope, the row
recording that a command ran, which command ids the mailbox already knows, and how a stored row or
an outcome reads back. It is split from the instance because none of it needs an instance: the
class keeps the control flow (queue, locks, transactions, wake and sleep), and these are plain values,
statements and functions.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from foundry.errors import CommandFailed, FoundryError
from foundry.runtime.inbox import Queued

__all__ = [
    "MAILBOX_RETENTION_MS",
    "RECORD_OUTCOME",
    "STEP_TIMEOUT_S",
    "Outcome",
    "as_foundry_error",
    "known_commands",
    "ok_outcome",
    "outcome_label",
    "outcome_row",
    "stored_outcome",
]

#: Outcome envelope passed back to callers: ("ok", value) or ("err", FoundryError payload). An "ok"
#: outcome of a call or command that published events carries a third element, ``{topic: seq}`` of
#: the last seq it committed on each topic, so a caller can ask its later reads to be at least that
#: new (read-your-writes through the API process's snapshot cache). Read it with indexes, not by
#: unpacking two values.
Outcome = tuple[Any, ...]

#: Finished mailbox rows are kept this long so a retried command id still finds its outcome.
MAILBOX_RETENTION_MS = 7 * 24 * 3600 * 1000

#: The mailbox row of a command that ran: inserted, or completing a row written as pending.
RECORD_OUTCOME = (
    "INSERT INTO foundry_mailbox(command_id, name, body, status, result, error, created_at, finished_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(command_id) DO UPDATE SET status = excluded.status, "
    "result = excluded.result, error = excluded.error, finished_at = excluded.finished_at"
)


def outcome_row(
    queued: Queued, status: str, result: str | None, error: str | None, finished_at: int
) -> tuple[Any, ...]:
    """The parameters of `RECORD_OUTCOME` for ``queued``, finished at ``finished_at`` (ms)."""
    return (
        queued.command_id,
        queued.name,
        queued.body,
        status,
        result,
        error,
        queued.created_at,
        finished_at,
    )


async def known_commands(conn: AsyncConnection, mailbox: sa.Table, command_ids: list[str]) -> set[str]:
    """Which of ``command_ids`` the mailbox holds (ran, or queued from a pending row)."""
    known: set[str] = set()
    for start in range(0, len(command_ids), 500):
        chunk = command_ids[start : start + 500]
        rows = await conn.execute(sa.select(mailbox.c.command_id).where(mailbox.c.command_id.in_(chunk)))
        known.update(row[0] for row in rows)
    return known


#: A command handler must finish within this; long work belongs in a background job.
STEP_TIMEOUT_S = 60.0


def as_foundry_error(exc: Exception, where: str) -> FoundryError:
    """What a failed command or action reports: a `FoundryError` as raised, anything else (a bug, a
    timeout) as `CommandFailed` naming where it happened."""
    if isinstance(exc, FoundryError):
        return exc
    if isinstance(exc, TimeoutError):
        return CommandFailed(f"{where} took longer than {STEP_TIMEOUT_S:g}s and was aborted")
    return CommandFailed(f"{where} failed: {type(exc).__name__}: {exc}")


def ok_outcome(value: Any, committed_seqs: dict[str, int]) -> Outcome:
    """An "ok" outcome, with the topic seqs its context committed when it published anything."""
    if committed_seqs:
        return ("ok", value, dict(committed_seqs))
    return ("ok", value)


def outcome_label(outcome: Outcome) -> str:
    """``ok``; ``refused`` for an error the caller caused (invalid, not found, conflict); ``failed``."""
    status, value = outcome[0], outcome[1]
    if status == "ok":
        return "ok"
    return "failed" if isinstance(value, dict) and value.get("code") == CommandFailed.code else "refused"


def stored_outcome(stored: tuple[str, Any, Any]) -> Outcome:
    status, result, error = stored
    if status == "failed":
        return ("err", json.loads(error) if error else CommandFailed("command failed").to_payload())
    return ("ok", json.loads(result) if result else None)
