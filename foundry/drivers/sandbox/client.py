"""An async client of the ``sandbox-agent`` 0.4.2 HTTP API.

`SandboxAgentClient` wraps health, agents, the process API and the file-system API, and lists the
ACP servers. Speaking ACP to one of them is `AcpConnection` (`foundry.drivers.sandbox.acp`, handed out
by `SandboxAgentClient.acp` and still importable from here): the agent protocol is a concern of its
own, while this module holds the plain REST calls and the HTTP transport both share.

Errors: an HTTP error (``application/problem+json``) raises `SandboxApiError` with the status, problem
type, title and detail; an unreachable server raises `SandboxError`; a JSON-RPC error answer raises
`AcpError` with the RPC message and ``data.reason`` (the mapping is `foundry.drivers.sandbox.problems`).
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

from foundry.drivers.sandbox import SandboxApiError, SandboxEndpoint, SandboxError
from foundry.drivers.sandbox.acp import ACP_PROTOCOL_VERSION, AcpConnection
from foundry.drivers.sandbox.problems import problem_error

__all__ = [
    "ACP_PROTOCOL_VERSION",
    "AcpConnection",
    "FsEntry",
    "ProcessResult",
    "SandboxAgentClient",
]

# Slack added to a process run's own timeout for the HTTP round trip.
_RUN_HTTP_SLACK_SECONDS = 15.0
_DEFAULT_RUN_TIMEOUT_MS = 30_000  # sandbox-agent's defaultRunTimeoutMs


#: Commands run through `SandboxAgentClient.run_process` run this much below Foundry's processes.
PROCESS_NICENESS = 10


@dataclass(frozen=True)
class ProcessResult:
    """The outcome of ``POST /v1/processes/run``.

    ``exit_code`` is ``None`` when the process timed out (``timed_out``) or was killed by a signal.
    """

    exit_code: int | None
    timed_out: bool
    stdout: str
    stderr: str
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    duration_ms: int = 0

    @property
    def ok(self) -> bool:
        """True when the process ran to completion with exit code 0."""
        return self.exit_code == 0 and not self.timed_out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessResult:
        exit_code = data.get("exitCode")
        return cls(
            exit_code=int(exit_code) if exit_code is not None else None,
            timed_out=bool(data.get("timedOut", False)),
            stdout=str(data.get("stdout") or ""),
            stderr=str(data.get("stderr") or ""),
            stdout_truncated=bool(data.get("stdoutTruncated", False)),
            stderr_truncated=bool(data.get("stderrTruncated", False)),
            duration_ms=int(data.get("durationMs") or 0),
        )


@dataclass(frozen=True)
class FsEntry:
    """One entry of ``GET /v1/fs/entries``."""

    name: str
    path: str
    entry_type: str  # "file" | "directory" | …
    size: int | None = None
    modified: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FsEntry:
        size = data.get("size")
        return cls(
            name=str(data.get("name", "")),
            path=str(data.get("path", "")),
            entry_type=str(data.get("entryType", "")),
            size=int(size) if size is not None else None,
            modified=data.get("modified"),
        )


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context for every client of this process. httpx builds a new one per client by
    default, loading the whole CA bundle each time; a task host opens a client per session turn loop,
    and that load cost more host CPU than recording the turns' events."""
    return httpx.create_ssl_context()


class SandboxAgentClient:
    """Async client of one sandbox's ``sandbox-agent`` server. Use as an async context manager or call
    `aclose`.

    Args:
        endpoint: where the server is and its bearer token.
        timeout: default seconds for ordinary requests (long calls — prompts, SSE, process runs —
            compute their own).
        transport: an optional httpx transport (for tests).
    """

    def __init__(
        self,
        endpoint: SandboxEndpoint,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=endpoint.base_url,
            headers=endpoint.headers(),
            timeout=timeout,
            transport=transport,
            verify=_tls_context(),
        )

    async def __aenter__(self) -> SandboxAgentClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connection pool. Idempotent."""
        await self._http.aclose()

    # --------------------------------------------------------------------------------------- transport

    async def request(
        self,
        method: str,
        path: str,
        *,
        http_timeout: float | httpx.Timeout | object | None = httpx.USE_CLIENT_DEFAULT,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send one request and return the successful response.

        Raises:
            SandboxApiError: the server answered with an HTTP error.
            SandboxError: the server could not be reached or did not answer in time.
        """
        action = f"{method} {path}"
        try:
            response = await self._http.request(method, path, timeout=http_timeout, **kwargs)  # type: ignore[arg-type]
        except httpx.TimeoutException as exc:
            raise SandboxError(
                f"sandbox-agent at {self.endpoint.base_url} did not answer {action} in time "
                f"({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            raise SandboxError(
                f"sandbox-agent at {self.endpoint.base_url} is unreachable for {action}: {exc}"
            ) from exc
        if response.status_code >= 400:
            raise problem_error(response, action)
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise SandboxError(
                f"sandbox-agent {method} {path} answered non-JSON: {response.text[:200]!r}",
                response.status_code,
            ) from exc

    # -------------------------------------------------------------------------------------- basics

    async def health(self) -> dict[str, Any]:
        """``GET /v1/health`` → ``{"status": "ok"}``. Raises `SandboxApiError` (401 on a bad token)."""
        return dict(await self._json("GET", "/v1/health"))

    async def list_agents(self) -> list[dict[str, Any]]:
        """``GET /v1/agents``: every agent with ``installed``, ``capabilities``, ``serverStatus``…"""
        data = await self._json("GET", "/v1/agents")
        agents = data.get("agents", data) if isinstance(data, dict) else data
        return [dict(agent) for agent in agents]

    async def get_agent(self, agent: str) -> dict[str, Any]:
        """``GET /v1/agents/{agent}``. Raises `SandboxApiError` for an unknown agent."""
        return dict(await self._json("GET", f"/v1/agents/{agent}"))

    # ------------------------------------------------------------------------------------- processes

    async def run_process(
        self,
        command: str,
        args: Sequence[str] = (),
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout_ms: int | None = None,
        max_output_bytes: int | None = None,
    ) -> ProcessResult:
        """Run a command to completion inside the sandbox (``POST /v1/processes/run``).

        ``env`` is added to the server's environment for this run only. A non-zero exit or a timeout is
        *not* an error here: inspect the `ProcessResult`.

        Raises:
            SandboxApiError: e.g. 502 ``stream_error`` when the command does not exist.
            SandboxError: the server is unreachable.
        """
        # Below the server, which relays transcripts at Foundry's own priority: a clone or a commit
        # hook must not slow the hosts or the relays.
        body: dict[str, Any] = {"command": "nice", "args": ["-n", str(PROCESS_NICENESS), command, *args]}
        if cwd is not None:
            body["cwd"] = cwd
        if env:
            body["env"] = dict(env)
        if timeout_ms is not None:
            body["timeoutMs"] = timeout_ms
        if max_output_bytes is not None:
            body["maxOutputBytes"] = max_output_bytes
        seconds = (timeout_ms or _DEFAULT_RUN_TIMEOUT_MS) / 1000 + _RUN_HTTP_SLACK_SECONDS
        data = await self._json("POST", "/v1/processes/run", json=body, http_timeout=seconds)
        result = ProcessResult.from_json(data)
        if result.exit_code in (126, 127) and result.stderr.startswith("nice:"):
            # nice could not start the command (missing, or not executable): the error sandbox-agent
            # gives for a command it cannot spawn.
            raise SandboxApiError(f"failed to spawn process {command!r}: {result.stderr.strip()}", 502)
        return result

    # ------------------------------------------------------------------------------------ filesystem

    async def read_file(self, path: str) -> bytes:
        """Raw bytes of a file in the sandbox. Raises `SandboxApiError` if it does not exist."""
        response = await self.request("GET", "/v1/fs/file", params={"path": path})
        return response.content

    async def write_file(self, path: str, data: bytes | str) -> int:
        """Create or replace a file; returns the bytes written. Idempotent."""
        content = data.encode("utf-8") if isinstance(data, str) else data
        result = await self._json("PUT", "/v1/fs/file", params={"path": path}, content=content)
        return int(result.get("bytesWritten", len(content)))

    async def list_entries(self, path: str) -> list[FsEntry]:
        """Entries of a directory (not recursive)."""
        data = await self._json("GET", "/v1/fs/entries", params={"path": path})
        return [FsEntry.from_json(entry) for entry in data]

    async def stat(self, path: str) -> dict[str, Any]:
        """``GET /v1/fs/stat``. A missing path raises `SandboxApiError` (400 "path not found")."""
        return dict(await self._json("GET", "/v1/fs/stat", params={"path": path}))

    async def mkdir(self, path: str) -> None:
        """Create a directory and its parents. Idempotent."""
        await self.request("POST", "/v1/fs/mkdir", params={"path": path})

    async def delete_entry(self, path: str, *, recursive: bool = False) -> None:
        """Delete a file, or a directory with ``recursive=True``."""
        params = {"path": path, "recursive": "true" if recursive else "false"}
        await self.request("DELETE", "/v1/fs/entry", params=params)

    # ------------------------------------------------------------------------------------------- ACP

    async def list_acp_servers(self) -> list[dict[str, Any]]:
        """``GET /v1/acp``: the live ACP servers (``serverId``, ``agent``, ``createdAtMs``)."""
        data = await self._json("GET", "/v1/acp")
        return [dict(server) for server in data.get("servers", [])]

    def acp(self, server_id: str, agent: str) -> AcpConnection:
        """An `AcpConnection` to ACP server ``server_id`` running ``agent`` (created on first request)."""
        return AcpConnection(self, server_id, agent)
