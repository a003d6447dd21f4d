"""Start ``sandbox-agent server`` without its bearer token ever appearing on a command line.

``sandbox-agent`` 0.4.2 takes its token only as ``--token`` (no environment variable, no file), and a
process's arguments are world-readable (``ps``, ``/proc/<pid>/cmdline``). So this small launcher,
run as ``python -I -m foundry.drivers.sandbox.launch <binary> <args…>`` with a ``--token=`` argument
made of ``*`` placeholders and the real token on its stdin:

1. forks; the child asks to be traced and execs the binary with the placeholder argument and the
   real ``--token=<token>`` in one environment variable (environments are readable by the owner
   only);
2. stopped at the exec, before a single instruction of the binary ran, the launcher points that
   argument's ``argv`` slot at the environment string, so the server's argument parser reads the
   real token while ``/proc/<pid>/cmdline`` keeps showing the placeholder; then it lets it run;
3. when the provider says the server is healthy (a second line on stdin, the token was parsed long
   before), it overwrites the token in the server's environment, so that agents the server starts
   later do not inherit it;
4. forwards SIGTERM/SIGINT/SIGHUP to the server and exits as the server did (same code, or killed by
   the same signal).

It fails closed: if the argument cannot be rewritten it kills the child and exits with code 70, and
the provider reports a failed start.

In a jail with its own network namespace the launcher also relays Foundry's connections to the
server (`foundry.drivers.sandbox.relay`): the provider names the inherited listening socket and the
server's port in two environment variables, which the launcher takes out of the server's environment.
It also sets the sandbox's rlimits on itself first (`foundry.drivers.sandbox.limits`), named in a third.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading

from foundry.drivers.sandbox.limits import RLIMITS_ENV, apply_rlimits
from foundry.drivers.sandbox.relay import RELAY_FD_ENV, RELAY_PORT_ENV, start_relay

TOKEN_ENV = "FOUNDRY_SANDBOX_AGENT_TOKEN"
TOKEN_FLAG = "--token="
EXIT_SETUP_FAILED = 70
_PTRACE_TRACEME = 0
_PTRACE_DETACH = 17
_WORD = 8


class _SetupError(Exception):
    pass


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()


def _field(fields: list[str], number: int) -> int:
    # ``fields`` starts at field 3 (state); ``number`` is the 1-based field of proc(5).
    return int(fields[number - 3])


def _redirect_token_argument(pid: int) -> None:
    """Point the placeholder's ``argv`` slot of the stopped ``pid`` at the value of `TOKEN_ENV`.

    The placeholder is found by content, not position: an interpreter (a ``#!`` script) shifts it.
    """
    fields = _stat(pid)
    start_stack = _field(fields, 28)
    arg_start, arg_end = _field(fields, 48), _field(fields, 49)
    env_start, env_end = _field(fields, 50), _field(fields, 51)
    with open(f"/proc/{pid}/mem", "rb+", buffering=0) as mem:
        mem.seek(start_stack)
        argc = int.from_bytes(mem.read(_WORD), "little")
        mem.seek(arg_start)
        args = mem.read(arg_end - arg_start).split(b"\0")[:argc]
        found = [i for i, arg in enumerate(args) if _is_placeholder(arg)]
        if len(found) != 1:
            raise _SetupError(f"expected one token placeholder among {argc} arguments, found {len(found)}")
        token_index = found[0]
        expected = arg_start + sum(len(arg) + 1 for arg in args[:token_index])
        slot = start_stack + _WORD * (1 + token_index)
        mem.seek(slot)
        if int.from_bytes(mem.read(_WORD), "little") != expected:
            raise _SetupError("argv does not point where expected")
        mem.seek(env_start)
        environment = mem.read(env_end - env_start)
        marker = f"{TOKEN_ENV}=".encode()
        if environment.startswith(marker):
            offset = 0
        else:
            at = environment.find(b"\0" + marker)
            if at < 0:
                raise _SetupError("the token is missing from the environment")
            offset = at + 1
        mem.seek(slot)
        mem.write((env_start + offset + len(marker)).to_bytes(_WORD, "little"))


def _is_placeholder(arg: bytes) -> bool:
    value = arg[len(TOKEN_FLAG) :]
    return arg.startswith(TOKEN_FLAG.encode()) and bool(value) and set(value) == {ord("*")}


def _scrub_token(pid: int, token: str) -> None:
    """Overwrite the token in ``pid``'s environment (best effort: the owner can read it anyway)."""
    fields = _stat(pid)
    env_start, env_end = _field(fields, 50), _field(fields, 51)
    needle = f"{TOKEN_ENV}={TOKEN_FLAG}{token}".encode()
    with open(f"/proc/{pid}/mem", "rb+", buffering=0) as mem:
        mem.seek(env_start)
        environment = mem.read(env_end - env_start)
        at = environment.find(needle)
        if at >= 0:
            value_at = env_start + at + len(f"{TOKEN_ENV}=")
            mem.seek(value_at)
            mem.write(b"x" * (len(needle) - len(f"{TOKEN_ENV}=")))


def _child(binary: str, args: list[str], env: dict[str, str]) -> None:
    # The server keeps Foundry's own priority: it relays agents' transcripts, and sandbox-agent
    # drops events for a reader it cannot forward to in time. Ten steps below the hosts recording
    # those events, it lost up to 300 of 80,000 in a flood of 20 agents and held the last event back
    # about a second (bench/transcripts.py, 4,000 chunks each: lost 297, 129, 0 against 0, 0, 0 at
    # normal priority; the agent's last chunk to its turn's end 0.8-1.3 s against 0.1-0.4 s). What
    # runs in a sandbox yields the CPU all the same: agents at the lowest priority (their
    # launchers), commands Foundry runs there (git) ten steps down (`SandboxAgentClient.run_process`).
    try:
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.ptrace(_PTRACE_TRACEME, 0, None, None) != 0:
            os.write(2, f"launch: ptrace not permitted (errno {ctypes.get_errno()})\n".encode())
            os._exit(EXIT_SETUP_FAILED)
        os.execve(binary, [binary, *args], env)
    except OSError as exc:
        os.write(2, f"launch: cannot run {binary}: {exc}\n".encode())
    os._exit(127)


def main(argv: list[str]) -> int:
    binary, args = argv[0], argv[1:]
    token = sys.stdin.readline().rstrip("\n")
    if not token or sum(_is_placeholder(arg.encode()) for arg in args) != 1:
        print("launch: expected one --token= placeholder and the token on stdin", file=sys.stderr)
        return EXIT_SETUP_FAILED
    env = {**os.environ, TOKEN_ENV: f"{TOKEN_FLAG}{token}"}
    relay_fd, relay_port = env.pop(RELAY_FD_ENV, None), env.pop(RELAY_PORT_ENV, None)
    try:
        # Set here, inside the jail, so that the server and everything it starts inherit them.
        apply_rlimits(env.pop(RLIMITS_ENV, ""))
    except (OSError, ValueError, KeyError) as exc:
        print(f"launch: could not set the sandbox's resource limits: {exc}", file=sys.stderr)
        return EXIT_SETUP_FAILED
    if relay_fd is not None:
        # Only the relay holds the listening socket: the server and its agents must not inherit it.
        os.set_inheritable(int(relay_fd), False)
    pid = os.fork()
    if pid == 0:
        _child(binary, args, env)
    _, status = os.waitpid(pid, 0)
    if not os.WIFSTOPPED(status):
        return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else EXIT_SETUP_FAILED
    try:
        _redirect_token_argument(pid)
    except (OSError, ValueError, _SetupError) as exc:
        print(f"launch: could not keep the token off the command line: {exc}", file=sys.stderr)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return EXIT_SETUP_FAILED
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace(_PTRACE_DETACH, pid, None, None)
    if relay_fd is not None and relay_port is not None:
        # Started after the fork: the child only execs, but a fork of a threaded process is fragile.
        start_relay(int(relay_fd), int(relay_port))

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)

    def scrub_when_told() -> None:
        if sys.stdin.readline():
            try:
                _scrub_token(pid, token)
            except OSError as exc:
                print(f"launch: could not scrub the token from the environment: {exc}", file=sys.stderr)

    threading.Thread(target=scrub_when_told, daemon=True).start()
    while True:
        _, status = os.waitpid(pid, 0)
        if os.WIFEXITED(status):
            return os.WEXITSTATUS(status)
        if os.WIFSIGNALED(status):
            killed_by = os.WTERMSIG(status)
            with contextlib.suppress(OSError, ValueError):  # SIGKILL's disposition is fixed
                signal.signal(killed_by, signal.SIG_DFL)
            os.kill(os.getpid(), killed_by)  # die the way the server died
            return 128 + killed_by


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
