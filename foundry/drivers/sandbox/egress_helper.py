"""Start a jail with ``sandbox.network = egress``: bubblewrap in its own network namespace, connected
to the internet by ``pasta``, fenced by the rules of `foundry.drivers.sandbox.egress_rules`.

Run by `foundry.drivers.sandbox.egress.egress_command` on the host, as the sandbox's leader process
(outside the jail), as a plain script (``python -I -S <this file> …``): it imports only the standard
library, so it starts in a fraction of the time that importing the ``foundry`` package takes. It:

1. starts bubblewrap with ``--info-fd`` and ``--block-fd``: bubblewrap creates the jail's namespaces,
   says the jail's pid, and waits before it runs anything inside;
2. waits until bubblewrap has given the jail's loopback its address (`_wait_for_loopback` says why);
3. starts pasta attached to that namespace (``--config-net``: the jail gets an interface with the
   host's address and routes; ``-t/-u/-T/-U none``: no port is forwarded in either direction;
   ``--no-map-gw``: the gateway address is not the host's loopback; ``--dns-forward``: DNS sent to the
   gateway goes to the host's resolver, and the jail's ``/etc/resolv.conf`` names only that), and
   waits for its pid file, which pasta writes once the namespace is configured;
4. installs the egress rules in the jail's network namespace (``nsenter … ip -batch``); nothing has
   run inside the jail yet, so there is no moment when it is connected and unfenced (the rules come
   after pasta's set-up because the kernel checks the default route's gateway against them);
5. lets the jail run, and exits as bubblewrap did (same code, or killed by the same signal).

Why pasta attached to a namespace bubblewrap made, rather than ``pasta -- bwrap …`` (pasta creating the
namespaces): pasta started as root drops to ``nobody`` and then cannot map the user namespace it
created, so that form fails when Foundry runs as root; attaching works as root (``--runas 0``,
``--netns-only``) and as any other user (joining the user namespace that owns the jail's network
namespace, which bubblewrap created as that user).
pasta rather than slirp4netns: it is one small packaged binary (Debian ``passt``) that connects a
namespace through ordinary host sockets without a TAP device on the host or any privilege.

Lifetime: this process dies with Foundry (``PR_SET_PDEATHSIG``), bubblewrap with it
(``--die-with-parent``), and pasta with it too (its own ``PR_SET_PDEATHSIG``: pasta does not notice
by itself that the namespace it serves is gone). pasta runs in a process group of its own so that the
provider's signals to the sandbox's group stop the jail first; this process then ends pasta. If pasta
exits while the jail runs, the jail has lost its network: this process says so in the sandbox's log
and stops the jail, which the provider reports as a crash quoting that line. Any setup failure exits
with code 70 after a line starting ``egress:`` that names the cause.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time

__all__ = ["EXIT_SETUP_FAILED", "pasta_args"]

EXIT_SETUP_FAILED = 70
_PR_SET_PDEATHSIG = 1
_NS_GET_USERNS = 0xB701  # ioctl(2) on a namespace descriptor: the user namespace that owns it
_SETUP_TIMEOUT_S = 10.0
# pasta also tries the system logger, which a server usually lacks; those lines are noise.
_NOISE = "to syslog"


def pasta_args(pasta: str, pid: int, pid_file: str, dns: str | None, owner: str | None) -> list[str]:
    """pasta attached to the network namespace of ``pid``, forwarding no port (see the docstring);
    ``owner`` is the path of the user namespace that owns it (None when running as root)."""
    args = [pasta, "--config-net", "--foreground", "--quiet", "--no-map-gw"]
    args += ["-t", "none", "-u", "none", "-T", "none", "-U", "none", "-P", pid_file]
    if dns is not None:
        args += ["--dns-forward", dns]
    args += ["--runas", f"{os.getuid()}:{os.getgid()}", "--netns", f"/proc/{pid}/ns/net"]
    # Root may enter any namespace but cannot map its user namespace (see the module docstring);
    # anyone else needs the user namespace that owns the network one, which grants it the right to
    # configure it.
    args += ["--netns-only"] if owner is None else ["--userns", owner]
    return args


def _owner_of(pid: int) -> int | None:
    """An open descriptor of the user namespace that owns ``pid``'s network namespace, or None as
    root. Not ``/proc/<pid>/ns/user``: bubblewrap maps the jail's uid in a second, nested user
    namespace, whose capabilities do not extend to the network namespace made with the first."""
    if os.geteuid() == 0:
        return None
    net = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fcntl.ioctl(net, _NS_GET_USERNS)
    finally:
        os.close(net)


class _SetupError(Exception):
    pass


def _say(message: str) -> None:
    # Our stderr is the sandbox's log file, which Foundry quotes when the sandbox fails.
    print(f"egress: {message}", file=sys.stderr, flush=True)


def _die_with_parent() -> None:
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise _SetupError(f"prctl(PR_SET_PDEATHSIG) failed (errno {ctypes.get_errno()})")
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(EXIT_SETUP_FAILED)


def _read_until(fd: int, done: bytes, what: str) -> bytes:
    data = b""
    deadline = time.monotonic() + _SETUP_TIMEOUT_S
    while done not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise _SetupError(f"timed out after {_SETUP_TIMEOUT_S:.0f} s waiting for {what}")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise _SetupError(f"{what} never came (the process exited)")
        data += chunk
    return data


def _has_loopback_address(pid: int) -> bool:
    # The routing tables of ``pid``'s network namespace: the kernel adds 127.0.0.1's local route
    # as soon as the address is on ``lo`` (up or not), and nothing else adds one before pasta runs.
    with open(f"/proc/{pid}/net/fib_trie") as tables:
        return any(line.strip() == "|-- 127.0.0.1" for line in tables)


def _wait_for_loopback(jail: subprocess.Popen[bytes], pid: int) -> None:
    """Return once bubblewrap has added 127.0.0.1 to the loopback of the jail ``pid``.

    bubblewrap says the jail's pid before the jail has set up its loopback (it adds the address,
    insisting that it be new, then raises ``lo``), and pasta raises ``lo`` too, which makes the
    kernel add 127.0.0.1 itself. Had pasta come first, bubblewrap's request would fail and the jail
    would die with ``bwrap: loopback: Failed RTM_NEWADDR`` followed by a stale, unrelated errno
    (bubblewrap 0.8 does not report the netlink error), e.g. "No child processes". That happens
    whenever the jail is scheduled late, i.e. on a busy machine. Raising ``lo`` twice is harmless,
    so the address being there is enough.
    """
    deadline = time.monotonic() + _SETUP_TIMEOUT_S
    pause = 0.0005
    while True:
        try:
            if _has_loopback_address(pid):
                return
        except FileNotFoundError:
            pass  # the jail is gone; bubblewrap exits right after it, which is reported below
        except OSError as exc:
            raise _SetupError(f"could not read the jail's network namespace: {exc}") from exc
        if jail.poll() is not None:
            raise _SetupError(
                f"bubblewrap exited with code {jail.returncode} before it set up the jail's loopback"
            )
        if time.monotonic() > deadline:
            raise _SetupError(
                f"timed out after {_SETUP_TIMEOUT_S:.0f} s waiting for bubblewrap to set up the "
                "jail's loopback"
            )
        time.sleep(pause)
        pause = min(pause * 2, 0.01)


def _install_rules(pid: int, owner: int | None, rules: dict[int, str]) -> None:
    namespaces = [f"--net=/proc/{pid}/ns/net"]
    if owner is not None:
        namespaces = [f"--user=/proc/self/fd/{owner}", "--preserve-credentials", *namespaces]
    # IPv4 and IPv6 at once: each is a process start that the jail waits for.
    running = {
        version: subprocess.Popen(
            ["nsenter", *namespaces, "--", "ip", f"-{version}", "-batch", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            pass_fds=() if owner is None else (owner,),
        )
        for version in rules
    }
    failures = []
    for version, process in running.items():
        try:
            _out, err = process.communicate(rules[version], timeout=_SETUP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            failures.append(f"could not install the IPv{version} network rules: no answer")
            continue
        if process.returncode != 0:
            said = " / ".join(err.split("\n")).strip(" /") or f"exit code {process.returncode}"
            failures.append(f"could not install the IPv{version} network rules: {said}")
    if failures:
        raise _SetupError("; ".join(failures))


def _resolv_conf_path() -> str:
    # /etc/resolv.conf is often a link into /run, which the jail does not have: mount at the target.
    return os.path.realpath("/etc/resolv.conf")


def _with_jail_args(bwrap_argv: list[str], extra: list[str], late: list[str]) -> list[str]:
    """``extra`` right after the executable; ``late`` (mounts over the system view) just before the
    root is made read-only, after the ``/etc`` mount they cover."""
    argv = [bwrap_argv[0], *extra, *bwrap_argv[1:]]
    if late:
        end = argv.index("--")
        root = [i for i in range(end - 1) if argv[i : i + 2] == ["--remount-ro", "/"]]
        at = root[0] if root else end
        argv[at:at] = late
    return argv


def _drain(stream: int) -> None:
    with os.fdopen(stream, "r", errors="replace") as lines:
        for line in lines:
            if _NOISE not in line:
                _say(f"pasta: {line.rstrip()}")


def _pdeathsig() -> None:
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _exit_like(status: int) -> int:
    if os.WIFSIGNALED(status):
        killed_by = os.WTERMSIG(status)
        with contextlib.suppress(OSError, ValueError):  # SIGKILL's disposition is fixed
            signal.signal(killed_by, signal.SIG_DFL)
        os.kill(os.getpid(), killed_by)
        return 128 + killed_by
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else EXIT_SETUP_FAILED


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()


def _run(pasta: str, dns: str | None, rules: dict[int, str], keep: list[int], bwrap_argv: list[str]) -> int:
    _die_with_parent()
    info_r, info_w = os.pipe()
    block_r, block_w = os.pipe()
    resolv_r, resolv_w = os.pipe()
    late = ["--ro-bind-data", str(resolv_r), _resolv_conf_path()] if dns else []
    argv = _with_jail_args(bwrap_argv, ["--info-fd", str(info_w), "--block-fd", str(block_r)], late)
    jail = subprocess.Popen(argv, pass_fds=(info_w, block_r, resolv_r, *keep))
    pasta_process: subprocess.Popen[bytes] | None = None
    for fd in (info_w, block_r, resolv_r):
        os.close(fd)
    try:
        if dns:
            os.write(resolv_w, f"nameserver {dns}\n".encode())
        os.close(resolv_w)
        info = json.loads(_read_until(info_r, b"}", "bubblewrap's jail pid"))
        pid = int(info["child-pid"])
        _wait_for_loopback(jail, pid)
        owner = _owner_of(pid)
        ready_r, ready_w = os.pipe()
        owner_path = None if owner is None else f"/proc/self/fd/{owner}"
        pasta_process = subprocess.Popen(
            pasta_args(pasta, pid, f"/proc/self/fd/{ready_w}", dns, owner_path),
            pass_fds=(ready_w,) if owner is None else (ready_w, owner),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            # Safe here: this process runs no other thread yet that could hold a lock in the child.
            preexec_fn=_pdeathsig,
        )
        os.close(ready_w)
        assert pasta_process.stderr is not None
        errors = pasta_process.stderr.fileno()
        try:
            _read_until(ready_r, b"\n", "pasta to connect the jail's network")
        except _SetupError as exc:
            time.sleep(0.05)
            exited = pasta_process.poll()
            _stop(pasta_process)
            lines = pasta_process.stderr.read().decode(errors="replace").splitlines()
            said = " / ".join(line for line in lines if _NOISE not in line) or "no output"
            if exited is not None:
                why = f"exited with code {exited} before it connected the jail's network"
            else:
                why = str(exc)
            raise _SetupError(f"pasta ({pasta}) {why}: {said}") from exc
        threading.Thread(target=_drain, args=(os.dup(errors),), daemon=True).start()
        pasta_process.stderr.close()
        # After pasta configured the namespace (the kernel checks its gateway against the rules when
        # pasta adds the default route) and before the jail runs anything: no unfenced moment.
        if not os.path.exists("/proc/net/if_inet6"):
            rules.pop(6, None)  # IPv6 is off in this kernel: nothing to fence, and `ip -6` would fail
        _install_rules(pid, owner, rules)
        os.write(block_w, b"1")
        os.close(ready_r)
        if owner is not None:
            os.close(owner)
    except (_SetupError, OSError, ValueError, KeyError) as exc:
        _stop(jail)
        _stop(pasta_process)
        raise _SetupError(str(exc)) from exc
    finally:
        os.close(block_w)
        os.close(info_r)
    return _supervise(jail, pasta_process)


def _supervise(jail: subprocess.Popen[bytes], pasta_process: subprocess.Popen[bytes]) -> int:
    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(jail.pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:
        pid, status = os.wait()
        if pid == jail.pid:
            _stop(pasta_process)
            return _exit_like(status)
        if pid == pasta_process.pid:
            pasta_process.returncode = os.waitstatus_to_exitcode(status)
            _say(
                f"pasta, which connects the sandbox to the network, exited unexpectedly "
                f"(status {pasta_process.returncode}); stopping the sandbox"
            )
            jail.kill()
            jail.wait()
            return EXIT_SETUP_FAILED


def main(argv: list[str]) -> int:
    """``--pasta PATH [--dns ADDR] [--rules4 BATCH] [--rules6 BATCH] [--keep-fd N]... -- BWRAP…``."""
    if "--" not in argv:
        _say("usage: --pasta PATH [--dns ADDR] [--rules4 B] [--rules6 B] [--keep-fd N]... -- BWRAP ARGS...")
        return EXIT_SETUP_FAILED
    split = argv.index("--")
    options, bwrap_argv = argv[:split], argv[split + 1 :]
    pairs = list(zip(options[::2], options[1::2], strict=False))
    named = dict(pairs)
    if len(options) % 2 or "--pasta" not in named or not bwrap_argv:
        _say(f"bad arguments: {options!r}")
        return EXIT_SETUP_FAILED
    rules = {version: named[f"--rules{version}"] for version in (4, 6) if named.get(f"--rules{version}")}
    keep = [int(value) for flag, value in pairs if flag == "--keep-fd"]
    try:
        return _run(named["--pasta"], named.get("--dns") or None, rules, keep, bwrap_argv)
    except (_SetupError, ValueError) as exc:
        _say(f"the sandbox's network could not be set up: {exc}")
        return EXIT_SETUP_FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
