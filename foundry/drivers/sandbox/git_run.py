"""Running one git command (or ``sh`` script) in a sandbox, through ``POST /v1/processes/run``.

Credentials: commands that talk to the remote get the token in an environment variable passed to that
one process run only, and a credential helper given per command with ``git -c credential.helper=…``
that answers ``x-access-token`` + that variable. The token therefore never lands in ``.git/config``, in
the remote URL, in a credential store, or in the process arguments.

Every command also runs with ``GIT_TERMINAL_PROMPT=0`` (fail instead of waiting for a password),
``LC_ALL=C`` (stable messages to classify) and ``GIT_CEILING_DIRECTORIES`` set to the workdir's parent,
so a sandbox directory nested in another checkout never operates on that outer repository.

Failures raise `GitError` whose message starts with an actionable sentence and ends with the tail of
git's stderr.

The operations built on this (clone, status, diff, commit, push…) are `foundry.drivers.sandbox.git`.
This module is split from them because how a command runs — its environment, the token's path, how a
failure is explained — is one concern every operation shares, and the operations only decide which
commands to run and how to read their output.
"""

from __future__ import annotations

import logging
import posixpath
import re
from collections.abc import Mapping, Sequence

from foundry.branch_names import branch_problem
from foundry.drivers.sandbox import GitError, SandboxApiError
from foundry.drivers.sandbox.client import ProcessResult, SandboxAgentClient
from foundry.errors import InvalidInput

#: How a spawn failure reads when the program itself is missing (from the OS, or from `nice`).
_MISSING_PROGRAM = re.compile(r"No such file or directory|not found|os error 2", re.IGNORECASE)

__all__ = [
    "CREDENTIAL_HELPER",
    "NETWORK_TIMEOUT_MS",
    "TOKEN_ENV",
    "check_branch",
    "git_failure",
    "run_git",
    "run_script",
]

log = logging.getLogger(__name__)

TOKEN_ENV = "FOUNDRY_GIT_TOKEN"
# `!` makes git run the helper through the shell; it only answers `get` (store/erase are ignored, so
# nothing is ever persisted). The token is read from the environment of this one process run.
CREDENTIAL_HELPER = (
    f'!f() {{ test "$1" = get || exit 0; echo username=x-access-token; echo "password=${TOKEN_ENV}"; }}; f'
)
NETWORK_TIMEOUT_MS = 300_000  # clone/fetch/push: 5 min, as upstream's repo preparation
_LOCAL_TIMEOUT_MS = 60_000
_STDERR_TAIL_LINES = 15


def check_branch(branch: str) -> str:
    """``branch`` when it is a valid branch name; else raise `InvalidInput`."""
    problem = branch_problem(branch)
    if problem is not None:
        raise InvalidInput(f"invalid git branch name {branch!r}: {problem}", ["branch"])
    return branch


def _redact(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-_STDERR_TAIL_LINES:])


def _explain(action: str, output: str, branch: str | None) -> str:
    """Turn git's complaint into a sentence that says what to do."""
    text = output.lower()
    target = f"origin/{branch}" if branch else "the remote branch"
    if "[rejected]" in text or "non-fast-forward" in text or "fetch first" in text:
        return (
            f"git {action} was rejected: the remote branch has new commits; fetch and rebase (or merge) "
            f"onto {target}, then push again"
        )
    if "[remote rejected]" in text or "protected branch" in text:
        return f"git {action} was refused by the remote (branch protection or a server-side hook)"
    if (
        "authentication failed" in text
        or "could not read username" in text
        or "could not read password" in text
        or "terminal prompts disabled" in text
        or "permission to" in text
        or " 403" in text
    ):
        return (
            f"git {action} was refused by the remote: the access token is missing, expired or lacks "
            "access to this repository; reconnect GitHub or check the app installation"
        )
    if "repository not found" in text or "does not appear to be a git repository" in text:
        return (
            f"git {action} failed: the remote repository was not found; check the repository URL and "
            "that the token can access it"
        )
    if "could not resolve host" in text or "failed to connect" in text or "connection refused" in text:
        return f"git {action} failed: the remote could not be reached; check the network and the URL"
    if "not a git repository" in text:
        return f"git {action} failed: the sandbox workdir is not a git checkout; clone the repository first"
    if "src refspec" in text and "does not match any" in text:
        return f"git {action} failed: the branch has no commits to push yet; commit first"
    if "already exists and is not an empty directory" in text:
        return (
            f"git {action} failed: the sandbox workdir already contains files that are not a checkout "
            "of this repository; destroy the sandbox and try again"
        )
    if "would be overwritten" in text or "conflict" in text:
        return f"git {action} failed: local changes conflict with it; commit or revert them first"
    if "please tell me who you are" in text:
        return f"git {action} failed: no author identity is configured"
    return f"git {action} failed"


async def run_git(
    client: SandboxAgentClient,
    args: Sequence[str],
    *,
    action: str,
    cwd: str | None = None,
    token: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout_ms: int = _LOCAL_TIMEOUT_MS,
    branch: str | None = None,
    check: bool = True,
    command: str = "git",
) -> ProcessResult:
    """Run git (or ``sh`` for scripts) in the workdir; raise `GitError` on failure when ``check``."""
    workdir = cwd or client.endpoint.workdir
    run_env = {
        "GIT_TERMINAL_PROMPT": "0",
        "LC_ALL": "C",
        "GIT_CEILING_DIRECTORIES": posixpath.dirname(workdir.rstrip("/")),
    }
    argv = list(args)
    if token:
        run_env[TOKEN_ENV] = token
        if command == "git":
            # The empty value first drops any helper configured globally (e.g. a `store` helper).
            argv = ["-c", "credential.helper=", "-c", f"credential.helper={CREDENTIAL_HELPER}", *argv]
    run_env.update(env or {})
    if any("\x00" in arg for arg in argv):
        # No process can receive a NUL in its arguments; say so rather than fail to start git.
        raise InvalidInput(f"git {action}: the text given to git contains a NUL character (U+0000)")
    try:
        result = await client.run_process(command, argv, cwd=workdir, env=run_env, timeout_ms=timeout_ms)
    except SandboxApiError as exc:
        if exc.status == 502 and "spawn" in exc.detail:
            if _MISSING_PROGRAM.search(exc.detail):
                why = f"`{command}` is not installed in the sandbox; use an image with git"
            else:
                why = f"could not start `{command}`: {exc.detail}"
            raise GitError(f"git {action} failed: {why}", exc.status) from exc
        raise
    if not check or result.ok:
        return result
    raise git_failure(action, result, token=token, branch=branch, timeout_ms=timeout_ms)


def git_failure(
    action: str, result: ProcessResult, *, token: str | None, branch: str | None, timeout_ms: int
) -> GitError:
    """The `GitError` of a failed git command: an actionable sentence, then git's own last words."""
    output = _redact(f"{result.stderr}\n{result.stdout}", token)
    tail = _tail(_redact(result.stderr, token) or _redact(result.stdout, token))
    if result.timed_out:
        sentence = (
            f"git {action} timed out after {timeout_ms // 1000} s; the remote may be slow or unreachable"
        )
    else:
        sentence = _explain(action, output, branch)
    detail = f"{sentence} (exit code {result.exit_code})" if result.exit_code is not None else sentence
    if tail:
        detail += f"\n{tail}"
    log.warning("git failed action=%s exit_code=%s timed_out=%s", action, result.exit_code, result.timed_out)
    return GitError(detail, None, "git", result.exit_code, tail)


async def run_script(
    client: SandboxAgentClient,
    script: str,
    script_args: Sequence[str] = (),
    *,
    action: str,
    cwd: str | None = None,
    timeout_ms: int = _LOCAL_TIMEOUT_MS,
) -> ProcessResult:
    """Run ``script`` with ``sh`` in the workdir as `run_git` runs git (no token); raise `GitError`
    on failure."""
    # Arguments go positionally after `sh -c script sh`, never interpolated into the script text.
    return await run_git(
        client,
        ["-c", script, "sh", *script_args],
        action=action,
        cwd=cwd,
        timeout_ms=timeout_ms,
        command="sh",
    )
