"""Which interfaces `foundry serve` may bind in mock mode.

Mock mode signs anyone in as a seeded user, carol being an organization admin, without a password.
On a loopback address only this machine can reach it; on any other address (``0.0.0.0``, ``::``,
a LAN address, or a name that resolves to one) anyone on the network could. So `foundry serve`
refuses those unless the operator says so explicitly.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

from foundry.config import Settings

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """True when every address ``host`` stands for is a loopback address.

    A name is resolved; one that does not resolve counts as not loopback (the server could not bind
    it anyway, and the check must not pass on a guess).
    """
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass  # a name, not an address literal: resolve it below
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        log.warning("cannot resolve the bind host %r: %s", host, exc)
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def public_mock_refusal(settings: Settings) -> str | None:
    """The one-line refusal when mock mode would listen beyond this machine, else None."""
    if settings.mode != "mock" or settings.allow_public_mock or is_loopback(settings.host):
        return None
    return (
        f"refusing to serve mock mode on {settings.host!r}: mock mode lets anyone sign in as a seeded "
        "admin, so it binds loopback addresses only (use --host 127.0.0.1), unless you pass "
        "--allow-public-mock or set FOUNDRY_ALLOW_PUBLIC_MOCK=true"
    )
