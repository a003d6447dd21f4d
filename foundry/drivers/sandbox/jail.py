"""Jailing a local sandbox with bubblewrap (``bwrap``).

A coding agent runs whatever a prompt tells it, so a local sandbox's ``sandbox-agent`` server and every
agent it spawns run inside a jail built by `bwrap_command`:

* new user, PID, IPC and UTS namespaces; inside, everything runs as the unprivileged uid/gid
  `JAIL_UID` with no capabilities, as session leader of its own session (``--new-session``, so it
  cannot push input into Foundry's terminal), and dies with its parent (``--die-with-parent``);
* a read-only view of the system (``/usr``, the ``/bin``/``/lib*`` links, ``/etc`` with every file
  or directory that is not world-readable masked, e.g. ``/etc/shadow`` and SSH host keys), a private
  ``/proc`` that shows only the jail's own processes, a minimal ``/dev`` and a private ``/tmp``; the
  root itself is read-only;
* the sandbox directory, mounted at its own path, is the only writable place; the Python installation
  and the ``foundry`` package (for the demo agent and the launcher), the ``sandbox-agent`` binary and
  any extra paths the provider names are mounted read-only at their own paths. Nothing else of the
  host is there: not Foundry's data directory, not the home directory, not other sandboxes.

Network (``network``): ``host`` shares the host's network (the server listens on the host's
127.0.0.1, as without a jail). ``none`` gives the jail its own network namespace with only a
loopback: nothing on the host (Foundry's API, Ray, other sandboxes' servers) can be reached from
inside. Foundry reaches the server through a listening socket it opens on the host's 127.0.0.1 and
hands to the jail as an inherited file descriptor: the launcher accepts on it and relays each
connection to the server on the jail's own loopback (`foundry.drivers.sandbox.relay`). ``egress`` is
``none`` plus the internet: ``pasta`` connects the jail's namespace through host sockets, and rules
in that namespace block this machine, its LAN, loopback, link-local (cloud metadata) and private
ranges (`foundry.drivers.sandbox.egress_helper`, whose docstring says why this wiring; the rule is in
`foundry.drivers.sandbox.egress_rules`). Foundry reaches the server through the same relay.

Whether the jail can start here (``bwrap`` installed, user namespaces allowed, ``pasta`` for
``egress``) is found by running a tiny jail (`probe`, kept once it succeeds); the answer, with how to
fix a failure, is what ``/readyz`` shows. A network that was not chosen explicitly
(``network_fallback``) falls back from ``egress`` to a weaker one when pasta cannot start, and the
status says so and why.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from foundry.drivers.sandbox.egress import PASTA_INSTALL_HINT, egress_command

__all__ = [
    "BWRAP_INSTALL_HINT",
    "JAIL_UID",
    "Isolation",
    "IsolationStatus",
    "JailPolicy",
    "Network",
    "bwrap_command",
    "files_named",
    "find_pasta",
    "interpreter_paths",
    "isolation_status",
    "namespace_args",
    "probe",
    "system_args",
]

log = logging.getLogger(__name__)

Isolation = Literal["bwrap", "none"]
Network = Literal["host", "egress", "none"]

#: The uid and gid everything inside the jail runs as (mapped to Foundry's own user outside).
JAIL_UID = 1000
BWRAP_INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`; scripts/bootstrap.sh does it "
    "when run as root or with passwordless sudo) and make sure unprivileged user namespaces are "
    "allowed (sysctl kernel.unprivileged_userns_clone=1 where it exists; on Ubuntu 24.04+ also "
    "kernel.apparmor_restrict_unprivileged_userns=0 or an AppArmor profile for bwrap); or set "
    "FOUNDRY_SANDBOX__ISOLATION=none to run sandboxes unjailed (not recommended: agents can then "
    "read Foundry's data directory and reach its ports)"
)
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_PROBE_TIMEOUT_S = 10.0
_PROBE_ATTEMPTS = 2
# Successful probes by their arguments (see `probe` for why failures are not kept).
_PROBED: dict[tuple[str | None, str, str, str | None], tuple[bool, str]] = {}


@dataclass(frozen=True)
class JailPolicy:
    """How local sandboxes are isolated.

    Attributes:
        isolation: ``bwrap`` jails every sandbox; ``none`` runs them as Foundry's own user with the
            whole filesystem and every local port in reach (an explicit, logged choice).
        network: ``none`` (own network namespace, loopback only), ``host``, or ``egress`` (own
            namespace connected to the internet by pasta, this machine and private ranges blocked).
        network_fallback: the network to use instead when ``egress`` cannot start here (set when the
            network was not chosen explicitly); None makes creation fail with the reason.
        read_only: extra host paths mounted read-only at their own path (the files that agent
            launchers name by absolute path are mounted without being listed here).
        shared: extra host paths mounted read-write at their own path.
        accounts_root: mock mode's git remotes, which stand in for GitHub: one directory per GitHub
            account. Foundry's fetches and pushes for a sandbox (`remote_git`) get read-write only
            its own organization's account (`for_owner`); the agent's jail gets none.
        bwrap: the ``bwrap`` executable; empty looks it up on ``PATH``.
        pasta: the ``pasta`` executable (``egress``); empty looks it up on ``PATH``.
        egress_allow: addresses or CIDR ranges ``egress`` reaches although they are in a blocked range
            (e.g. a git server on the LAN); never this machine itself.
    """

    isolation: Isolation = "bwrap"
    network: Network = "none"
    read_only: tuple[Path, ...] = field(default_factory=tuple)
    shared: tuple[Path, ...] = field(default_factory=tuple)
    accounts_root: Path | None = None
    bwrap: str = ""
    pasta: str = ""
    egress_allow: tuple[str, ...] = field(default_factory=tuple)
    network_fallback: Network | None = None

    def for_owner(self, organization_id: str) -> JailPolicy:
        """This policy for a sandbox of ``organization_id``: its account's remotes shared."""
        if self.accounts_root is None:
            return self
        from foundry.ids import organization_id_for

        def owns(account: Path) -> bool:
            ids = {organization_id_for(kind, account.name) for kind in ("organization", "personal")}
            return account.is_dir() and organization_id in ids

        root = self.accounts_root
        accounts = [d for d in sorted(root.iterdir()) if owns(d)] if root.is_dir() else []
        return dataclasses.replace(self, shared=(*self.shared, *accounts), accounts_root=None)

    @property
    def jailed(self) -> bool:
        return self.isolation == "bwrap"

    @property
    def own_network(self) -> bool:
        """True when the jail gets its own network namespace (Foundry then relays to the server)."""
        return self.jailed and self.network != "host"


@dataclass(frozen=True)
class IsolationStatus:
    """What `probe` found: whether sandboxes can start with the configured isolation, and why not."""

    ok: bool
    isolation: Isolation
    network: Network
    detail: str

    def as_json(self) -> dict[str, object]:
        return {"ok": self.ok, "isolation": self.isolation, "network": self.network, "detail": self.detail}


def find_bwrap(configured: str = "") -> str | None:
    """The ``bwrap`` executable: the configured path if it is executable, else ``bwrap`` on ``PATH``
    (only when none is configured), else None."""
    if configured:
        return configured if shutil.which(configured) else None
    return shutil.which("bwrap")


def find_pasta(configured: str = "") -> str | None:
    """The ``pasta`` executable, found like `find_bwrap`."""
    if configured:
        return configured if shutil.which(configured) else None
    return shutil.which("pasta")


def interpreter_paths() -> list[Path]:
    """What a Python process inside the jail needs read-only: this interpreter's installation, its
    virtualenv, and the ``foundry`` package (which may live outside both in an editable install)."""
    import foundry

    package = Path(foundry.__file__).resolve().parent
    paths = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), Path(sys.exec_prefix).resolve()}
    executable = Path(sys.executable)
    # A venv's ``python`` is a symlink; its target may sit outside base_prefix (e.g. a pyenv shim).
    paths.add(executable.resolve().parent)
    if not any(parent in paths for parent in package.parents):
        paths.add(package)
    return sorted(_without_nested(paths))


def files_named(scripts: Iterable[str]) -> list[Path]:
    """The existing regular files that agent launcher scripts name by absolute path (their
    interpreter and the agent's script), to be mounted read-only. Directories are never taken from a
    script: a word such as ``/`` or ``$HOME`` must not open the host to the jail."""
    found: set[Path] = set()
    for script in scripts:
        for line in script.splitlines():
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                continue  # the launcher fails to run and the session says so
            for word in words:
                if word.startswith("/") and os.path.isfile(word):
                    found.add(Path(word))
    return sorted(found)


def _without_nested(paths: Iterable[Path]) -> list[Path]:
    kept: list[Path] = []
    for path in sorted(set(paths), key=lambda p: len(p.parts)):
        if not any(path == parent or parent in path.parents for parent in kept):
            kept.append(path)
    return kept


@functools.cache
def _etc_masks() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Files and directories under ``/etc`` that others may not read: they are secrets by convention
    (``/etc/shadow``, SSH host keys, ``/etc/ssl/private``), so the jail sees them empty."""
    files: list[str] = []
    dirs: list[str] = []
    for root, dirnames, filenames in os.walk("/etc", onerror=lambda exc: log.debug("etc walk: %s", exc)):
        for name in list(dirnames):
            path = os.path.join(root, name)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISDIR(info.st_mode) and (info.st_mode & 0o005) != 0o005:
                dirs.append(path)
                dirnames.remove(name)  # masked whole
        for name in filenames:
            path = os.path.join(root, name)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode) and not info.st_mode & 0o004:
                files.append(path)
    return tuple(files), tuple(dirs)


def system_args() -> list[str]:
    """The read-only system every jail sees (`/usr`, the `/bin` and `/lib*` links, `/etc` masked)."""
    args: list[str] = []
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    args += ["--ro-bind", "/etc", "/etc"]
    files, dirs = _etc_masks()
    for path in files:
        # /dev/null under the jail's nodev mounts cannot be opened: reading a masked file fails.
        args += ["--ro-bind", "/dev/null", path]
    for path in dirs:
        args += ["--tmpfs", path, "--remount-ro", path]
    return args


def namespace_args() -> list[str]:
    """A jail's own user, PID, IPC and UTS namespaces, as `JAIL_UID` without capabilities, in a
    session of its own, ending with its parent."""
    return [
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--uid",
        str(JAIL_UID),
        "--gid",
        str(JAIL_UID),
        "--hostname",
        "sandbox",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
    ]


def bwrap_command(
    bwrap: str,
    policy: JailPolicy,
    *,
    directory: Path,
    binary: Path,
    cwd: Path,
    command: Sequence[str],
    launchers: Iterable[str] = (),
) -> list[str]:
    """The ``bwrap`` argument list that runs ``command`` jailed for the sandbox at ``directory``.

    Pure: builds the list only. ``directory`` becomes the only writable mount; ``binary`` (the
    ``sandbox-agent`` executable), the interpreter (`interpreter_paths`) and the files the agent
    ``launchers`` name (`files_named`) are mounted read-only.
    """
    args = [bwrap, *namespace_args()]
    if policy.own_network:
        args.append("--unshare-net")
    args += system_args()
    # Mounted over /tmp before the sandbox directory, which may itself live under /tmp.
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    read_only = [*interpreter_paths(), binary.resolve(), *files_named(launchers), *policy.read_only]
    for path in _without_nested(read_only):
        args += ["--ro-bind", str(path), str(path)]
    args += ["--bind", str(directory), str(directory)]
    for path in policy.shared:
        args += ["--bind", str(path), str(path)]
    args += ["--remount-ro", "/", "--chdir", str(cwd), "--", *command]
    return args


def _probe_args(bwrap: str, network: Network, pasta: str | None) -> list[str]:
    args = [
        bwrap,
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        *(["--unshare-net"] if network != "host" else []),
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        *system_args(),
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--remount-ro",
        "/",
        "--",
        "/bin/sh",
        "-c",
        "exit 0",
    ]
    if network == "egress":
        assert pasta is not None
        return egress_command(pasta, (), args)
    return args


def probe(
    bwrap: str | None, network: Network, configured: str = "", pasta: str | None = None
) -> tuple[bool, str]:
    """Run a minimal jail to learn whether jails can start here; a success is kept for the process.

    A failed jail is started once more before the failure is the answer, and a failure is never
    kept: one start can fail for a passing reason (a machine too busy to answer within the time
    limit), and a kept failure would refuse every sandbox, or move them from ``egress`` to a weaker
    network, until a restart. Blocking (runs processes): call it through ``asyncio.to_thread`` from
    async code. Returns ``(True, "bwrap <version> at <path>")`` or ``(False, <what is missing and
    how to fix it>)``. With ``network="egress"`` the jail is connected by ``pasta`` as a sandbox
    would be.
    """
    key = (bwrap, network, configured, pasta)
    if key in _PROBED:
        return _PROBED[key]
    for attempt in range(1, _PROBE_ATTEMPTS + 1):
        ok, detail = _probe_once(bwrap, network, configured, pasta)
        if ok:
            _PROBED[key] = (ok, detail)
            break
        if bwrap is None:
            break  # nothing ran: trying again cannot help
        log.warning("jail probe attempt %d of %d failed: %s", attempt, _PROBE_ATTEMPTS, detail)
    return ok, detail


def _probe_once(bwrap: str | None, network: Network, configured: str, pasta: str | None) -> tuple[bool, str]:
    if bwrap is None:
        where = f"at {configured}" if configured else "on PATH"
        return False, f"bubblewrap (bwrap) is not installed (not found {where}); {BWRAP_INSTALL_HINT}"
    try:
        args = _probe_args(bwrap, network, pasta)
    except OSError as exc:  # egress: this machine's addresses could not be read
        log.warning("egress probe could not be prepared: %s", exc)
        return False, f"{exc}; {PASTA_INSTALL_HINT}"
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S, check=False)
        if done.returncode == 0:
            version = subprocess.run(
                [bwrap, "--version"], capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S, check=False
            ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("bwrap probe failed to run bwrap=%s: %s", bwrap, exc)
        return False, f"bubblewrap at {bwrap} could not be run ({exc}); {BWRAP_INSTALL_HINT}"
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        why = lines[-1] if lines else f"exit code {done.returncode}"
        log.warning("jail probe failed bwrap=%s network=%s error=%s", bwrap, network, why)
        # bubblewrap's own complaint names the cause when it died (the egress helper then only says
        # that the jail is gone); otherwise the helper's line says what pasta could not do.
        complaint = next((line for line in lines if line.startswith("bwrap:")), None)
        if network == "egress" and complaint is None and "egress:" in done.stderr:
            why = next(line for line in lines if "egress:" in line)
            return False, f"pasta at {pasta} cannot connect a jail here ({why}); {PASTA_INSTALL_HINT}"
        return (
            False,
            f"bubblewrap at {bwrap} cannot start a jail here ({complaint or why}); {BWRAP_INSTALL_HINT}",
        )
    return True, f"{version or 'bwrap'} at {bwrap}"


def _network_status(policy: JailPolicy) -> IsolationStatus:
    bwrap = find_bwrap(policy.bwrap)
    if policy.network == "egress":
        pasta = find_pasta(policy.pasta)
        if pasta is None:
            where = f"at {policy.pasta}" if policy.pasta else "on PATH"
            ok, detail = False, f"pasta is not installed (not found {where}); {PASTA_INSTALL_HINT}"
        else:
            ok, detail = probe(bwrap, "egress", policy.bwrap, pasta)
        if ok:
            detail += (
                f"; pasta at {pasta}; network = egress: own network namespace with outbound internet, "
                "this machine, its LAN, loopback, link-local (cloud metadata) and private ranges blocked"
            )
            if policy.egress_allow:
                detail += f" except {', '.join(policy.egress_allow)}"
            return IsolationStatus(True, "bwrap", "egress", detail)
        if policy.network_fallback is None or not probe(bwrap, "none", policy.bwrap)[0]:
            return IsolationStatus(False, "bwrap", "egress", detail)
        fallback = dataclasses.replace(policy, network=policy.network_fallback, network_fallback=None)
        weaker = _network_status(fallback)
        why = f"network = {policy.network_fallback} because egress cannot start here: {detail}"
        log.warning("sandbox network falls back to %s: %s", policy.network_fallback, detail)
        return dataclasses.replace(weaker, detail=f"{weaker.detail}; {why}")
    ok, detail = probe(bwrap, policy.network, policy.bwrap)
    if ok and policy.network == "host":
        detail += "; network = host: jailed agents can reach every port on this machine's loopback"
    elif ok:
        detail += "; network = none: own network namespace, only Foundry reaches the server"
    return IsolationStatus(ok, "bwrap", policy.network, detail)


def isolation_status(policy: JailPolicy) -> IsolationStatus:
    """Whether sandboxes can start under ``policy`` here, with the reason; blocking (see `probe`).

    Its ``network`` is the one sandboxes will get: ``policy.network_fallback`` when ``egress`` cannot
    start and a fallback is allowed (the detail then says why)."""
    if not policy.jailed:
        return IsolationStatus(
            True,
            "none",
            "host",
            "sandboxes are NOT jailed (sandbox.isolation = none was chosen): agents run as Foundry's "
            "user and can read its data directory and reach its ports",
        )
    return _network_status(policy)
