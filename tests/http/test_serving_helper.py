"""The test servers' start helper: a port taken by another process fails this test alone."""

from __future__ import annotations

import socket

import pytest
from fastapi import FastAPI

from tests.http.conftest import free_port, serving


async def test_a_taken_port_fails_the_start_and_the_next_server_still_starts() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(RuntimeError, match="could not start"):
            async with serving(FastAPI(), int(taken.getsockname()[1])):
                pass
    finally:
        taken.close()
    # Before, uvicorn's SystemExit broke the worker's event loop runner for every later test.
    async with serving(FastAPI(), free_port()):
        pass
