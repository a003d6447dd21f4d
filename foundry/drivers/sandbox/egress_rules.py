"""What a sandbox with ``sandbox.network = egress`` may reach: the rule, as policy-routing rules.

The jail has its own network namespace, connected to the internet by ``pasta``
(`foundry.drivers.sandbox.egress`): pasta turns each connection the jail opens into a connection it
opens itself, from the host. Without more, that would reach everything the host reaches, so before
anything runs in the jail Foundry adds ``ip rule`` entries to the jail's namespace (as the namespace's
administrator, from outside: nothing inside the jail holds a capability to change them):

**Blocked** (``prohibit``: ``connect()`` fails at once with "permission denied"):

* this machine: every address of every interface of the host, and every subnet the host is directly
  attached to (its LAN, where other Ray nodes and services listen on their node addresses);
* loopback (the jail's own ``127.0.0.1`` stays its own: that is where its server listens; the host's
  loopback is never reachable, pasta forwards no port and does not map its gateway to the host);
* link-local ``169.254.0.0/16`` and ``fe80::/10`` (the cloud metadata endpoint 169.254.169.254
  hands out the machine's cloud credentials), ``192.0.0.0/24`` (some clouds' metadata), IPv6 ULA
  ``fc00::/7`` (AWS's IPv6 metadata endpoint is ``fd00:ec2::254``);
* private and special ranges: ``10/8``, ``172.16/12``, ``192.168/16``, carrier-grade NAT ``100.64/10``
  (also Alibaba's metadata), ``0/8``, benchmarking ``198.18/15``, multicast and reserved.

**Allowed**: everything else (the internet: model APIs, GitHub), DNS to the jail's one name server
(pasta forwards it to the host's resolver), and the ranges of ``sandbox.egress_allow`` (e.g. a git
server on the LAN) which are checked before the blocks. An allow entry can never reach the host
itself: the host's addresses are the jail's own addresses or blocked above the allow list.

The host's addresses and subnets are read when each sandbox starts; an address the host gains later is
covered only if it is in one of the blocked ranges.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ALWAYS_BLOCKED", "HostNetwork", "host_network", "ip_rules", "parse_allow"]

log = logging.getLogger(__name__)

Net = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Ranges no sandbox reaches, whatever the host looks like (see the module docstring).
ALWAYS_BLOCKED: tuple[Net, ...] = tuple(
    ipaddress.ip_network(cidr)
    for cidr in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "::ffff:0:0/96",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)
# Rule priorities: the kernel's own "lookup local" is 0 (the jail's own addresses, its loopback).
_PREF_DNS = 900
_PREF_ALLOW = 1000
_PREF_BLOCK = 2000


@dataclass(frozen=True)
class HostNetwork:
    """What the host looks like when a sandbox starts: its addresses, its attached subnets and the
    IPv4 gateway of its default route (the jail's name server address)."""

    addresses: tuple[Net, ...]
    subnets: tuple[Net, ...]
    gateway: str | None


def _ip_json(*args: str) -> list[dict[str, object]]:
    done = subprocess.run(
        ["ip", "-j", *args],
        stdin=subprocess.DEVNULL,  # ours may be the sandbox's token pipe
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    parsed = json.loads(done.stdout or "[]")
    return parsed if isinstance(parsed, list) else []


def host_network() -> HostNetwork:
    """Read the host's addresses, subnets and default gateway (``ip -j``). Blocking.

    Raises:
        OSError, subprocess.SubprocessError, ValueError: ``ip`` is missing or answered nonsense.
    """
    addresses: set[Net] = set()
    subnets: set[Net] = set()
    for link in _ip_json("addr", "show"):
        infos = link.get("addr_info", [])
        for info in infos if isinstance(infos, list) else []:
            local, prefix = info.get("local"), info.get("prefixlen")
            if not isinstance(local, str) or not isinstance(prefix, int):
                continue
            address = ipaddress.ip_address(local.split("%")[0])
            addresses.add(ipaddress.ip_network(address))
            subnets.add(ipaddress.ip_interface(f"{address}/{prefix}").network)
    gateway = None
    for route in _ip_json("-4", "route", "show", "default"):
        if isinstance(route.get("gateway"), str):
            gateway = str(route["gateway"])
            break
    # A /0 "subnet" (an address configured with prefix 0) would block the whole internet.
    return HostNetwork(
        tuple(sorted(addresses, key=str)),
        tuple(sorted((net for net in subnets if net.prefixlen > 0), key=str)),
        gateway,
    )


def parse_allow(entries: Iterable[str]) -> tuple[Net, ...]:
    """``sandbox.egress_allow`` entries as networks (an address alone is a /32 or /128).

    Raises:
        ValueError: an entry is not an address or a CIDR range; the message names it.
    """
    allowed: list[Net] = []
    for entry in entries:
        try:
            allowed.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(
                f"sandbox.egress_allow entry {entry!r} is not an address or CIDR: {exc}"
            ) from exc
    return tuple(allowed)


def ip_rules(host: HostNetwork, allow: Iterable[Net], dns: str | None) -> dict[int, str]:
    """The ``ip -<family> -batch`` inputs, by IP version, that install the policy in a fresh
    network namespace."""
    lines: dict[int, list[str]] = {4: [], 6: []}

    def rule(net: Net, action: str, pref: int, extra: str = "") -> None:
        lines[net.version].append(f"rule add to {net}{extra} {action} pref {pref}")

    if dns is not None:
        server = ipaddress.ip_network(dns)
        for proto in ("udp", "tcp"):
            rule(server, "lookup main", _PREF_DNS, f" ipproto {proto} dport 53")
    for net in dict.fromkeys(allow):  # a repeated rule would fail with "File exists"
        rule(net, "lookup main", _PREF_ALLOW)
    blocked = [*ALWAYS_BLOCKED, *host.subnets, *host.addresses]
    # The host's own addresses are blocked ahead of the allow list: "allow 192.168.0.0/16" must not
    # open this machine's own 192.168.x.y.
    for net in host.addresses:
        rule(net, "prohibit", _PREF_DNS - 1)
    for net in dict.fromkeys(blocked):
        rule(net, "prohibit", _PREF_BLOCK)
    return {version: "\n".join(found) + "\n" for version, found in lines.items() if found}
