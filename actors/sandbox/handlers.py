"""Mailbox commands of the sandbox role."""

from __future__ import annotations

import logging

from actors.sandbox.actions import load
from actors.sandbox.commands import Exited
from actors.sandbox.schema import sandbox
from foundry.runtime.context import CommandContext

log = logging.getLogger(__name__)

TASK_ROLE = "task"


async def handle_exited(ctx: CommandContext, cmd: Exited) -> dict[str, bool]:
    """The server stopped on its own: mark the sandbox errored with the reason and tell the task.

    The next ``ensure`` starts a new server over the same checkout ("restarted on next use"). An exit
    reported after the sandbox was destroyed, or from a server that was already replaced, is ignored.
    """
    row = await load(ctx.conn)
    if row is None or row.state in ("destroyed", "pending") or (cmd.pid is not None and cmd.pid != row.pid):
        return {"recorded": False}
    await ctx.conn.execute(
        sandbox.update()
        .where(sandbox.c.id == 1)
        .values(state="error", error=cmd.reason, crashes=sandbox.c.crashes + 1, updated_at=ctx.now_ms())
    )
    log.warning("sandbox crashed key=%s returncode=%s", ctx.key, cmd.returncode)
    admission = getattr(ctx.services.driver("sandbox"), "admission", None)
    if admission is not None:
        admission.notify()  # its slot is free
    ctx.send_after_commit(
        TASK_ROLE,
        ctx.key,
        "sandbox_exited",
        {"reason": cmd.reason, "returncode": cmd.returncode, "generation": row.starts},
        command_id=ctx.derived_id("task"),
    )
    return {"recorded": True}
