"""Joining Ray without hanging: a configured address that does not answer is a start-up error.

``ray.init(address=...)`` waits for the cluster's control store with no end in sight when nothing
Ray-like answers there (measured: still waiting after ten minutes, and deaf to SIGTERM, since the
wait runs in a thread the event loop cannot interrupt). So the address is probed first, and the join
itself runs in a daemon thread under a deadline: a stuck join neither blocks start-up past it nor
keeps the process from exiting. A new local cluster starts as before.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import ray

from foundry.errors import ActorUnavailable

#: How long joining an existing cluster may take before start-up fails.
JOIN_TIMEOUT_S = 20.0
#: How long a TCP connection to the cluster's address may take.
PROBE_TIMEOUT_S = 5.0


async def init_ray(kwargs: dict[str, Any]) -> None:
    """``ray.init(**kwargs)``; for an explicit cluster address, fail within `JOIN_TIMEOUT_S` with an
    `ActorUnavailable` naming the address when it does not answer as a Ray cluster."""
    address = kwargs.get("address")
    joining = isinstance(address, str) and address not in ("local", "auto") and "://" not in address
    if not joining:
        # A local cluster's daemons die with the thread that started them (Ray sets their parent
        # death signal), so that thread must live on: an executor thread does.
        await asyncio.to_thread(ray.init, **kwargs)
        return
    await _probe(str(address))
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def run() -> None:
        try:
            ray.init(**kwargs)
        except BaseException as exc:  # handed to the waiting coroutine, which raises it
            loop.call_soon_threadsafe(_settle, done, exc)
        else:
            loop.call_soon_threadsafe(_settle, done, None)

    # Joining starts no daemon; a thread of its own, as a daemon, never keeps the process from exiting.
    threading.Thread(target=run, name="ray-init", daemon=True).start()
    try:
        await asyncio.wait_for(asyncio.shield(done), JOIN_TIMEOUT_S)
    except TimeoutError:
        raise ActorUnavailable(
            f"the Ray cluster at {address} (runtime.ray_address) did not let this process join within "
            f"{JOIN_TIMEOUT_S:g}s: is it a Ray head started with `ray start --head`, of the same Ray "
            "version?"
        ) from None


def _settle(done: asyncio.Future[None], exc: BaseException | None) -> None:
    if done.done():
        return
    if exc is None:
        done.set_result(None)
    else:
        done.set_exception(exc)


async def _probe(address: str) -> None:
    await asyncio.to_thread(probe_address, address)


def probe_address(address: str) -> None:
    """Raise `ActorUnavailable` naming ``address`` unless something accepts TCP connections there."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ActorUnavailable(f"runtime.ray_address {address!r} is not host:port (e.g. 10.0.0.5:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        raise ActorUnavailable(
            f"nothing answers at the Ray cluster address {address} (runtime.ray_address): {reason}"
        ) from None
