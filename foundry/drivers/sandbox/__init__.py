"""Sandboxes: where a task's repository lives and its coding agent runs.

Every sandbox runs the real ``sandbox-agent`` HTTP server (pinned npm ``@sandbox-agent/cli``). A
*provider* creates and destroys sandboxes and tells the caller how to reach the server (a
`SandboxEndpoint`); everything else — ACP sessions, processes, files, git — goes through that server's
HTTP API (`foundry.drivers.sandbox.client`, `foundry.drivers.sandbox.acp`, `foundry.drivers.sandbox.git`),
so the same code drives a local process, a Docker container or an e2b cloud sandbox.

Providers:

* ``local`` (`foundry.drivers.sandbox.local.LocalSandboxProvider`): one ``sandbox-agent`` process per
  sandbox in its own directory, bound to 127.0.0.1 with a per-sandbox bearer token.
* ``docker`` / ``e2b``: to follow; they implement the same `SandboxProvider` protocol.

Security rule: a sandbox never receives the backend's own secrets. Providers start the
server with a scrubbed environment plus exactly what the caller passes, and protect it with a random
per-sandbox token.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from foundry.errors import DriverError, FoundryError

__all__ = [
    "VENDOR",
    "AcpError",
    "ExitCallback",
    "GitError",
    "SandboxApiError",
    "SandboxBinaryNotFound",
    "SandboxEndpoint",
    "SandboxError",
    "SandboxIsolationUnavailable",
    "SandboxProvider",
    "SandboxState",
    "SandboxStatus",
]

VENDOR = "sandbox-agent"


# --------------------------------------------------------------------------------------------- errors
# All of them keep their whole state in positional ``args`` so they pickle across a Ray hop and
# round-trip through `FoundryError.to_payload` / `from_payload`.


class SandboxError(DriverError):
    """A sandbox could not be created, reached or used. ``status`` is the HTTP status, if any."""

    code = "sandbox_error"

    def __init__(self, detail: str, status: int | None = None, vendor: str = VENDOR) -> None:
        super().__init__(detail, status, vendor)


class SandboxBinaryNotFound(SandboxError):
    """The ``sandbox-agent`` binary is not installed; the message names the command that installs it."""

    code = "sandbox_binary_not_found"


class SandboxIsolationUnavailable(SandboxError):
    """Sandboxes must be jailed and the jail cannot start here (bubblewrap missing, user namespaces
    refused); the message says what is missing and how to install it."""

    code = "sandbox_isolation_unavailable"


class SandboxApiError(SandboxError):
    """The sandbox-agent HTTP API answered with an error (``application/problem+json``).

    ``problem_type`` is the ``urn:sandbox-agent:error:…`` type and ``title`` its short title;
    ``detail`` is the human-readable explanation.
    """

    code = "sandbox_api_error"

    def __init__(
        self,
        detail: str,
        status: int | None = None,
        vendor: str = VENDOR,
        problem_type: str = "",
        title: str = "",
    ) -> None:
        FoundryError.__init__(self, detail, status, vendor, problem_type, title)

    @property
    def problem_type(self) -> str:
        return str(self.args[3]) if len(self.args) > 3 else ""

    @property
    def title(self) -> str:
        return str(self.args[4]) if len(self.args) > 4 else ""


class AcpError(SandboxError):
    """The agent answered an ACP request with a JSON-RPC error.

    ``rpc_message`` is the JSON-RPC ``error.message``, ``reason`` the agent's ``error.data.reason`` (or
    ``data.details``) when present; ``detail`` combines both for display.
    """

    code = "acp_error"

    def __init__(
        self,
        detail: str,
        status: int | None = None,
        vendor: str = VENDOR,
        rpc_code: int | None = None,
        rpc_message: str = "",
        reason: str = "",
    ) -> None:
        FoundryError.__init__(self, detail, status, vendor, rpc_code, rpc_message, reason)

    @property
    def rpc_code(self) -> int | None:
        value = self.args[3] if len(self.args) > 3 else None
        return int(value) if value is not None else None

    @property
    def rpc_message(self) -> str:
        return str(self.args[4]) if len(self.args) > 4 else ""

    @property
    def reason(self) -> str:
        return str(self.args[5]) if len(self.args) > 5 else ""


class GitError(SandboxError):
    """A git command inside the sandbox failed.

    ``detail`` starts with an actionable sentence and ends with the tail of git's stderr;
    ``exit_code`` is git's exit code (``None`` when it timed out or could not start).
    """

    code = "git_error"

    def __init__(
        self,
        detail: str,
        status: int | None = None,
        vendor: str = "git",
        exit_code: int | None = None,
        stderr_tail: str = "",
    ) -> None:
        FoundryError.__init__(self, detail, status, vendor, exit_code, stderr_tail)

    @property
    def exit_code(self) -> int | None:
        value = self.args[3] if len(self.args) > 3 else None
        return int(value) if value is not None else None

    @property
    def stderr_tail(self) -> str:
        return str(self.args[4]) if len(self.args) > 4 else ""


# ----------------------------------------------------------------------------------------- contracts


@dataclass(frozen=True)
class SandboxEndpoint:
    """How to reach one sandbox's ``sandbox-agent`` server.

    Attributes:
        base_url: e.g. ``http://127.0.0.1:40123`` (no trailing slash).
        token: the per-sandbox bearer token, or ``None`` for a server started with ``--no-token``.
        workdir: absolute path *inside the sandbox* where the task's repository is checked out.
    """

    base_url: str
    token: str | None = field(repr=False)
    workdir: str

    def headers(self) -> dict[str, str]:
        """The authorization header to send with every request (empty without a token)."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


class SandboxState(enum.StrEnum):
    """Lifecycle of a sandbox as a provider sees it (mirrors the spec's ``providerState``)."""

    PENDING = "pending"  # being created, server not healthy yet
    RUNNING = "running"  # server healthy (as of the last check)
    EXITED = "exited"  # the server stopped on its own (crash); the sandbox can be re-created
    DESTROYED = "destroyed"  # destroyed on purpose, or never created by this provider


@dataclass(frozen=True)
class SandboxStatus:
    """A provider's view of one sandbox: its state, the endpoint while running, and a reason."""

    sandbox_id: str
    state: SandboxState
    endpoint: SandboxEndpoint | None = None
    returncode: int | None = None
    detail: str = ""


ExitCallback = Callable[[str, int | None, str], Awaitable[None] | None]
"""``on_exit(sandbox_id, returncode, reason)``: a sandbox server stopped without being destroyed.

``reason`` is a human-readable sentence that includes the tail of the server's log when available.
The callback may be a plain function or a coroutine function; its errors are logged, never raised.
"""


@runtime_checkable
class SandboxProvider(Protocol):
    """Creates, inspects and destroys sandboxes that each run a ``sandbox-agent`` server.

    Implementations: ``local`` (a process per sandbox); ``docker`` and ``e2b`` follow. All methods are
    coroutine functions and must not block the event loop.
    """

    name: str
    on_exit: ExitCallback | None
    """Notified when a sandbox stops on its own (a crash), never for `destroy`. Assignable after
    construction so that the wiring module can connect it to whoever owns the sandboxes."""

    async def create(
        self, sandbox_id: str, *, env: Mapping[str, str] | None = None, owner: str = ""
    ) -> SandboxEndpoint:
        """Create the sandbox (or return the running one) and wait until its server is healthy.

        Idempotent: calling it again for a running sandbox returns the same endpoint; for an exited one
        it starts a new server over the same workdir (the repository checkout is kept).

        Args:
            sandbox_id: stable id (the task id); ``[A-Za-z0-9._-]``, at most 128 characters.
            env: extra environment for the server and thus for agents and processes it runs. This is
                the *only* caller-controlled environment a sandbox receives.
            owner: the owning actor's key, recorded with the process so that after a crash the
                right host reaps it.

        Raises:
            SandboxError: invalid id, or the server did not become healthy in time (the message carries
                the tail of its log).
            SandboxBinaryNotFound: the provider needs the binary and it is not installed.
        """
        ...

    async def destroy(self, sandbox_id: str) -> None:
        """Stop the sandbox's server and delete the sandbox with its workdir. Idempotent.

        Raises:
            SandboxError: the sandbox could not be removed.
        """
        ...

    async def status(self, sandbox_id: str) -> SandboxStatus:
        """Return the sandbox's current state; unknown ids are reported as ``destroyed``. Never raises
        for an unknown id."""
        ...

    async def stop(self, sandbox_id: str) -> bool:
        """Stop the sandbox's server and agents but keep the sandbox (idle reclamation); the next
        `create` starts it again over the same workdir. False when it was not running. Idempotent."""
        ...

    def running_ids(self) -> list[str]:
        """Ids of the sandboxes this provider object runs (or is starting)."""
        ...

    async def reap_leftovers(self, belongs: Callable[[str], bool] | None = None) -> list[str]:
        """Kill servers an earlier backend process started and left behind (only provably ours;
        ``belongs(owner)`` picks the caller's). Returns the sandbox ids reaped."""
        ...

    async def aclose(self) -> None:
        """Release the provider: stop every server it started (workdirs are kept). Idempotent."""
        ...
