"""How sandbox-agent's error answers become Foundry errors.

An HTTP error (``application/problem+json``) becomes `SandboxApiError` with the status, problem type,
title and detail; a JSON-RPC error answer to an ACP request becomes `AcpError` with the RPC message and
``data.reason``. Both the HTTP client (`foundry.drivers.sandbox.client`) and the ACP connection
(`foundry.drivers.sandbox.acp`) raise them, so they live apart from both: the connection needs
`problem_error` for its event stream, and the client constructs connections, so neither module has to
import the other's internals.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from foundry.drivers.sandbox import VENDOR, AcpError, SandboxApiError

__all__ = ["problem_error", "rpc_error"]


def problem_error(response: httpx.Response, action: str) -> SandboxApiError:
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


def rpc_error(error: Mapping[str, Any], method: str) -> AcpError:
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
