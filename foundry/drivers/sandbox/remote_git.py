"""Git's network commands for a sandbox's checkout (fetch, push), run where the agent cannot reach.

They need the GitHub installation token, and anything that runs inside the agent's jail can take it:
git runs hooks and the repository's configuration is the agent's (``core.hooksPath``,
``url.<base>.insteadOf`` sending the credential elsewhere, a push URL of its own), and a process of
the jail's user can read the environment of any other process in the jail (``/proc/<pid>/environ``).
So Foundry runs them itself, in a jail of their own (`bwrap_command`'s system view in new user, PID
and IPC namespaces; the agent's jail cannot see or signal it) that mounts the sandbox directory and,
in mock mode, the organization's local remotes, the only place pushes go there. Git there reads
nothing of the agent's repository but its objects: ``GIT_DIR`` is an empty repository Foundry
creates for the one command (its configuration is Foundry's: no hooks, no helpers but Foundry's, no
URL rewriting), and ``GIT_OBJECT_DIRECTORY`` is the checkout's object store. Links the agent put in
the object store are resolved inside that jail, where nothing but the sandbox directory (and mock
remotes of its own organization) exists. The token is in this one process's environment.

What the agent's checkout needs afterwards (remote-tracking refs, the upstream of a pushed branch) is
set by `foundry.drivers.sandbox.git` through sandbox-agent, without a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from foundry.drivers.sandbox.client import ProcessResult
from foundry.drivers.sandbox.git_run import CREDENTIAL_HELPER, TOKEN_ENV
from foundry.drivers.sandbox.jail import JailPolicy, namespace_args, system_args
from foundry.drivers.sandbox.layout import WORKDIR

__all__ = ["FETCH_REFS_MARK", "RemoteGitRequest", "run_remote_git"]

_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_OUTPUT_LIMIT = 1_000_000
#: Separates ``ls-remote``'s answer from the fetched refs in a fetch's output.
FETCH_REFS_MARK = "--- fetched refs"

#: Git configuration of every command, in git's own environment form (no quoting to get wrong).
_CONFIG = (
    ("core.hooksPath", "/dev/null"),
    ("core.fsmonitor", "false"),
    ("gc.auto", "0"),
    ("maintenance.auto", "false"),
    ("fetch.writeCommitGraph", "false"),
    ("protocol.ext.allow", "never"),
)

_FETCH = (
    'git ls-remote --symref -- "$1" HEAD\n'
    f'echo "{FETCH_REFS_MARK}"\n'
    'git fetch --no-progress --no-write-fetch-head --no-auto-gc --no-recurse-submodules -- "$1" '
    "'+refs/heads/*:refs/remotes/origin/*'\n"
    "git for-each-ref --format='%(objectname) %(refname)' refs/remotes/origin/\n"
)
_PUSH = 'git push --porcelain -- "$1" "$2:refs/heads/$3"\n'


@dataclass(frozen=True)
class RemoteGitRequest:
    """One network command: ``fetch`` every branch of ``url``, or ``push`` commit ``sha`` to
    ``branch`` there (never forced)."""

    op: Literal["fetch", "push"]
    url: str
    token: str | None = None
    sha: str | None = None
    branch: str | None = None

    def script(self) -> tuple[str, list[str]]:
        if self.op == "fetch":
            return _FETCH, [self.url]
        if self.sha is None or not _SHA.match(self.sha) or not self.branch:
            raise ValueError("a push needs a commit id and a branch")
        return _PUSH, [self.url, self.sha, self.branch]


def _environment(shadow: Path, objects: Path, token: str | None) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH") or "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "HOME": str(shadow),
        "GIT_DIR": str(shadow),
        "GIT_OBJECT_DIRECTORY": str(objects),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
    }
    config = list(_CONFIG)
    if token:
        env[TOKEN_ENV] = token
        config.append(("credential.helper", CREDENTIAL_HELPER))
    env["GIT_CONFIG_COUNT"] = str(len(config))
    for index, (key, value) in enumerate(config):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    return env


def _shadow_repository(parent: Path) -> Path:
    """An empty bare repository of Foundry's own, for one command."""
    shadow = Path(tempfile.mkdtemp(prefix=".git-remote-", dir=parent))
    (shadow / "refs" / "heads").mkdir(parents=True)
    (shadow / "HEAD").write_text("ref: refs/heads/foundry-none\n")
    (shadow / "config").write_text("[core]\n\trepositoryformatversion = 0\n\tbare = true\n")
    return shadow


def _jailed(
    bwrap: str, policy: JailPolicy, directory: Path, shadow: Path, argv: list[str], url: str
) -> list[str]:
    args = [bwrap, *namespace_args()]
    if "://" not in url or url.startswith("file://"):
        args.append("--unshare-net")  # a local remote (mock mode) needs no network
    args += system_args()
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    args += ["--bind", str(directory), str(directory), "--bind", str(shadow), str(shadow)]
    for path in policy.shared:
        args += ["--bind", str(path), str(path)]
    return [*args, "--remount-ro", "/", "--chdir", str(shadow), "--", *argv]


async def _bounded(stream: asyncio.StreamReader) -> tuple[bytes, bool]:
    """Everything ``stream`` writes until it ends, but only the first `_OUTPUT_LIMIT` bytes kept;
    whether more was dropped."""
    kept = bytearray()
    dropped = False
    while chunk := await stream.read(65_536):
        room = _OUTPUT_LIMIT - len(kept)
        if room > 0:
            kept += chunk[:room]
        dropped = dropped or len(chunk) > room
    return bytes(kept), dropped


async def run_remote_git(
    policy: JailPolicy,
    bwrap: str | None,
    directory: Path,
    request: RemoteGitRequest,
    *,
    timeout_ms: int,
) -> ProcessResult:
    """Run ``request`` for the checkout of the sandbox at ``directory`` (see the module docstring).

    ``policy`` is the sandbox's (its organization's remotes shared in mock mode); unjailed
    (``isolation = "none"``), git runs as Foundry's user with the same repository and configuration.
    """
    script, script_args = request.script()
    shadow = await asyncio.to_thread(_shadow_repository, directory.parent)
    try:
        objects = directory / WORKDIR / ".git" / "objects"
        argv = ["sh", "-euc", script, "sh", *script_args]
        if policy.jailed:
            assert bwrap is not None
            argv = _jailed(bwrap, policy, directory, shadow, argv, request.url)
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_environment(shadow, objects, request.token),
            cwd=shadow,
            start_new_session=True,
        )
        assert process.stdout is not None
        assert process.stderr is not None
        # Read as it comes and keep at most `_OUTPUT_LIMIT` of each: the agent controls what git
        # complains about (a 300 MB alternates file is one complaint per line), and all of it would
        # otherwise sit in this process, which hosts every organization's sandboxes.
        reading = asyncio.gather(_bounded(process.stdout), _bounded(process.stderr), process.wait())
        try:
            (out, out_cut), (err, err_cut), _ = await asyncio.wait_for(reading, timeout_ms / 1000)
            timed_out = False
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            out, out_cut, err, err_cut = b"", False, b"", False
            timed_out = True
        return ProcessResult(
            exit_code=None if timed_out or (process.returncode or 0) < 0 else process.returncode,
            timed_out=timed_out,
            stdout=out.decode(errors="replace"),
            stderr=err.decode(errors="replace"),
            stdout_truncated=out_cut,
            stderr_truncated=err_cut,
            duration_ms=int((time.monotonic() - started) * 1000),
        )
    finally:
        await asyncio.to_thread(shutil.rmtree, shadow, True)
