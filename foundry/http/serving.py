"""The HTTP server ``foundry serve`` runs: uvicorn, stopping without a crash-like dump."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

import uvicorn


class OrderlyStopServer(uvicorn.Server):
    """Uvicorn, without re-raising the stop signal once its graceful shutdown is done.

    Uvicorn raises the SIGTERM again at the end so that the exit status names it; in this process
    Ray's crash handler catches that SIGTERM and prints a stack dump ("*** SIGTERM received ... PC:
    @ ...") that reads like a crash in every orderly stop. The stop was asked for and completed: the
    process exits 0, which the supervisor reports as the orderly stop it is.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)
