"""An async client of the ``sandbox-agent`` 0.4.2 HTTP API.

`SandboxAgentClient` wraps health, agents, the process API and the file-system API; `AcpConnection`
speaks ACP (JSON-RPC) over sandbox-agent's HTTP+SSE transport for one ACP server id:

* a client→agent request is a ``POST /v1/acp/{id}?agent=<agent>`` whose 200 body is the JSON-RPC
  response (``session/prompt`` blocks until the turn ends);
* notifications (``session/cancel``) and our answers to agent requests (``session/request_permission``)
  are POSTs answered with 202;
* ``GET /v1/acp/{id}`` with ``Accept: text/event-stream`` streams every agent→client message *and* a
  mirror of each response, with numeric SSE ids; ``Last-Event-ID: N`` replays what came after ``N``;
* ``DELETE /v1/acp/{id}`` never returns while the agent runs (0.4.2 bug): `AcpConnection.close` sends it
  with a short timeout — the disconnect is what makes the server drop the agent — and then polls
  ``GET /v1/acp`` until the server is gone.

Errors: an HTTP error (``application/problem+json``) raises `SandboxApiError` with the status, problem
type, title and detail; an unreachable server raises `SandboxError`; a JSON-RPC error answer raises
`AcpError` with the RPC message and ``data.reason``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import ssl
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

import foundry
from foundry.drivers.sandbox import (
    VENDOR,
    AcpError,
    SandboxApiError,
    SandboxEndpoint,
    SandboxError,
)
from foundry.drivers.sandbox.acp_auth import (
    EnvAuthMethod,
    env_auth_methods,
    explain_auth_required,
    with_env_auth,
)
from foundry.drivers.sandbox.sse import StreamBroke, open_event_stream

__all__ = [
    "ACP_PROTOCOL_VERSION",
    "AcpConnection",
    "FsEntry",
    "ProcessResult",
    "SandboxAgentClient",
]

log = logging.getLogger(__name__)

ACP_PROTOCOL_VERSION = 1
# Slack added to a process run's own timeout for the HTTP round trip.
_RUN_HTTP_SLACK_SECONDS = 15.0
_DEFAULT_RUN_TIMEOUT_MS = 30_000  # sandbox-agent's defaultRunTimeoutMs


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


def _problem_error(response: httpx.Response, action: str) -> SandboxApiError:
    """Map an HTTP error answer (problem+json or anything else) to `SandboxApiError`."""
    problem_type = title = detail = ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        problem_type = str(body.get("type") or "")
        title = str(body.get("title") or "")
        detail = str(body.get("detail") or "")
        details = body.get("details")
        if isinstance(details, dict) and details.get("message") and str(details["message"]) not in detail:
            detail = f"{detail} ({details['message']})" if detail else str(details["message"])
    else:
        detail = response.text[:500]
    summary = title or response.reason_phrase or "error"
    message = f"sandbox-agent {action} failed with {response.status_code} {summary}"
    if detail:
        message += f": {detail}"
    return SandboxApiError(message, response.status_code, VENDOR, problem_type, title)


def _rpc_error(error: Mapping[str, Any], method: str) -> AcpError:
    code = error.get("code")
    rpc_message = str(error.get("message") or "JSON-RPC error")
    data = error.get("data")
    reason = ""
    if isinstance(data, dict):
        reason = str(data.get("reason") or data.get("details") or data.get("message") or "")
    elif data is not None:
        reason = str(data)
    detail = f"agent error in {method}: {rpc_message}" + (f": {reason}" if reason else "")
    return AcpError(detail, None, VENDOR, int(code) if isinstance(code, int) else None, rpc_message, reason)


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
            raise _problem_error(response, action)
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
        body: dict[str, Any] = {"command": command, "args": list(args)}
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
        return ProcessResult.from_json(data)

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


class AcpConnection:
    """ACP over sandbox-agent's HTTP+SSE transport for one ACP server (one agent process).

    The agent process is started by the first request (``initialize``). Requests may run concurrently:
    ``prompt`` blocks for the whole turn while ``cancel``/``respond_permission`` go on other connections.
    JSON-RPC ids are allocated from a per-object counter starting at 1.
    """

    def __init__(self, client: SandboxAgentClient, server_id: str, agent: str) -> None:
        self.client = client
        self.server_id = server_id
        self.agent = agent
        self._ids = itertools.count(1)
        #: The JSON-RPC id of the latest request (to find its mirror in the event stream).
        self.last_request_id: int | str = 0
        #: The environment-variable authentication methods ``initialize`` advertised.
        self._env_auth: list[EnvAuthMethod] = []

    @property
    def _path(self) -> str:
        return f"/v1/acp/{self.server_id}"

    async def request(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        answer_timeout: float | None = 60.0,
        request_id: int | str | None = None,
    ) -> Any:
        """Send a JSON-RPC request and return its ``result``.

        Args:
            answer_timeout: seconds to wait for the answer; ``None`` waits as long as the agent needs.
            request_id: the JSON-RPC id; by default the next number of this connection's counter. A
                caller that must recognise the answer's mirror on the event stream passes its own.

        Raises:
            AcpError: the agent answered with a JSON-RPC error.
            SandboxApiError: sandbox-agent refused the request (e.g. 500 ``install_failed``).
            SandboxError: the server is unreachable or did not answer within ``answer_timeout``.
        """
        if request_id is None:
            request_id = next(self._ids)
        self.last_request_id = request_id
        payload = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": dict(params or {})}
        http_timeout = httpx.Timeout(self.client._timeout, read=answer_timeout)
        response = await self.client.request(
            "POST", self._path, params={"agent": self.agent}, json=payload, http_timeout=http_timeout
        )
        try:
            answer = response.json()
        except ValueError as exc:
            raise SandboxError(
                f"ACP {method} on {self.server_id} answered non-JSON ({response.status_code}): "
                f"{response.text[:200]!r}",
                response.status_code,
            ) from exc
        if not isinstance(answer, dict):
            raise SandboxError(f"ACP {method} on {self.server_id} answered {answer!r}", response.status_code)
        if answer.get("error") is not None:
            raise explain_auth_required(self.agent, _rpc_error(answer["error"], method))
        return answer.get("result")

    async def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        """Send a JSON-RPC notification (answered 202 by the server)."""
        payload = {"jsonrpc": "2.0", "method": method, "params": dict(params or {})}
        await self.client.request("POST", self._path, params={"agent": self.agent}, json=payload)

    async def initialize(
        self, *, client_name: str = "foundry", client_version: str | None = None
    ) -> dict[str, Any]:
        """ACP handshake; starts the agent process on first use. Returns the agent's ``InitializeResponse``.

        We advertise no client file-system or terminal capabilities: agents work on the sandbox's disk.
        """
        result = await self.request(
            "initialize",
            {
                "protocolVersion": ACP_PROTOCOL_VERSION,
                "clientCapabilities": {
                    "fs": {"readTextFile": False, "writeTextFile": False},
                    "terminal": False,
                },
                "clientInfo": {"name": client_name, "version": client_version or foundry.__version__},
            },
        )
        answer = dict(result or {})
        self._env_auth = env_auth_methods(answer)
        return answer

    async def new_session(self, cwd: str, *, mcp_servers: Sequence[Mapping[str, Any]] = ()) -> str:
        """``session/new`` in ``cwd``; returns the agent's session id.

        Raises:
            AcpError: the agent refused; SandboxError: the server is unreachable.
        """
        params = {"cwd": cwd, "mcpServers": [dict(s) for s in mcp_servers]}
        # An agent may want `authenticate` first, with the key its environment holds (`acp_auth`).
        result = await with_env_auth(self, self._env_auth, lambda: self.request("session/new", params))
        session_id = (result or {}).get("sessionId")
        if not session_id:
            raise AcpError(f"agent returned no sessionId for session/new: {result!r}")
        return str(session_id)

    async def load_session(
        self, session_id: str, cwd: str, *, mcp_servers: Sequence[Mapping[str, Any]] = ()
    ) -> None:
        """``session/load``: reopen an earlier session of this agent (only when its ``initialize``
        answer advertises ``agentCapabilities.loadSession``). The agent replays the conversation as
        ``session/update`` notifications before it answers.

        Raises:
            AcpError: the agent refused (e.g. it no longer knows the session).
        """
        params = {"sessionId": session_id, "cwd": cwd, "mcpServers": [dict(s) for s in mcp_servers]}
        await with_env_auth(self, self._env_auth, lambda: self.request("session/load", params))

    async def prompt(self, session_id: str, text: str, *, request_id: int | str | None = None) -> str:
        """Run one turn with a text prompt and return its ``stopReason`` (``end_turn``, ``cancelled``…).

        Blocks until the turn ends — there is no client-side timeout; stream progress with `events` and
        stop the turn with `cancel`. The event stream carries a mirror of the answer (with the same
        JSON-RPC ``request_id``) as the turn's last event.

        Raises:
            AcpError: the agent failed the turn (message and ``data.reason`` included).
        """
        result = await self.request(
            "session/prompt",
            {"sessionId": session_id, "prompt": [{"type": "text", "text": text}]},
            answer_timeout=None,
            request_id=request_id,
        )
        return str((result or {}).get("stopReason", ""))

    async def cancel(self, session_id: str) -> None:
        """Send ``session/cancel``: the running turn stops and its prompt answers ``cancelled``.

        Idempotent; a no-op when no turn is running.
        """
        await self.notify("session/cancel", {"sessionId": session_id})

    async def respond_permission(self, request_id: int | str, option_id: str | None) -> None:
        """Answer an agent's ``session/request_permission`` (``request_id`` is that request's JSON-RPC id).

        ``option_id`` is one of the offered ``optionId`` values; ``None`` answers ``cancelled``.
        """
        outcome: dict[str, Any] = (
            {"outcome": "selected", "optionId": option_id}
            if option_id is not None
            else {"outcome": "cancelled"}
        )
        payload = {"jsonrpc": "2.0", "id": request_id, "result": {"outcome": outcome}}
        await self.client.request("POST", self._path, params={"agent": self.agent}, json=payload)

    async def events(self, last_event_id: int | None = None) -> AsyncIterator[tuple[int, dict[str, Any]]]:
        """Stream ``(event_id, envelope)`` from the server's SSE feed, oldest first.

        The feed starts with the buffered history (after ``last_event_id`` when given, sent as
        ``Last-Event-ID``; sandbox-agent 0.4.2 keeps only the last 1,024 events) and then follows
        live. Ids are consecutive per ACP server, but a reader that falls behind can miss some: use
        `foundry.drivers.sandbox.feed.AcpEventFeed` to follow a server without losing any. Envelopes
        are raw JSON-RPC messages (agent notifications and requests, and mirrors of responses). It
        ends when the ACP server is closed (or sandbox-agent stops); consume it in a task and close
        the iterator (``contextlib.aclosing``) when done early.

        Raises:
            SandboxApiError: e.g. 404 ``session_not_found`` for an unknown server id.
            SandboxError: the server is unreachable.
        """
        headers = {**self.client.endpoint.headers(), "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        action = f"GET {self._path} (events)"
        try:
            refused, stream = await open_event_stream(
                self.client.endpoint.base_url, self._path, headers, connect_timeout=self.client._timeout
            )
            if refused is not None:
                raise _problem_error(refused, action)
            async with contextlib.aclosing(stream):
                async for event in stream:
                    yield event
        except (OSError, TimeoutError, StreamBroke, asyncio.IncompleteReadError) as exc:
            raise SandboxError(f"sandbox-agent event stream {action} broke: {exc!r}") from exc

    async def close(self, *, delete_timeout: float = 0.5, gone_timeout: float = 10.0) -> None:
        """Shut the ACP server (and its agent process) down. Idempotent.

        Works around the sandbox-agent 0.4.2 bug where ``DELETE /v1/acp/{id}`` never returns while the
        agent runs: the DELETE is sent with a short ``delete_timeout`` — the client disconnecting is what
        makes the server drop the agent (its stdin closes and it exits) — and ``GET /v1/acp`` is then
        polled until the server is gone. Should a disconnect land before the server even handled the
        DELETE, it is sent again with a longer timeout (up to 2 s), all within ``gone_timeout``.

        Raises:
            SandboxError: the server was still listed after ``gone_timeout`` seconds, or sandbox-agent
                is unreachable.
        """
        deadline = time.monotonic() + gone_timeout
        attempt_timeout = delete_timeout
        while True:
            try:
                await self.client._http.delete(self._path, timeout=attempt_timeout)
            except httpx.TimeoutException:
                log.debug(
                    "acp delete timed out as expected server_id=%s timeout=%s (sandbox-agent 0.4.2 bug)",
                    self.server_id,
                    attempt_timeout,
                )
            except httpx.TransportError as exc:
                raise SandboxError(
                    f"sandbox-agent is unreachable while closing ACP server {self.server_id}: {exc}"
                ) from exc
            poll_until = min(deadline, time.monotonic() + 1.0)
            while True:
                servers = await self.client.list_acp_servers()
                if all(server.get("serverId") != self.server_id for server in servers):
                    return
                if time.monotonic() >= poll_until:
                    break
                await asyncio.sleep(0.05)
            if time.monotonic() >= deadline:
                raise SandboxError(
                    f"ACP server {self.server_id} is still running {gone_timeout:.0f} s after it was closed"
                )
            log.info("acp server still listed after delete, retrying server_id=%s", self.server_id)
            attempt_timeout = min(attempt_timeout * 2, 2.0)
