"""Relay from a listening socket Foundry opened on the host to the jailed server's own loopback.

A jail with its own network namespace (``sandbox.network = none``) cannot be reached on the host's
127.0.0.1, and nothing inside it can reach the host. Foundry therefore opens the listening socket
itself, on the host's 127.0.0.1, and the jail inherits it as a file descriptor: a socket stays in the
network namespace it was created in, so connections Foundry makes to it arrive on the host side, and
this relay (running inside the jail, in the launcher) accepts them and connects each one to the
server on the jail's loopback. A listening socket can only accept, so holding it gives nothing inside
the jail a way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import threading

__all__ = ["RELAY_FD_ENV", "RELAY_PORT_ENV", "start_relay"]

#: The inherited listening socket's file descriptor number (set by the provider for the launcher).
RELAY_FD_ENV = "FOUNDRY_SANDBOX_RELAY_FD"
#: The server's port on the jail's own loopback.
RELAY_PORT_ENV = "FOUNDRY_SANDBOX_RELAY_PORT"
_CHUNK = 65_536


def _say(message: str) -> None:
    # The launcher's stderr is the sandbox's log file, which Foundry quotes when the server fails.
    print(f"relay: {message}", file=sys.stderr, flush=True)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(_CHUNK):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # half-close: the other direction may still be sending
    except (ConnectionError, OSError):
        # A peer went away mid-stream (a client cancelled a request, the server stopped): close both.
        writer.close()


async def _relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, port: int) -> None:
    try:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        # The server is not listening yet (Foundry polls /v1/health) or has gone: refuse this one.
        client_w.close()
        return
    try:
        await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))
    finally:
        for writer in (client_w, server_w):
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


async def _serve(listen_fd: int, port: int) -> None:
    listener = socket.socket(fileno=listen_fd)
    listener.setblocking(False)
    server = await asyncio.start_server(lambda r, w: _relay(r, w, port), sock=listener)
    async with server:
        await server.serve_forever()


def _run(listen_fd: int, port: int) -> None:
    try:
        asyncio.run(_serve(listen_fd, port))
    except Exception as exc:  # the launcher goes on; Foundry sees the server unreachable and says so
        _say(f"stopped: {type(exc).__name__}: {exc}")
        raise


def start_relay(listen_fd: int, port: int) -> threading.Thread:
    """Relay connections accepted on ``listen_fd`` to ``127.0.0.1:port`` in a daemon thread."""
    thread = threading.Thread(target=_run, args=(listen_fd, port), name="relay", daemon=True)
    thread.start()
    return thread
