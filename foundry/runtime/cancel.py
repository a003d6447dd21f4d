"""Stopping background tasks at close."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)


async def cancel_and_wait(tasks: Iterable[asyncio.Task[object]], where: str) -> None:
    """Cancel ``tasks`` and wait for each to end; a task that failed instead is logged (naming
    ``where``), not raised, so one broken task never keeps the others running."""
    pending = list(tasks)
    for task in pending:
        task.cancel()
    for task in pending:
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("task failed while closing %s", where)
