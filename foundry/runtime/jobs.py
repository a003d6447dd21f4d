"""An instance's background jobs: long work it owns, run off the mailbox loop.

`Instance` (`foundry.runtime.instance`) runs commands one at a time, each in its own transaction;
jobs are plain tasks beside that loop, started by name (`InstanceContext.start_job`) and writing
through transactions of their own. They are split from the instance because nothing about them
touches the mailbox or the staging of a transaction: the instance only asks whether a job still
runs (before it sleeps) and cancels them when it closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from foundry.runtime.context import InstanceContext

if TYPE_CHECKING:
    from foundry.runtime.instance import Instance

__all__ = ["InstanceJobs"]

from foundry.errors import FoundryError

log = logging.getLogger(__name__)


class InstanceJobs:
    """The named jobs of one `Instance`: at most one task runs per name."""

    def __init__(self, instance: Instance) -> None:
        self._instance = instance
        #: The running job tasks by name (a name leaves when its task ends).
        self.tasks: dict[str, asyncio.Task[None]] = {}
        #: Jobs asked to start while they ran, with `again_if_running`: each runs once more after.
        self.again: dict[str, Callable[[InstanceContext], Awaitable[None]]] = {}

    def start(
        self, name: str, fn: Callable[[InstanceContext], Awaitable[None]], *, again_if_running: bool = False
    ) -> bool:
        """Start job ``name``; False when it already runs (then, with ``again_if_running``, it runs
        once more after the running one ends)."""
        instance = self._instance
        if self.running(name):
            if again_if_running and not instance._closing:
                self.again[name] = fn
            return False
        # A job is work a restart must resume (the role's ``on_wake`` does): the pending marker makes
        # the host's recovery wake this instance after a crash, as it does for queued commands.
        # Without it a turn or a provisioning cut short by a kill -9 stayed "running" until someone
        # happened to read the task.
        instance._mark_pending()
        task = asyncio.create_task(
            self._run(name, fn), name=f"job:{instance.role.name}/{instance.key}/{name}"
        )
        self.tasks[name] = task
        return True

    def cancel(self, name: str) -> bool:
        """Cancel job ``name``; False when it does not run."""
        task = self.tasks.get(name)
        if task is None or task.done():
            return False
        task.cancel()
        return True

    def running(self, name: str) -> bool:
        """True while job ``name`` runs."""
        task = self.tasks.get(name)
        return task is not None and not task.done()

    async def _run(self, name: str, fn: Callable[[InstanceContext], Awaitable[None]]) -> None:
        instance = self._instance
        try:
            await fn(InstanceContext(instance))
        except asyncio.CancelledError:
            log.info("job %s on %s/%s cancelled", name, instance.role.name, instance.key)
            raise
        except FoundryError as exc:
            # A known failure (a configuration, a driver's answer) says what is wrong in its message:
            # one line, without a traceback wall that hides it.
            log.error("job %s on %s/%s failed: %s: %s", name, instance.role.name, instance.key, exc.code, exc)
        except Exception:
            # Jobs report their own failures to the user through commands; this is the last resort.
            log.exception("job %s on %s/%s failed", name, instance.role.name, instance.key)
        finally:
            if self.tasks.get(name) is asyncio.current_task():
                del self.tasks[name]
            instance.touch()
            again = self.again.pop(name, None)
            if again is not None and not instance._closing:
                self.start(name, again)
            elif not instance._closing:
                # Closing (sleep or shutdown) keeps the marker: a job it cut short must resume.
                instance._unmark_if_drained()
