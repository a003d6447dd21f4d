"""Replay real GitHub webhook deliveries.

Payloads come from ``@octokit/webhooks-examples`` (real deliveries GitHub's SDK team collected),
installed into ``.tools/`` by ``scripts/bootstrap.sh``. Headers are the ones GitHub sends with every
delivery, signed the way GitHub signs: ``X-Hub-Signature-256 = "sha256=" + HMAC-SHA256(secret, body)``
over the exact bytes sent.

Known gaps of the examples: no ``pull_request.closed`` with
``merged: true`` and no ``pull_request.edited`` — tests set those fields themselves; only some
examples carry ``installation`` — add ``{"installation": {"id": ...}}`` to route to an App install.

Usage::

    payload = example("pull_request", "opened")
    payload["installation"] = {"id": 1001}
    body = dumps(payload)
    headers = signed_headers("secret", body, "pull_request")
    client.post("/v1/webhooks/github", content=body, headers=headers)
"""

from __future__ import annotations

import copy
import functools
import hashlib
import hmac
import json
import uuid
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_PATH = REPO_ROOT / ".tools/node_modules/@octokit/webhooks-examples/api.github.com/index.json"

# What real deliveries of a GitHub App carry (values are illustrative but well-formed).
DEFAULT_HOOK_ID = "123456789"
DEFAULT_APP_ID = "4242"
USER_AGENT = "GitHub-Hookshot/a1b2c3d"


@functools.cache
def _events() -> dict[str, list[dict[str, Any]]]:
    if not EXAMPLES_PATH.is_file():
        raise FileNotFoundError(f"{EXAMPLES_PATH} is missing; run scripts/bootstrap.sh to install it")
    entries = json.loads(EXAMPLES_PATH.read_text(encoding="utf-8"))
    return {entry["name"]: entry["examples"] for entry in entries}


def events() -> list[str]:
    """Every event name with examples (the ``X-GitHub-Event`` values)."""
    return sorted(_events())


def actions(event: str) -> list[str | None]:
    """The ``action`` of each example of ``event``, in order (``None`` for action-less events)."""
    return [payload.get("action") for payload in _examples_of(event)]


def example(event: str, action: str | None = None, index: int = 0) -> dict[str, Any]:
    """A deep copy of a real payload of ``event`` (optionally with ``action``), the ``index``-th one.

    Raises:
        KeyError: no example of that event, or of that action, or not that many.
    """
    candidates = [p for p in _examples_of(event) if action is None or p.get("action") == action]
    if index >= len(candidates):
        raise KeyError(
            f"{event}.{action or '*'} has {len(candidates)} example(s), asked for #{index}; "
            f"available actions: {sorted({str(a) for a in actions(event)})}"
        )
    return copy.deepcopy(candidates[index])


def owned_by(payload: dict[str, Any], login: str) -> dict[str, Any]:
    """``payload`` with its repository owned by ``login``, as for a delivery of that account's
    installation (the examples were recorded on other accounts, and Foundry ignores deliveries whose
    repository belongs to an account other than the installation's). Changes it in place."""
    repository = payload.get("repository")
    if isinstance(repository, dict):
        repository.setdefault("owner", {})["login"] = login
    return payload


def dumps(payload: dict[str, Any]) -> bytes:
    """Serialise a payload as GitHub does (compact JSON, UTF-8). Sign exactly these bytes."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def signature_256(secret: str | bytes, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of body>``, GitHub's ``X-Hub-Signature-256``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def signed_headers(
    secret: str | bytes,
    body_bytes: bytes,
    event: str,
    delivery_id: str | None = None,
    *,
    hook_id: str = DEFAULT_HOOK_ID,
    target_type: str = "integration",
    target_id: str = DEFAULT_APP_ID,
) -> dict[str, str]:
    """Every header GitHub sends with a delivery of ``body_bytes``.

    ``target_type``/``target_id`` describe the hook's owner: ``integration`` + the App id for App
    webhooks (Foundry's case), ``repository``/``organization`` + its id for plain webhooks.
    """
    key = secret.encode() if isinstance(secret, str) else secret
    return {
        "Accept": "*/*",
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-GitHub-Delivery": delivery_id or str(uuid.uuid4()),
        "X-GitHub-Event": event,
        "X-GitHub-Hook-ID": hook_id,
        "X-GitHub-Hook-Installation-Target-ID": target_id,
        "X-GitHub-Hook-Installation-Target-Type": target_type,
        # The legacy SHA-1 signature is still sent alongside; receivers must use the SHA-256 one.
        "X-Hub-Signature": "sha1=" + hmac.new(key, body_bytes, hashlib.sha1).hexdigest(),
        "X-Hub-Signature-256": signature_256(key, body_bytes),
    }


def _examples_of(event: str) -> list[dict[str, Any]]:
    try:
        return _events()[event]
    except KeyError:
        raise KeyError(f"no webhook examples for event {event!r}; known: {', '.join(events())}") from None
