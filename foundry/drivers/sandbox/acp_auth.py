"""Authenticating an ACP agent with the provider key it finds in its environment.

Some agents (Codex's adapter) refuse ``session/new`` with ACP's ``auth_required`` error until the
client calls ``authenticate`` with one of the methods their ``initialize`` answer lists, even when
the key is in their environment. Methods of type ``env_var`` only ask the agent to read its own
environment, which Foundry filled from the organization's agent credentials, so they are tried in
the order advertised; no secret passes through here. Interactive methods (a browser login) are
never chosen: a sandbox has no one to log in.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from foundry.drivers.sandbox import AcpError
from foundry.drivers.sandbox.agents import AGENTS

__all__ = [
    "AUTH_REQUIRED",
    "EnvAuthMethod",
    "auth_hint",
    "env_auth_methods",
    "explain_auth_required",
    "with_env_auth",
]

log = logging.getLogger(__name__)

#: ACP's JSON-RPC error code for "authentication required".
AUTH_REQUIRED = -32000
T = TypeVar("T")

#: ``(method id, the environment variables it reads)``.
EnvAuthMethod = tuple[str, tuple[str, ...]]


class _Requester(Protocol):
    agent: str

    async def request(self, method: str, params: Mapping[str, Any] | None = None) -> Any: ...


def env_auth_methods(initialize_answer: Mapping[str, Any]) -> list[EnvAuthMethod]:
    """The ``env_var`` methods of an ``initialize`` answer's ``authMethods``, in its order."""
    found: list[EnvAuthMethod] = []
    methods = initialize_answer.get("authMethods")
    for method in methods if isinstance(methods, list) else []:
        if not isinstance(method, dict) or method.get("type") != "env_var" or not method.get("id"):
            continue
        variables = method.get("vars")
        names = tuple(
            str(var["name"]) for var in variables or [] if isinstance(var, dict) and var.get("name")
        )
        found.append((str(method["id"]), names))
    return found


async def with_env_auth(
    acp: _Requester, methods: Sequence[EnvAuthMethod], call: Callable[[], Awaitable[T]]
) -> T:
    """Run ``call``; if the agent answers ``auth_required``, authenticate with the first ``env_var``
    method it accepts and run ``call`` once more.

    Raises:
        AcpError: ``call``'s own error; or, when no method is accepted (no key in the environment),
            one naming the variables the agent reads and where an admin sets them.
    """
    try:
        return await call()
    except AcpError as exc:
        if exc.rpc_code != AUTH_REQUIRED or not methods:
            raise
    refusals: list[str] = []
    for method_id, _names in methods:
        try:
            await acp.request("authenticate", {"methodId": method_id})
        except AcpError as exc:
            log.info("agent %s refused authenticate method=%s: %s", acp.agent, method_id, exc.detail)
            refusals.append(exc.reason or exc.rpc_message)
            continue
        return await call()
    names = sorted({name for _, names in methods for name in names})
    raise AcpError(
        f"the {acp.agent} agent needs a provider key and found none: an organization admin sets "
        f"{' or '.join(names) or 'its key'} in the organization's agent credentials (Settings), then "
        f"a new session starts with it ({'; '.join(r for r in refusals if r) or 'authentication refused'})",
        None,
        rpc_code=AUTH_REQUIRED,
        rpc_message="Authentication required",
    )


def auth_hint(agent: str, rpc_code: object) -> str:
    """For ACP's ``auth_required`` from an agent Foundry installs (Claude Code fails its turn so
    when it finds no key): ``"; "`` plus the variables it reads and where an admin sets them.
    Otherwise empty."""
    spec = AGENTS.get(agent)
    if rpc_code != AUTH_REQUIRED or spec is None:
        return ""
    return (
        f"; the {agent} agent found no provider key: an organization admin sets "
        f"{' or '.join(spec.keys)} in the organization's agent credentials (Settings), then a new "
        "session starts with it"
    )


def explain_auth_required(agent: str, error: AcpError) -> AcpError:
    """``error`` with `auth_hint` added to its detail."""
    hint = auth_hint(agent, error.rpc_code)
    if not hint:
        return error
    return AcpError(
        error.detail + hint,
        error.status,
        rpc_code=error.rpc_code,
        rpc_message=error.rpc_message,
        reason=error.reason,
    )
