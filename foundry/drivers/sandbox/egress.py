"""The command that starts a jail with ``sandbox.network = egress`` (see `egress_helper` for how it
is wired and why, `egress_rules` for what the jail may reach)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from foundry.drivers.sandbox.egress_rules import host_network, ip_rules, parse_allow

__all__ = ["PASTA_INSTALL_HINT", "egress_command"]

PASTA_INSTALL_HINT = (
    "install pasta (Debian/Ubuntu: `apt-get install passt`; scripts/bootstrap.sh does it when run as "
    "root or with passwordless sudo), or set FOUNDRY_SANDBOX__NETWORK=none (no network) or host "
    "(the host's network, every local port in reach)"
)
_HELPER = Path(__file__).with_name("egress_helper.py")


def egress_command(
    pasta: str, allow: Sequence[str], bwrap_argv: Sequence[str], keep_fds: Sequence[int] = ()
) -> list[str]:
    """The command that runs ``bwrap_argv`` (a `bwrap_command` with ``--unshare-net``) connected by
    ``pasta`` under the egress rules, ``allow`` being ``sandbox.egress_allow``; ``keep_fds`` are
    descriptors the jail inherits (the relay's listening socket).

    Blocking: reads this machine's addresses now (``ip``), so the rules match the host at this start.

    Raises:
        OSError: the machine's addresses could not be read (``ip`` missing or failing).
        ValueError: an ``allow`` entry is not an address or CIDR range.
    """
    try:
        host = host_network()
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        raise OSError(
            f"could not read this machine's addresses with `ip` for the egress rules: {exc}"
        ) from exc
    rules = ip_rules(host, parse_allow(allow), host.gateway)
    # -S: the helper needs only the standard library, and skipping site-packages (and the foundry
    # package) makes it start several times faster.
    command = [sys.executable, "-I", "-S", str(_HELPER), "--pasta", pasta]
    if host.gateway:
        command += ["--dns", host.gateway]
    for version, batch in rules.items():
        command += [f"--rules{version}", batch]
    for fd in keep_fds:
        command += ["--keep-fd", str(fd)]
    return [*command, "--", *bwrap_argv]
